"""LoRA DPO side by side: tunesmith vs TRL DPOTrainer + PEFT, same pairs, weights and settings.

    python bench/bench_dpo.py                        # 2 warm-up + 20 measured steps, ~6 min here
    python bench/bench_dpo.py --steps 8 --configs trl,tunesmith

The first 200 usable records of preference_rasbt, encoded once by tunesmith (chat template, loss
on the responses), are given to every framework as token ids; the pairs of each step are
tunesmith's seeded order. Each configuration runs in a fresh process (peak RSS = its VmHWM).
"""

import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DATA,
    batch_order,
    emit,
    failures,
    machine,
    median,
    peak_rss_mb,
    run_configs,
    set_threads,
    step_bench_args,
    table,
    write_report,
)

from tunesmith.utils.hardware import has_native_bf16  # noqa: E402

PREFERENCES = DATA / "preference_rasbt" / "instruction-data-with-preference.json"
NATIVE_BF16 = has_native_bf16()
# Without native bf16 instructions bf16 autocast measures PyTorch's emulation: compare in fp32.
DEFAULT = (
    [
        "trl",
        "trl-nogc",
        "trl-precompute",
        "tunesmith",
        "tunesmith-nockpt",
    ]
    if NATIVE_BF16
    else ["trl-fp32", "trl-nogc-fp32", "tunesmith-fp32"]
)
REFERENCE = DEFAULT[0]


@dataclass
class DpoHyper:
    batch_size: int = 4  # pairs per step (8 rows)
    lr: float = 2e-4
    r: int = 8
    alpha: float = 16.0
    beta: float = 0.1
    seed: int = 42
    max_length: int = 512
    records: int = 200


def preference_pairs(tokenizer, hyper: DpoHyper) -> list[dict]:
    from tunesmith.data.preference import encode_pairs, read_preference

    pairs, stats = encode_pairs(
        read_preference(PREFERENCES)[: hyper.records], tokenizer, hyper.max_length
    )
    assert stats.truncated == 0, "a pair is longer than max_length: TRL would cut it differently"
    return pairs


def child(config: str, steps: int, warmup: int) -> None:
    import dpo_runners
    from transformers import AutoTokenizer

    from tunesmith.models.loading import default_model_dir

    set_threads()
    hyper = DpoHyper()
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    pairs = preference_pairs(tokenizer, hyper)
    batches = batch_order(pairs, hyper, steps + warmup)
    result = dpo_runners.run(config, pairs, batches, hyper)
    rows = [
        [len(pairs[i][f"{side}_input_ids"]) for i in idx for side in ("chosen", "rejected")]
        for idx in batches[warmup:]
    ]
    emit(
        {
            "config": config,
            "times": result["times"][warmup:],
            "losses": result["losses"],
            "precompute_s": result["precompute_s"],
            "tokens": [sum(r) for r in rows],
            "padded_tokens": [len(r) * max(r) for r in rows],
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def summarise(results: list[dict], hyper: DpoHyper) -> str:
    ok = [r for r in results if "times" in r]
    ref = next((r for r in ok if r["config"] == REFERENCE), None)
    rows = []
    for r in ok:
        step = median(r["times"])
        diff = (
            max(abs(a - b) for a, b in zip(r["losses"], ref["losses"]))
            if ref and len(ref["losses"]) == len(r["losses"])
            else float("nan")
        )
        rows.append(
            [
                r["config"],
                step,
                hyper.batch_size / step,
                median(ref["times"]) / step if ref else "-",
                r["precompute_s"],
                round(r["peak_rss_mb"]),
                r["peak_rss_mb"] / ref["peak_rss_mb"] if ref else "-",
                round(r["losses"][0], 4),
                round(r["losses"][-1], 4),
                f"{diff:.2g}",
            ]
        )
    headers = [
        "config",
        "median step s",
        "pairs/s",
        f"x {REFERENCE}",
        "ref precompute s",
        "peak RSS MB",
        "RSS ratio",
        "loss step 1",
        "loss last step",
        f"max abs loss diff vs {REFERENCE}",
    ]
    text = table(headers, rows)
    if ok:
        first = ok[0]
        text += (
            f"\n\nreal tokens / padded tokens in the measured steps: "
            f"{100 * sum(first['tokens']) / sum(first['padded_tokens']):.0f}%"
        )
    text += "\n\n### Loss per step (warm-up steps included)\n\n" + table(
        ["step", *(r["config"] for r in ok)],
        [
            [i + 1, *(round(r["losses"][i], 4) if i < len(r["losses"]) else "-" for r in ok)]
            for i in range(max((len(r["losses"]) for r in ok), default=0))
        ],
    )
    return text + failures(results)


def main() -> None:
    args = step_bench_args(__doc__, DEFAULT, "dpo.md", steps=20)
    if args.child:
        return child(args.child, args.steps, args.warmup)
    set_threads()
    hyper = DpoHyper()
    report = [
        f"# LoRA DPO benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        machine(),
        "CPU bf16: " + ("native (avx512_bf16)" if NATIVE_BF16 else "emulated (no avx512_bf16)"),
        f"{hyper.records} pairs of preference_rasbt, batch {hyper.batch_size} pairs, LoRA r={hyper.r} "
        f"alpha={hyper.alpha:g} on q_proj/v_proj, sigmoid loss, beta {hyper.beta}, lr {hyper.lr:g} "
        f"constant, seed {hyper.seed}; {args.warmup} warm-up + {args.steps} measured steps",
    ]
    results = run_configs(Path(__file__), args, DEFAULT)
    report += ["", summarise(results, hyper)]
    write_report(args.out, report, results)


if __name__ == "__main__":
    main()
