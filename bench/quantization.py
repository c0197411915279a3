"""Quantization benchmark on the embedded SmolLM2-135M-Instruct; prints markdown tables.

Parts (--parts, comma-separated; default all):
  error  round-trip error of NF4 / int4 / int8 on N(0, 1) weights and on the model's own weights
  bytes  bytes of the base weights at fp32, int8, NF4 and NF4 + double quantization
  ppl    perplexity on the first 40 x 256-token windows of wikitext-2 test at fp32, int8, NF4
  optim  QLoRA (NF4) loss curves over 30 steps (batch 2 x 128 tokens) with AdamW vs 8-bit AdamW
  train  one subprocess per configuration (bench/quantization_steps.py; so peak RSS readings do
         not mask each other):
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
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402
from quantization_steps import LORA, loss_table, mib, part_train, windows  # noqa: E402


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
    args = parser.parse_args()
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
