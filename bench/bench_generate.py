"""Generation side by side: HF generate vs tunesmith's lean greedy decoder; mixed-adapter batches.

    python bench/bench_generate.py                   # cases c and d, fp32 weights
    python bench/bench_generate.py --cases d --tokens 16

(c) decode tokens/s at batch 1 and 8: base model, LoRA unmerged, LoRA merged. A decode step's
    time is (t(N new tokens) - t(1 new token)) / (N - 1): prefill excluded. Median of repeats.
(d) 8 prompts over 4 LoRA adapters (2 rows each): one forward (prefill of the 8 prompts) and a
    greedy generation of N tokens, (i) tunesmith mixed_adapters, (ii) PEFT's adapter_names path,
    (iii) PEFT one adapter at a time (4 calls of 2 rows). Greedy tokens are checked equal.
"""

import argparse
import datetime
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import INSTRUCTIONS, TARGETS, machine, median, set_threads, table  # noqa: E402

ADAPTERS = ["a0", "a1", "a2", "a3"]


def prompts(tokenizer, n: int) -> dict:
    import json

    records = json.loads(INSTRUCTIONS.read_text())[:n]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["instruction"] + "\n" + r["input"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for r in records
    ]
    tokenizer.padding_side = "left"
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def fill_lora(model, seed: int, names) -> None:
    """Seeded A and B (both non-zero) per adapter, layer and projection: identical in every framework."""
    for name, module in model.named_modules():
        m = re.search(r"layers\.(\d+)\.self_attn\.(\w+_proj)$", name)
        if m is None or not hasattr(module, "lora_A"):
            continue
        for k, adapter in enumerate(names):
            gen = torch.Generator().manual_seed(
                seed + 100000 * k + 10 * int(m.group(1)) + TARGETS.index(m.group(2))
            )
            for factor in (module.lora_A[adapter].weight, module.lora_B[adapter].weight):
                with torch.no_grad():
                    factor.copy_(torch.randn(factor.shape, generator=gen) * 0.05)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def hf_generate(model, enc, n):
    return model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=0)[
        :, enc["input_ids"].shape[1] :
    ]


def lean(model, enc, n):
    from tunesmith.evaluation.decode import greedy_decode

    return greedy_decode(model, enc["input_ids"], enc["attention_mask"], n, None, 0)


def step_seconds(gen, model, enc, n: int, repeats: int) -> float:
    with torch.inference_mode():
        return (
            timed(lambda: gen(model, enc, n), repeats) - timed(lambda: gen(model, enc, 1), repeats)
        ) / (n - 1)


def case_c(args) -> str:
    import tunesmith
    from tunesmith.methods import merge_adapters
    from tunesmith.methods.lora import LoraConfig

    model, tokenizer = tunesmith.load_model("default", dtype=args.dtype)
    model.generation_config.eos_token_id = None  # always N tokens
    batches = {b: prompts(tokenizer, b) for b in (1, 8)}
    rows, results = [], {}
    for variant in ("base", "lora-unmerged", "lora-merged"):
        if variant == "lora-unmerged":
            tunesmith.apply_method(model, LoraConfig(r=8, target_modules=TARGETS))
            fill_lora(model, 7, ["default"])
        if variant == "lora-merged":
            merge_adapters(model)
        for b, enc in batches.items():
            for engine, gen in (("hf-generate", hf_generate), ("tunesmith-decode", lean)):
                s = step_seconds(gen, model, enc, args.tokens, args.repeats)
                results[(variant, b, engine)] = b / s
                print(
                    f"c: {variant} batch {b} {engine}: {1000 * s:.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
    for (variant, b, engine), tok_s in results.items():
        hf = results[(variant, b, "hf-generate")]
        merged = results[("lora-merged", b, engine)]
        rows.append([variant, b, engine, tok_s, 1000 * b / tok_s, tok_s / hf, tok_s / merged])
    return table(
        [
            "model",
            "batch",
            "engine",
            "decode tok/s",
            "ms/step",
            "x hf-generate",
            "x merged (same engine)",
        ],
        rows,
    )


def peft_with_adapters(dtype: str):
    import peft

    import tunesmith

    model, tokenizer = tunesmith.load_model("default", dtype=dtype)
    cfg = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    model = peft.get_peft_model(model, cfg, adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.add_adapter(name, cfg)
    fill_lora(model, 11, ADAPTERS)
    model.eval()
    return model, tokenizer


def ours_with_adapters(dtype: str):
    import tunesmith
    from tunesmith.methods.lora import LoraConfig

    model, tokenizer = tunesmith.load_model("default", dtype=dtype)
    for name in ADAPTERS:
        tunesmith.apply_method(
            model, LoraConfig(r=8, alpha=16, target_modules=TARGETS), adapter_name=name
        )
    fill_lora(model, 11, ADAPTERS)
    return model.eval(), tokenizer


def case_d(args) -> str:
    from tunesmith.methods import set_active_adapter
    from tunesmith.methods.lora import mixed_adapters

    ours, tokenizer = ours_with_adapters(args.dtype)
    theirs, _ = peft_with_adapters(args.dtype)
    for m in (ours, theirs.get_base_model()):
        m.generation_config.eos_token_id = None
    names, enc, n = ADAPTERS * 2, prompts(tokenizer, 8), args.tokens
    groups = {a: [i for i, x in enumerate(names) if x == a] for a in ADAPTERS}

    def sub(idx):
        return {k: v[idx] for k, v in enc.items()}

    def each(run, activate):  # one adapter at a time, rows put back in batch order
        out = [None] * len(names)
        for a, idx in groups.items():
            activate(a)
            for i, row in zip(idx, run(sub(idx))):
                out[i] = row
        return out

    def ours_mixed(run):
        with mixed_adapters(ours, names):
            return run(ours, enc)

    configs = {
        "tunesmith mixed_adapters": (
            lambda: ours_mixed(lambda m, e: m(**e).logits),
            lambda: ours_mixed(lambda m, e: lean(m, e, n)),
        ),
        "tunesmith one adapter at a time": (
            lambda: each(lambda e: ours(**e).logits, lambda a: set_active_adapter(ours, a)),
            lambda: torch.stack(
                each(lambda e: lean(ours, e, n), lambda a: set_active_adapter(ours, a))
            ),
        ),
        "peft adapter_names": (
            lambda: theirs(**enc, adapter_names=names).logits,
            lambda: hf_generate_peft(theirs, enc, n, names),
        ),
        "peft one adapter at a time": (
            lambda: each(lambda e: theirs(**e).logits, theirs.set_adapter),
            lambda: torch.stack(
                each(lambda e: hf_generate_peft(theirs, e, n, None), theirs.set_adapter)
            ),
        ),
    }
    results, tokens = {}, {}
    with torch.inference_mode():
        for label, (forward, generate) in configs.items():
            f = timed(forward, args.repeats)
            g = timed(generate, args.repeats)
            tokens[label] = generate()
            results[label] = (f, len(names) * n / g)
            print(
                f"d: {label}: forward {1000 * f:.0f} ms, {results[label][1]:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    ref_f, ref_g = results["peft adapter_names"]
    ref_tokens = tokens["peft adapter_names"]
    rows = [
        [label, 1000 * f, ref_f / f, g, g / ref_g, bool(torch.equal(tokens[label], ref_tokens))]
        for label, (f, g) in results.items()
    ]
    return table(
        [
            "method (8 prompts, 4 adapters)",
            "forward ms",
            "x peft adapter_names",
            f"generate tok/s ({n} new)",
            "x peft adapter_names",
            "same tokens as peft",
        ],
        rows,
    )


def hf_generate_peft(model, enc, n, names):
    extra = {"adapter_names": names} if names else {}
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=0, **extra)
    return out[:, enc["input_ids"].shape[1] :]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", default="c,d")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.md"))
    args = p.parse_args()
    set_threads()
    report = [
        f"# Generation benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        machine(),
        f"weights {args.dtype}, {args.tokens} new tokens, median of {args.repeats} repeats",
    ]
    titles = {"c": "(c) decode speed", "d": "(d) mixed adapters"}
    for case in args.cases.split(","):
        report += ["", f"## {titles[case]}", "", (case_c if case == "c" else case_d)(args)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
