"""Quantization benchmark on the embedded SmolLM2-135M-Instruct; prints markdown tables.

Parts (--parts, comma-separated; default all):
  error  round-trip error of NF4 / int4 / int8 on N(0, 1) weights and on the model's own weights
  bytes  bytes of the base weights at fp32, int8, NF4 and NF4 + double quantization
  ppl    perplexity on the first 40 x 256-token windows of wikitext-2 test at fp32, int8, NF4
  optim  QLoRA (NF4) loss curves over 30 steps (batch 2 x 128 tokens) with AdamW vs 8-bit AdamW
  train  one subprocess per configuration (so peak RSS readings do not mask each other):
         LoRA on the fp32 base vs QLoRA on an NF4 base (AdamW, and 8-bit AdamW), batch 4 x 128
         tokens, with glibc's default allocator settings and with a fixed mmap threshold
         (MALLOC_MMAP_THRESHOLD_=131072); RSS after loading and one short forward pass (which
         pages in lazily mmapped weights), peak RSS during the training steps (VmHWM reset
         before them via /proc/self/clear_refs), median step time, optimizer state bytes, losses.

Usage: PYTHONPATH=src python bench/quantization.py [--parts error,bytes,ppl,optim,train] [--json out.json]
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WIKITEXT = Path(__file__).resolve().parents[2] / "shared/data/wikitext2/test.txt"
LORA = dict(r=16, alpha=32.0, target_modules="all-linear")


# --- helpers ------------------------------------------------------------------------------------
def proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def windows(tokenizer, length: int, count: int) -> torch.Tensor:
    """(count, length) non-overlapping token windows from the start of wikitext-2 test."""
    text = WIKITEXT.read_text()[: 12 * length * count]  # ~4 characters per token, with margin
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < length * count:
        raise SystemExit(f"not enough text in {WIKITEXT} for {count} windows of {length}")
    return ids[: length * count].view(count, length)


def table(headers: list, rows: list) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


# --- round-trip error -----------------------------------------------------------------------------
def schemes():
    from tunesmith.models.quantization import quantize_absmax, quantize_nf4

    return {
        "NF4 + double quant (block 64)": lambda w: quantize_nf4(w, 64, double_quant=True),
        "NF4 (block 64)": lambda w: quantize_nf4(w, 64, double_quant=False),
        "int4 absmax (block 64)": lambda w: quantize_absmax(w, 4, "block", 64),
        "int8 absmax (block 64)": lambda w: quantize_absmax(w, 8, "block", 64),
        "int8 absmax (per row)": lambda w: quantize_absmax(w, 8, "row"),
    }


def error_stats(weights: list, quantize) -> dict:
    err_sq = ref_sq = max_abs = 0.0
    n = stored = 0
    for w in weights:
        q = quantize(w)
        d = q.dequantize() - w
        err_sq, ref_sq = err_sq + d.pow(2).sum().item(), ref_sq + w.pow(2).sum().item()
        max_abs, n, stored = max(max_abs, d.abs().max().item()), n + w.numel(), stored + q.nbytes()
    return {
        "rel_rmse": math.sqrt(err_sq / ref_sq),
        "max_abs": max_abs,
        "bits_per_weight": 8 * stored / n,
    }


def part_error(out: dict) -> str:
    from tunesmith.models import load_base_model

    gen = torch.Generator().manual_seed(0)
    normal = [torch.randn(2048, 2048, generator=gen)]
    model, _ = load_base_model("default")
    real = [
        m.weight.detach()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    ]
    rows, out["error"] = [], {}
    for name, fn in schemes().items():
        a, b = error_stats(normal, fn), error_stats(real, fn)
        out["error"][name] = {"normal": a, "model": b}
        rows.append(
            [
                name,
                f"{a['bits_per_weight']:.3f}",
                f"{a['rel_rmse']:.4f}",
                f"{a['max_abs']:.4f}",
                f"{b['rel_rmse']:.4f}",
                f"{b['max_abs']:.4f}",
            ]
        )
    return table(
        [
            "scheme",
            "stored bits/weight",
            "N(0,1) rel. RMSE",
            "N(0,1) max abs err",
            f"model ({len(real)} linears) rel. RMSE",
            "model max abs err",
        ],
        rows,
    )


# --- bytes --------------------------------------------------------------------------------------
def part_bytes(out: dict) -> str:
    from tunesmith.models import load_base_model
    from tunesmith.models.quantization import quantize_model
    from tunesmith.utils.modules import weight_bytes

    rows, out["bytes"], ref = [], {}, None
    for label, scheme, dq in [
        ("fp32", None, None),
        ("int8 (block 64)", "int8", None),
        ("NF4 (block 64)", "nf4", False),
        ("NF4 + double quant", "nf4", True),
    ]:
        model, _ = load_base_model("default")
        lin_before = sum(
            m.weight.numel() * 4
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
        )
        lin = quantize_model(model, scheme, dq).bytes_after if scheme else lin_before
        total = weight_bytes(model)
        rest = total - lin  # embeddings (tied lm_head) and norms, kept in full precision
        ref = ref or {"lin": lin, "total": total}
        out["bytes"][label] = {"linear": lin, "total": total, "rest_fp32": rest}
        rows.append(
            [
                label,
                mib(lin),
                f"{lin / ref['lin']:.3f}",
                mib(total),
                f"{total / ref['total']:.3f}",
                mib(lin + rest / 2),
                f"{(lin + rest / 2) / ref['total']:.3f}",
            ]
        )
        del model
    return table(
        [
            "base weights",
            "linear layers MiB",
            "x fp32",
            "whole model MiB (rest fp32)",
            "x fp32",
            "whole model MiB (rest bf16)",
            "x fp32",
        ],
        rows,
    )


# --- perplexity ---------------------------------------------------------------------------------
@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch: int = 4) -> float:
    total = count = 0.0
    for i in range(0, ids.shape[0], batch):
        x = ids[i : i + batch]
        loss = model(x, labels=x).loss  # mean over the (T - 1) predicted tokens of each window
        n = x.shape[0] * (x.shape[1] - 1)
        total, count = total + loss.item() * n, count + n
    return math.exp(total / count)


def part_ppl(out: dict) -> str:
    from tunesmith.models import load_base_model

    rows, out["ppl"] = [], {}
    for scheme in ("none", "int8", "nf4"):
        model, tok = load_base_model("default", quantize=scheme)
        ids = windows(tok, 256, 40)
        start = time.perf_counter()
        ppl = perplexity(model.eval(), ids)
        seconds = time.perf_counter() - start
        out["ppl"][scheme] = {"ppl": ppl, "seconds": seconds}
        label = {"none": "fp32", "int8": "int8 (block 64)", "nf4": "NF4 + double quant (block 64)"}[
            scheme
        ]
        rows.append(
            [label, f"{ppl:.3f}", f"{ppl / out['ppl']['none']['ppl']:.4f}", f"{seconds:.0f}"]
        )
        del model
    return table(["base weights", "perplexity (40 x 256 tokens)", "x fp32", "eval seconds"], rows)


# --- training steps (subprocesses) ---------------------------------------------------------------
def worker(spec: dict) -> dict:
    """One configuration in a fresh process: load, apply LoRA, run spec['steps'] training steps."""
    from tunesmith.config.schema import TrainConfig
    from tunesmith.methods import apply_method
    from tunesmith.methods.lora import LoraConfig
    from tunesmith.models import load_base_model
    from tunesmith.training.optim import build_optimizer
    from tunesmith.training.optim8bit import optimizer_state_bytes
    from tunesmith.utils.modules import weight_bytes

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model, tok = load_base_model(spec["model"])
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))  # touch every weight: safetensors maps files lazily
    result = {
        "rss_after_load_kib": proc_status_kib("VmRSS"),
        "base_weight_bytes": weight_bytes(model),
    }
    if not spec["steps"]:
        return result
    apply_method(model, LoraConfig(**LORA))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, TrainConfig(lr=5e-4, optimizer=spec["optimizer"]))
    data = windows(tok, 128, 4 * spec["steps"]).view(spec["steps"], 4, 128)
    model.train()
    reset_peak_rss()
    times, losses = [], []
    for x in data:
        start = time.perf_counter()
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    result.update(
        step_peak_kib=proc_status_kib("VmHWM"),
        step_seconds=times,
        losses=losses,
        median_step_s=statistics.median(times[1:]),
        opt_state_bytes=optimizer_state_bytes(opt),
        trainable=sum(p.numel() for p in params),
    )
    return result


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = {**os.environ, **spec.get("env", {})}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def part_train(out: dict, steps: int, threads: int) -> str:
    from tunesmith.api import quantize_to_directory

    tmp = Path(tempfile.mkdtemp(prefix="tunesmith-bench-"))
    quantize_to_directory("default", "nf4", str(tmp / "nf4"))
    quantize_to_directory("default", "int8", str(tmp / "int8"))
    fixed = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    nf4, lora = str(tmp / "nf4"), {"model": "default", "optimizer": "adamw", "steps": steps}
    configs = {
        "LoRA, fp32 base, AdamW": lora,
        "QLoRA, NF4 base, AdamW": {**lora, "model": nf4},
        "QLoRA, NF4 base, 8-bit AdamW": {**lora, "model": nf4, "optimizer": "adamw8bit"},
        "LoRA, fp32 base, AdamW, fixed mmap threshold": {**lora, "env": fixed},
        "QLoRA, NF4 base, AdamW, fixed mmap threshold": {**lora, "model": nf4, "env": fixed},
        "QLoRA, NF4 base, 8-bit AdamW, fixed mmap threshold": {
            **lora,
            "model": nf4,
            "env": fixed,
            "optimizer": "adamw8bit",
        },
        "int8 base (load only)": {**lora, "model": str(tmp / "int8"), "steps": 0},
    }
    try:
        out["train"] = {
            name: run_worker({**spec, "threads": threads}) for name, spec in configs.items()
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name, r in out["train"].items():
        base = out["train"][
            "LoRA, fp32 base, AdamW" + (", fixed mmap threshold" if "fixed" in name else "")
        ]
        step = (
            [
                mib(1024 * r["step_peak_kib"]),
                f"{r['step_peak_kib'] / base['step_peak_kib']:.2f}",
                f"{r['median_step_s']:.2f}",
                f"{r['median_step_s'] / base['median_step_s']:.2f}",
                mib(r["opt_state_bytes"]),
            ]
            if "median_step_s" in r
            else ["-"] * 5
        )
        rows.append([name, mib(r["base_weight_bytes"]), mib(1024 * r["rss_after_load_kib"]), *step])
    return table(
        [
            "configuration",
            "base weights MiB",
            "RSS after load + 1 forward MiB",
            "peak RSS during steps MiB",
            "x LoRA",
            "median step s",
            "x LoRA",
            "optimizer state MiB",
        ],
        rows,
    )


def part_optim(out: dict, steps: int = 30) -> str:
    from tunesmith.config.schema import TrainConfig
    from tunesmith.methods import apply_method
    from tunesmith.methods.lora import LoraConfig
    from tunesmith.models import load_base_model
    from tunesmith.training.optim import build_optimizer
    from tunesmith.training.optim8bit import optimizer_state_bytes

    torch.manual_seed(0)
    model, tok = load_base_model("default", quantize="nf4")
    apply_method(model, LoraConfig(**LORA))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    data = windows(tok, 128, 2 * steps).view(steps, 2, 128)
    model.train()
    out["optim"] = {}
    for name in ("adamw", "adamw8bit"):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        opt = build_optimizer(list(params.values()), TrainConfig(lr=5e-4, optimizer=name))
        losses = []
        for x in data:
            loss = model(x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        out["optim"][name] = {"losses": losses, "state_bytes": optimizer_state_bytes(opt)}
    a, b = out["optim"]["adamw"]["losses"], out["optim"]["adamw8bit"]["losses"]
    rows = [[i + 1, f"{x:.4f}", f"{y:.4f}", f"{y - x:+.4f}"] for i, (x, y) in enumerate(zip(a, b))]
    summary = (
        f"\n\nmax |difference| {max(abs(y - x) for x, y in zip(a, b)):.4f}; optimizer state "
        f"{mib(out['optim']['adamw']['state_bytes'])} MiB (AdamW) vs "
        f"{mib(out['optim']['adamw8bit']['state_bytes'])} MiB (8-bit AdamW)"
    )
    return table(["step", "AdamW loss", "8-bit AdamW loss", "difference"], rows) + summary


def loss_table(out: dict) -> str:
    runs = {
        k: v["losses"]
        for k, v in out.get("train", {}).items()
        if "losses" in v and "fixed" not in k
    }
    if not runs:
        return ""
    names = list(runs)
    rows = [[i + 1, *(f"{runs[n][i]:.4f}" for n in names)] for i in range(len(runs[names[0]]))]
    return table(["step", *names], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="error,bytes,ppl,optim,train")
    parser.add_argument(
        "--steps",
        type=int,
        default=6,
        help="training steps per configuration (the first is excluded from the median)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steady timings on a shared machine, where OpenMP threads spin)",
    )
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    out = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads}
    parts = {
        "error": part_error,
        "bytes": part_bytes,
        "ppl": part_ppl,
        "optim": part_optim,
        "train": lambda o: (
            part_train(o, args.steps, args.threads) + "\n\nlosses per step\n\n" + loss_table(o)
        ),
    }
    for name in args.parts.split(","):
        print(f"\n## {name}\n\n{parts[name](out)}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
