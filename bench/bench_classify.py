"""Classification head training side by side: tunesmith's head mode vs HF PEFT + Trainer.

    python bench/bench_classify.py                   # 2 warm-up + 8 measured steps
    python bench/bench_classify.py --steps 4 --configs peft-trainer-bf16,tunesmith

SMS spam (examples/sms_spam.yaml), max_length 64, batches of 8 in tunesmith's order (grouped by
length, classes mixed), LoRA r16 on every linear layer + a linear head on the last token, AdamW
lr 1e-3 constant, clip 1.0, no evaluation; see classify_runners.py for what each side runs. Each
configuration runs in a fresh process (peak RSS = its VmHWM). Both sides do the same work per
step: a full forward and backward pass through every block (nothing is frozen below a LoRA
layer, so tunesmith caches no prefix), the LoRA + head update.
"""

import datetime
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    against_reference,
    emit,
    failures,
    machine,
    median,
    peak_gemm,
    peak_rss_mb,
    run_configs,
    set_threads,
    step_bench_args,
    table,
    write_report,
)

from tunesmith.utils.hardware import has_native_bf16  # noqa: E402

# Without native bf16 instructions the bf16 configurations would measure PyTorch's emulation, so
# the comparison runs in fp32 (reference: PEFT + Trainer in fp32).
PRECISION = "bf16" if has_native_bf16() else "fp32"
REFERENCE = f"peft-trainer-{PRECISION}"
DEFAULT = {
    "bf16": ["peft-trainer-bf16", "peft-trainer-fp32", "tunesmith", "tunesmith-fp32w"],
    "fp32": ["peft-trainer-fp32", "tunesmith"],
}[PRECISION]


def child(config: str, steps: int, warmup: int) -> None:
    import classify_runners

    set_threads()
    with tempfile.TemporaryDirectory() as out:
        case = classify_runners.load_case(config, steps + warmup, out)
        result = classify_runners.run(config, case)
    measured = case.batches[warmup:]
    emit(
        {
            **result,
            "config": config,
            "times": result["times"][warmup:],
            "examples": [len(idx) for idx in measured],
            "tokens": [sum(len(case.ids[i]) for i in idx) for idx in measured],
            "padded_tokens": [len(idx) * max(len(case.ids[i]) for i in idx) for idx in measured],
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def summarise(results: list[dict], warmup: int) -> str:
    ok = [r for r in results if "times" in r]
    stats = {}
    for r in ok:
        losses = r["losses"][warmup:]
        stats[r["config"]] = {
            "ex_s": median([n / s for n, s in zip(r["examples"], r["times"])]),
            "tok_s": median([t / s for t, s in zip(r["tokens"], r["times"])]),
            "loss": sum(losses) / max(len(losses), 1),
            "rss": r["peak_rss_mb"],
        }
    base = stats.get(REFERENCE)
    rows = []
    for r in ok:
        s = stats[r["config"]]
        rows.append(
            [
                r["config"],
                median(r["times"]),
                s["ex_s"],
                s["tok_s"],
                *against_reference(s, base),
            ]
        )
    headers = [
        "config",
        "median step s",
        "examples/s",
        "real tok/s",
        "x reference",
        "peak RSS MB",
        "RSS ratio",
        "mean loss",
        "loss vs ref",
    ]
    text = table(headers, rows) + f"\n\nreference: {REFERENCE}"
    if ok:
        r = ok[0]
        text += (
            f"; real tokens per step (median) {median(r['tokens']):.0f}, real / padded tokens "
            f"{100 * sum(r['tokens']) / sum(r['padded_tokens']):.0f}%"
        )
    first = {r["config"]: r["losses"][0] for r in ok if r["losses"]}
    if first:  # same starting weights: the first step's loss should agree
        text += "\n\nloss of step 1 (same starting weights): " + ", ".join(
            f"{c} {v:.4f}" for c, v in first.items()
        )
    notes = []
    for r in ok:
        if "optimizer" in r:
            notes.append(f"{r['config']}: optimizer {r['optimizer']}")
        if "prefix_cached" in r:
            notes.append(
                f"{r['config']}: {r['lora_layers']} LoRA layers, prefix cached: "
                f"{r['prefix_cached']}, {r['trainable_params']} trainable parameters"
            )
    text += ("\n\n" + "; ".join(notes)) if notes else ""
    return text + failures(results)


def main() -> None:
    args = step_bench_args(__doc__, DEFAULT, "classify.md", steps=8)
    if args.child:
        return child(args.child, args.steps, args.warmup)
    set_threads()
    peak = peak_gemm()
    report = [
        f"# Classification head benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        machine(),
        f"peak GEMM (2048^3 matmul, median): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; {args.warmup} warm-up + {args.steps} measured steps",
        "",
        "command: `python " + " ".join(["bench/bench_classify.py", *sys.argv[1:]]) + "`",
    ]
    results = run_configs(Path(__file__), args, DEFAULT)
    title = "SMS spam, LoRA r16 all-linear + linear head, batch 8, max_length 64"
    report += ["", f"## {title}", "", summarise(results, args.warmup)]
    write_report(args.out, report, results)


if __name__ == "__main__":
    main()
