"""Plain-text output of the CLI."""
from ..data.synthetic import INSTRUCTION


def print_metrics(metrics: dict, footer: str = "") -> None:
    for key, value in metrics.items():
        print(f"{key:<18} {value:.4f}" if isinstance(value, float) else f"{key:<18} {value}")
    if footer:
        print(footer)


def print_classification(metrics: dict, footer: str = "") -> None:
    """Scalar metrics, then per-class precision/recall/F1 and the confusion matrix."""
    scalars = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}
    print_metrics(scalars)
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(10, *(len(c) for c in per_class))
        print(f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
        for name, m in per_class.items():
            print(f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['support']:>8}")
        print("confusion (rows: true, columns: predicted; order " + ", ".join(per_class) + ")")
        for row in metrics["confusion"]:
            print("  " + " ".join(f"{v:>6}" for v in row))
    if footer:
        print(footer)


def print_samples(samples: list[dict], n: int) -> None:
    for s in samples[:n]:
        print(f"--- prompt: {s['prompt']}\n    reference:  {s['reference']}\n    prediction: {s['prediction'].strip()}")


def print_quickstart(result: dict) -> None:
    zs, ft = result["zero_shot"], result["fine_tuned"]
    out = result["output_dir"]
    print("\n=== quick-start: extract 'name | age | city | job' from a sentence ===")
    print(f"held-out examples: {ft['n']}")
    print(f"{'':<12}{'exact match':>12}{'contains':>10}")
    print(f"{'zero-shot':<12}{zs['exact_match']:>12.1%}{zs['contains']:>10.1%}")
    print(f"{'fine-tuned':<12}{ft['exact_match']:>12.1%}{ft['contains']:>10.1%}")
    print(f"training: {ft['steps']} steps in {ft['train_seconds']:.0f} s ({ft['tokens_per_s']:.0f} tokens/s)")
    for s in result["samples"][:3]:
        print(f"\ntext:       {s['prompt'].splitlines()[-1]}\nreference:  {s['reference']}\n"
              f"zero-shot:  {s['zero_shot'].strip()[:100]}\nfine-tuned: {s['prediction'].strip()}")
    print(f"\nadapter saved in {out} (PEFT format; loss curve: {out}/loss_curve.png)")
    print(f"try it:  tunesmith generate --adapter {out} \"$(printf '%s\\n\\n%s' \"{INSTRUCTION}\" "
          f"'At 41, Ana Ruiz is a pilot based in Oslo.')\"")
