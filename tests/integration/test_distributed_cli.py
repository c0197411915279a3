"""`tunesmith train CONFIG --nproc 2` end to end on a tiny model directory: torchrun starts two
ranks, and the run's files come out as from one process (written once, by rank 0)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def test_train_with_nproc_2_writes_one_runs_outputs(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(40)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 64},
        "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-2, "log_every": 1},
        "eval": {"max_new_tokens": 4, "limit": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunesmith", "train", str(tmp_path / "cfg.yaml")]
    cmd += ["train.distributed.threads=1", "train.distributed.timeout=60", "--nproc", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").is_file() and (out / "checkpoints" / "last").is_dir()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"loss"' in line] == [1, 2, 3]
    assert done.stdout.count("trained; outputs in") == 1  # rank 0 alone reports
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["distributed"]["threads"] == 1
