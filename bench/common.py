"""What every benchmark case shares: data, identical adapters, timing, peak GEMM, FLOP counts, tables.

Every framework gets the same token ids, the same batches in the same order (tunesmith's
epoch_order for the seed), the same LoRA A/B weights and the same hyper-parameters.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INSTRUCTIONS = DATA / "instruction_rasbt" / "instruction-data.json"
TEXT = DATA / "wikitext2" / "valid.txt"
TARGETS = ["q_proj", "v_proj"]


@dataclass
class Hyper:
    batch_size: int = 4
    lr: float = 2e-4
    r: int = 8
    alpha: float = 16.0
    seed: int = 42
    max_length: int = 512
    seq_len: int = 256  # case (b) row length


def set_threads() -> int:
    n = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def instruction_examples(tokenizer, hyper: Hyper) -> list:
    """Case (a): the instruction data, chat-templated, loss on the responses only."""
    from tunesmith.data import encode_records, read_records

    return encode_records(
        read_records(INSTRUCTIONS), tokenizer, "instruction", hyper.max_length, True
    )[0]


def text_examples(tokenizer, hyper: Hyper, n_rows: int) -> list:
    """Case (b): wikitext-2 cut into rows of exactly seq_len tokens, every token a label."""
    from tunesmith.data import Example

    ids = tokenizer(TEXT.read_text()[: 40 * hyper.seq_len * n_rows])["input_ids"]
    rows = [ids[i : i + hyper.seq_len] for i in range(0, len(ids) - hyper.seq_len, hyper.seq_len)][
        :n_rows
    ]
    if len(rows) < n_rows:
        raise SystemExit(
            f"{TEXT} gives only {len(rows)} rows of {hyper.seq_len} tokens, {n_rows} wanted"
        )
    return [Example(r, list(r)) for r in rows]


def batch_order(examples: list, hyper: Hyper, steps: int) -> list[list[int]]:
    """The example indices of each step, exactly as tunesmith.training.train draws them."""
    from tunesmith.data.sampling import epoch_order

    order = epoch_order(len(examples), hyper.batch_size, hyper.seed)
    assert steps * hyper.batch_size <= len(order), "more steps than one epoch of data"
    return [order[i * hyper.batch_size : (i + 1) * hyper.batch_size] for i in range(steps)]


def set_lora_weights(model, seed: int, targets: list[str] = TARGETS) -> int:
    """Overwrite every LoRA A (kaiming-like uniform) and B (zero) of the `targets` projections
    (attention or MLP) from a per-layer seed, so tunesmith and PEFT start from identical adapters.
    Returns the number of layers set."""
    done = 0
    for name, module in model.named_modules():
        m = re.search(r"layers\.(\d+)\.\w+\.(\w+_proj)$", name)
        if m is None or m.group(2) not in targets or not hasattr(module, "lora_A"):
            continue
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        gen = torch.Generator().manual_seed(
            seed * 1000 + int(m.group(1)) * 10 + targets.index(m.group(2))
        )
        bound = 1 / a.shape[1] ** 0.5
        with torch.no_grad():
            a.copy_(torch.rand(a.shape, generator=gen) * 2 * bound - bound)
            b.zero_()
        done += 1
    return done


def against_reference(stats: dict, base: Optional[dict]) -> list:
    """Table cells of a configuration next to its reference: speed ratio, peak RSS MB and its
    ratio, mean loss and its relative difference ("-" where there is no reference)."""
    if not base:
        return ["-", round(stats["rss"]), "-", round(stats["loss"], 4), "-"]
    return [
        stats["tok_s"] / base["tok_s"],
        round(stats["rss"]),
        stats["rss"] / base["rss"],
        round(stats["loss"], 4),
        f"{100 * (stats['loss'] / base['loss'] - 1):+.2f}%",
    ]


# transformers Trainer settings of every side-by-side run: the batches in the given order, a loss
# logged at every step, nothing saved or printed.
MEASURED_TRAINER_ARGS = {
    "lr_scheduler_type": "constant",
    "use_cpu": True,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "train_sampling_strategy": "sequential",
    "dataloader_num_workers": 0,
}


def step_bench_args(doc: str, defaults: list, out_name: str, steps: int):
    """Command line of a step-timing benchmark that runs each configuration in a child process."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--configs", default="", help="comma-separated; default: " + ",".join(defaults))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def run_configs(script: Path, args, defaults: list) -> list[dict]:
    """Each configuration of args.configs (else defaults) in a fresh process: its results."""
    results = []
    for config in args.configs.split(",") if args.configs else defaults:
        print(f"{script.stem}: {config} ...", file=sys.stderr, flush=True)
        steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        results.append({"config": config, **run_child(script, ["--child", config, *steps])})
    return results


def failures(results: list[dict]) -> str:
    """ "failed: <config>: <error>; ..." for the configurations that gave no times ("" if none)."""
    failed = [f"{r.get('config')}: {r.get('error')}" for r in results if "times" not in r]
    return "\n\nfailed: " + "; ".join(failed) if failed else ""


def write_report(out: str, report: list[str], results: list[dict]) -> None:
    """The report as markdown at out, the raw results beside it (.json), and on stdout."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).with_suffix(".json").write_text(json.dumps(results))
    Path(out).write_text("\n".join(report) + "\n")
    print("\n".join(report))


def trainer_clock():
    """A transformers TrainerCallback recording the end time of each optimizer step and each
    logged loss; `.times()` gives the seconds of each step, from the start of training."""
    from transformers import TrainerCallback

    class TrainerClock(TrainerCallback):
        def __init__(self):
            self.start, self.ends, self.losses = 0.0, [], []

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def times(self) -> list[float]:
            marks = [self.start, *self.ends]
            return [b - a for a, b in zip(marks, marks[1:])]

    return TrainerClock()


class StepClock:
    """Seconds of each optimizer step of a tunesmith run: from the run's first collate (or the end
    of the previous step) to the end of optimizer.step. A step may collate several times (a
    micro-batch run as several passes), so step ends come from an optimizer hook."""

    def __init__(self):
        self.start, self.ends = None, []

    def timed(self, collate):
        def timed_collate(items):
            if self.start is None:
                self.start = time.perf_counter()
            return collate(items)

        return timed_collate

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.hook = register_optimizer_step_post_hook(
            lambda *_: self.ends.append(time.perf_counter())
        )
        return self

    def __exit__(self, *exc):
        self.hook.remove()

    def times(self) -> list[float]:
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def peak_gemm(repeats: int = 7) -> dict:
    """Median FLOP/s of a 2048x2048 @ 2048x2048 matmul in fp32 and bf16."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[name] = 2 * 2048**3 / median(times)
    return out


def lora_step_flops(cfg, lengths: list[int], loss_tokens: int, r: int, full: bool = False) -> float:
    """Model FLOPs of one LoRA training step (frozen base, adapters on q and v), counting only
    useful work (no padding, causal attention, the output head only where the loss is taken).

    Per real token: 4 * N_lin (forward 2 N_lin + input gradients 2 N_lin; no weight gradients for
    the frozen base), + 6 * r * (d_in + d_out) per LoRA layer (forward, input and weight gradients);
    attention 12 * L * d * ctx (QK^T and AV, 4*d*ctx forward, twice that backward) with ctx = the
    causal context (position + 1); per loss token 4 * V * d for the output head. With `full`
    (every weight trained): 6 * N_lin per token and 6 * V * d per loss token (weight gradients too).
    """
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    n_lin = L * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    per_token = 6 * n_lin if full else 4 * n_lin + L * 6 * r * ((d + d) + (d + kv))
    tokens = sum(lengths)
    ctx = sum(n * (n + 1) / 2 for n in lengths)
    return tokens * per_token + 12 * L * d * ctx + loss_tokens * (6 if full else 4) * V * d


def run_child(script: Path, args: list[str], timeout: float = 3600) -> dict:
    """Run `script --child ...` in a fresh process; its last 'RESULT {json}' line is the answer."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def _pythonpath() -> str:
    root = Path(__file__).resolve().parents[1]
    return os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats get 3 significant digits."""

    def cell(x):
        if isinstance(x, float):
            return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows])


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = Path("/proc/cpuinfo").read_text()
    extra = " avx512_bf16" if "avx512_bf16" in flags else ""
    return (
        f"{cpu}{extra}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
