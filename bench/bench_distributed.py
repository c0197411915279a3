"""Data-parallel training on this machine: throughput at 1 vs 2 processes, per-rank memory of DDP
vs FSDP. The embedded SmolLM2-135M-Instruct, fp32, instruction records of ~60-100 tokens.

    python bench/bench_distributed.py [--steps 8] [--out bench/results/distributed.md]

Each configuration is a fresh torchrun (or plain) run of this file with --worker. The global batch
is 8 in every row (1 x 8 or 2 x 4), with the same seeded order, so rows compare like for like.
Per-rank bytes are counted from the tensors each rank holds after one optimizer step (its shards
under FSDP): parameters (trained and frozen), gradients and AdamW's state.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ROWS = [  # (name, processes, strategy, method, threads per process)
    ("lora, 1 process x 2 threads", 1, "ddp", "lora", 2),
    ("lora, 2 processes x 1 thread (ddp)", 2, "ddp", "lora", 1),
    ("full, 1 process x 2 threads", 1, "ddp", "full", 2),
    ("full, 2 processes x 1 thread (ddp)", 2, "ddp", "full", 1),
    ("full, 2 processes x 1 thread (fsdp)", 2, "fsdp", "full", 1),
]


def records(n: int = 64) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [
        {
            "instruction": f"Repeat the words in reverse order: {' '.join(words[i % 7 : i % 7 + 5])}",
            "output": " ".join(reversed(words[i % 7 : i % 7 + 5])) * (1 + i % 3),
            "_source": f"bench:{i}",
        }
        for i in range(n)
    ]


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def measure_memory(model, objective, cfg) -> dict:
    """Bytes this rank holds after one update, built as training builds them."""
    from tunesmith.methods.base_params import BASE_PARAMS_ATTR
    from tunesmith.training.distributed import parallel_for
    from tunesmith.training.optim import build_optimizer

    par = parallel_for(model, objective, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    batch = objective.collate(EXAMPLES[: cfg.batch_size])
    loss, n = par.loss(batch)[:2]
    par.backward(loss * n)
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel")]
    held = getattr(model, BASE_PARAMS_ATTR, {}).values()  # the full method's copy of the originals
    return {
        "originals_bytes": local_bytes(original for pairs in held for _, original in pairs),
        "param_bytes": local_bytes(model.parameters()),
        "grad_bytes": local_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_bytes": local_bytes(state),
    }


def worker(args) -> None:
    import torch

    from tunesmith.config.schema import DistributedConfig, TrainConfig
    from tunesmith.data import encode_records
    from tunesmith.methods import apply_method
    from tunesmith.methods.full import FullConfig
    from tunesmith.methods.lora import LoraConfig
    from tunesmith.models import load_base_model
    from tunesmith.models.meta_init import real_new_parameters
    from tunesmith.training import sft_objective, train
    from tunesmith.training.distributed import distributed_run, shards_parameters
    from tunesmith.utils.distributed import is_main_process, world_size
    from tunesmith.utils.memory import peak_rss_mb

    global EXAMPLES
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=8 // world_size(),
        lr=1e-4,
        log_every=1000,
        precision="fp32",
        resume=False,
        distributed=DistributedConfig(strategy=args.strategy, threads=args.threads),
    )
    with distributed_run(cfg.distributed):
        torch.set_num_threads(args.threads)
        # as a recipe builds it: under FSDP on the meta device, each rank reading its shards
        model, tok = load_base_model("default", on_meta=shards_parameters(cfg))
        EXAMPLES = encode_records(records(), tok, "auto", 128)[0]
        lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
        with real_new_parameters():
            apply_method(model, lora if args.method == "lora" else FullConfig())
        objective = sft_objective(tok.pad_token_id)
        if args.memory:
            row = measure_memory(model, objective, cfg)
        else:
            result = train(model, EXAMPLES, cfg, Path(args.out_dir), objective)
            row = {"tokens_per_s": result.tokens / result.seconds, "seconds": result.seconds}
        row["peak_rss_mb"] = peak_rss_mb()
        rows = [row] if world_size() == 1 else gather(row)
        if is_main_process():
            Path(args.result).write_text(json.dumps(rows))


def gather(row: dict) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, row)
    return out


def run_row(nproc: int, strategy: str, method: str, threads: int, steps: int, memory: bool):
    result = ROOT / "runs" / "bench_distributed" / f"{nproc}-{strategy}-{method}-{memory}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    args = ["--worker", "--strategy", strategy, "--method", method, "--threads", str(threads)]
    args += ["--steps", str(steps), "--result", str(result), "--out-dir", str(result.parent / "o")]
    args += ["--memory"] if memory else []
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([*launcher, __file__, *args], env=env, check=True)
    return json.loads(result.read_text())


def table(steps: int, only=None) -> str:
    lines = [
        "| configuration | tokens/s | params MiB/rank | grads MiB/rank | AdamW MiB/rank | "
        "originals kept by the method MiB/rank | peak RSS MiB/rank |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    mib = 2**20
    rows = [ROWS[i] for i in only] if only else ROWS
    for name, nproc, strategy, method, threads in rows:
        mem = run_row(nproc, strategy, method, threads, 1, memory=True)[0]
        speed = run_row(nproc, strategy, method, threads, steps, memory=False)[0] if steps else {}
        lines.append(
            f"| {name} | {speed.get('tokens_per_s', float('nan')):.0f} | "
            f"{mem['param_bytes'] / mib:.0f} | "
            f"{mem['grad_bytes'] / mib:.0f} | {mem['optimizer_bytes'] / mib:.0f} | "
            f"{mem['originals_bytes'] / mib:.0f} | "
            f"{max(speed.get('peak_rss_mb', 0), mem['peak_rss_mb']):.0f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8, help="timed steps per row; 0: memory only")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed.md"))
    p.add_argument("--rows", help="comma-separated indices into ROWS (default: all)")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--method", default="lora")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--result")
    p.add_argument("--out-dir")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    start = time.time()
    text = table(args.steps, [int(i) for i in args.rows.split(",")] if args.rows else None)
    note = (
        f"\n\n{args.steps} steps of global batch 8 per row; {time.time() - start:.0f} s in all.\n"
    )
    Path(args.out).write_text(text + note)
    print(f"written to {args.out}")


EXAMPLES: list = []

if __name__ == "__main__":
    main()
