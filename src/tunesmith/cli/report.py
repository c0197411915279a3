"""Plain-text output of the CLI."""

from ..data.synthetic import INSTRUCTION
from ..tasks.text import metrics_text


def print_metrics(metrics: dict, footer: str = "") -> None:
    print(metrics_text(metrics))
    if footer:
        print(footer)


def print_quickstart(result: dict) -> None:
    zs, ft = result["zero_shot"], result["fine_tuned"]
    out = result["output_dir"]
    print("\n=== quick-start: extract 'name | age | city | job' from a sentence ===")
    print(f"held-out examples: {ft['n']}")
    print(f"{'':<12}{'exact match':>12}{'contains':>10}")
    print(f"{'zero-shot':<12}{zs['exact_match']:>12.1%}{zs['contains']:>10.1%}")
    print(f"{'fine-tuned':<12}{ft['exact_match']:>12.1%}{ft['contains']:>10.1%}")
    print(
        f"training: {ft['steps']} steps in {ft['train_seconds']:.0f} s ({ft['tokens_per_s']:.0f} tokens/s)"
    )
    for s in result["samples"][:3]:
        print(
            f"\ntext:       {s['prompt'].splitlines()[-1]}\nreference:  {s['reference']}\n"
            f"zero-shot:  {s['zero_shot'].strip()[:100]}\nfine-tuned: {s['prediction'].strip()}"
        )
    print(f"\nadapter saved in {out} (PEFT format; loss curve: {out}/loss_curve.png)")
    print(
        f'try it:  tunesmith generate --adapter {out} "$(printf \'%s\\n\\n%s\' "{INSTRUCTION}" '
        f"'At 41, Ana Ruiz is a pilot based in Oslo.')\""
    )
