"""The training-step part of bench/quantization.py (`--parts train`), and what its parts share.

Each configuration runs in a process of its own (this file with the configuration as JSON), so
peak RSS readings do not mask each other.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

WIKITEXT = Path(__file__).resolve().parents[2] / "shared/data/wikitext2/test.txt"
LORA = dict(r=16, alpha=32.0, target_modules="all-linear")


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


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


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
    cmd = [sys.executable, __file__, json.dumps(spec)]
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


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
