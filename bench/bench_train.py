"""LoRA SFT side by side: tunesmith vs HF PEFT (+ Trainer, + a plain loop), same everything.

    python bench/bench_train.py                      # cases a and b, 2 warm-up + 8 measured steps
    python bench/bench_train.py --cases b --steps 4 --configs peft-trainer-bf16,tunesmith

Each configuration runs in a fresh process (peak RSS = its VmHWM). Case a: the instruction data
(variable lengths, loss on responses). Case b: fixed-length wikitext rows (no padding).
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Hyper,
    against_reference,
    batch_order,
    emit,
    failures,
    instruction_examples,
    lora_step_flops,
    machine,
    median,  # noqa: E402
    peak_gemm,
    peak_rss_mb,
    run_child,
    set_threads,
    table,
    text_examples,
)

from tunesmith.utils.hardware import has_native_bf16  # noqa: E402

# Without native bf16 instructions the bf16 configurations would measure PyTorch's emulation, so
# the comparison runs in fp32 (reference: PEFT + Trainer in fp32).
PRECISION = "bf16" if has_native_bf16() else "fp32"
REFERENCE = f"peft-trainer-{PRECISION}"
FULL_REFERENCE = f"trainer-full-{PRECISION}"  # full fine-tuning rows are compared with this one
DEFAULT = {
    "bf16": {
        "a": [
            "peft-trainer-bf16",
            "peft-loop-bf16",
            "tunesmith",
            "tunesmith-fp32w-sdpa-nopack",
            "tunesmith-sdpa",
            "tunesmith-pack",
            "tunesmith-nopack",
            "tunesmith-fp32w",
        ],
        "b": ["peft-trainer-bf16", "peft-loop-bf16", "tunesmith", "tunesmith-sdpa"],
    },
    "fp32": {
        "a": ["peft-trainer-fp32", "peft-loop-fp32", "tunesmith", "tunesmith-sdpa"],
        "b": ["peft-trainer-fp32", "peft-loop-fp32", "tunesmith", "tunesmith-sdpa"],
    },
}[PRECISION]


def child(config: str, case: str, steps: int, warmup: int) -> None:
    import train_runners
    from transformers import AutoConfig, AutoTokenizer

    from tunesmith.models.loading import default_model_dir

    set_threads()
    hyper = Hyper()
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    n = (steps + warmup) * hyper.batch_size
    examples = (
        instruction_examples(tokenizer, hyper)
        if case == "a"
        else text_examples(tokenizer, hyper, n)
    )
    batches = batch_order(examples, hyper, steps + warmup)
    result = train_runners.run(config, examples, batches, hyper)
    model_cfg = AutoConfig.from_pretrained(default_model_dir())
    tokens, flops = [], []
    for idx in batches[warmup:]:
        lengths = [len(examples[i].input_ids) for i in idx]
        loss_tokens = sum(sum(label != -100 for label in examples[i].labels[1:]) for i in idx)
        tokens.append(sum(lengths))
        flops.append(lora_step_flops(model_cfg, lengths, loss_tokens, hyper.r, is_full(config)))
    emit(
        {
            "config": config,
            "case": case,
            "times": result["times"][warmup:],
            "losses": result["losses"],
            "tokens": tokens,
            "flops": flops,
            "peak_rss_mb": peak_rss_mb(),
            "padded_tokens": [
                len(idx) * max(len(examples[i].input_ids) for i in idx) for idx in batches[warmup:]
            ],
        }
    )


def is_full(config: str) -> bool:
    return "full" in config.split("-")


def reference_of(config: str) -> str:
    return FULL_REFERENCE if is_full(config) else REFERENCE


def summarise(results: list[dict], peak: dict, warmup: int) -> tuple[str, dict]:
    ok = [r for r in results if "times" in r]
    ref = next((r for r in ok if r["config"] == REFERENCE), None)
    rows, stats = [], {}
    for r in ok:
        tok_s = median([t / s for t, s in zip(r["tokens"], r["times"])])
        flop_s = median([f / s for f, s in zip(r["flops"], r["times"])])
        loss = sum(r["losses"][warmup:]) / max(len(r["losses"][warmup:]), 1)
        stats[r["config"]] = {
            "tok_s": tok_s,
            "loss": loss,
            "rss": r["peak_rss_mb"],
            "flop_s": flop_s,
        }
    for r in ok:
        s, base = stats[r["config"]], stats.get(reference_of(r["config"]))
        rows.append(
            [
                r["config"],
                median(r["times"]),
                s["tok_s"],
                *against_reference(s, base),
                s["flop_s"] / 1e9,
                f"{100 * s['flop_s'] / peak[PRECISION]:.0f}%",
            ]
        )
    headers = [
        "config",
        "median step s",
        "useful tok/s",
        "x reference",
        "peak RSS MB",
        "RSS ratio",
        "mean loss",
        "loss vs ref",
        "model GFLOP/s",
        f"MFU ({PRECISION} peak)",
    ]
    text = table(headers, rows)
    text += f"\n\nreference: {REFERENCE} (LoRA rows), {FULL_REFERENCE} (full fine-tuning rows)"
    if ref is not None:
        per_token = sum(ref["flops"]) / sum(ref["tokens"])
        useful = sum(ref["tokens"]) / sum(ref["padded_tokens"])
        bounds = ", ".join(
            f"{p} bound {peak[p] / per_token:.0f} tok/s"
            for p in ("bf16", "fp32")
            if p == "fp32" or PRECISION == "bf16"
        )  # emulated bf16 has no meaningful bound
        text += (
            f"\n\nFLOPs per useful token: {per_token / 1e6:.0f} M; {bounds}; real tokens / padded tokens "
            f"{100 * useful:.0f}%"
        )
    return text + failures(results), stats


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", default="a,b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--configs", default="", help="comma-separated; default: every configuration of the case"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.case, args.steps, args.warmup)
    set_threads()
    peak = peak_gemm()
    report = [
        f"# LoRA SFT benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        machine(),
        f"peak GEMM (2048^3 matmul, median): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; {args.warmup} warm-up + {args.steps} measured steps",
    ]
    for case in args.cases.split(","):
        configs = args.configs.split(",") if args.configs else DEFAULT[case]
        results = []
        for config in configs:
            print(f"case {case}: {config} ...", file=sys.stderr, flush=True)
            res = run_child(
                Path(__file__),
                [
                    "--child",
                    config,
                    "--case",
                    case,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ],
            )
            results.append({"config": config, **res})
        text, _ = summarise(results, peak, args.warmup)
        title = {
            "a": "(a) instruction data, variable lengths",
            "b": "(b) fixed-length text, 4 x 256",
        }[case]
        report += ["", f"## {title}", "", text]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(f".{case}.json").write_text(json.dumps(results))
    Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
