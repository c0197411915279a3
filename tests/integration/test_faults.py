"""Fault injection end to end: SIGKILL a real `tunesmith train` process at several steps, resume it
with the same command each time, and require the final adapter to be bit-identical to a run that was
never interrupted (LoRA dropout on, so the RNG state has to survive every kill too)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.tiny import save_tiny_model
from tunesmith.training.checkpoint import find_checkpoint, read_position

STEPS = 60
KILL_AFTER = (
    10,
    25,
    40,
)  # kill once metrics.jsonl shows this step; the kill lands wherever the run is then
REPO = Path(__file__).resolve().parents[2]


def _write_run(tmp_path: Path, name: str) -> Path:
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(40)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(tmp_path / "tiny")},
        "method": {
            "name": "lora",
            "r": 4,
            "alpha": 8,
            "dropout": 0.2,
            "target_modules": ["q_proj", "v_proj"],
        },
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 64},
        "train": {
            "max_steps": STEPS,
            "batch_size": 4,
            "lr": 1e-2,
            "log_every": 1,
            "save_every": 1,
            "seed": 3,
        },
        "eval": {"max_new_tokens": 1, "limit": 1},
        "output": {"dir": str(tmp_path / name)},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(cfg: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli.main", "train", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


def _last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _kill_after(proc: subprocess.Popen, metrics: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while _last_step(metrics) < step:
        assert proc.poll() is None, (
            f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        )
        assert time.monotonic() < deadline, f"no step {step} in {metrics} after 300 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run had already ended (code {proc.returncode})"


def test_sigkill_at_several_steps_then_resume_is_bit_identical(tmp_path):
    save_tiny_model(tmp_path / "tiny")
    straight_cfg, killed_cfg = _write_run(tmp_path, "straight"), _write_run(tmp_path, "killed")
    straight = _start(straight_cfg)  # in parallel with the killed runs, to keep the test short

    out = tmp_path / "killed"
    resumed_at = []
    for step in KILL_AFTER:
        _kill_after(_start(killed_cfg), out / "metrics.jsonl", step)
        resumed_at.append(read_position(find_checkpoint(out))["step"])
    _finish(_start(killed_cfg))
    _finish(straight)

    # Each kill left a checkpoint at most one step before its kill point (metrics are written just
    # before the save), and each resume went further.
    assert all(at >= step - 1 for at, step in zip(resumed_at, KILL_AFTER)), resumed_at
    assert resumed_at == sorted(set(resumed_at)) and resumed_at[-1] < STEPS, resumed_at
    expected = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter_model.safetensors"))
    assert expected.keys() == got.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "last",
        "previous",
    ]  # no stray temp dirs
