"""`tunesmith train CONFIG --nproc 2` end to end on a tiny model directory: torchrun starts two
ranks, and the run's files come out as from one process (written once, by rank 0); a full
fine-tune sharded with FSDP exports to a plain transformers directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.tiny import save_tiny_model
from tunesmith.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
METHODS = {
    "lora": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
    "full": {"name": "full"},
}


def train_on_two_processes(tmp_path, method: str, strategy: str):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(40)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": METHODS[method],
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 64},
        "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-2, "log_every": 1},
        "eval": {"max_new_tokens": 4, "limit": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunesmith", "train", str(tmp_path / "cfg.yaml")]
    cmd += [f"train.distributed.strategy={strategy}", "train.distributed.threads=1"]
    cmd += ["train.distributed.timeout=60", "--nproc", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, model_dir, tmp_path / "out"


def test_train_with_nproc_2_writes_one_runs_outputs(tmp_path):
    done, _, out = train_on_two_processes(tmp_path, "lora", "ddp")
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").is_file() and (out / "checkpoints" / "last").is_dir()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"loss"' in line] == [1, 2, 3]
    assert done.stdout.count("trained; outputs in") == 1  # rank 0 alone reports
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["distributed"] == {
        "strategy": "ddp",
        "backend": "auto",
        "timeout": 60.0,
        "threads": 1,
    }


@pytest.mark.parametrize("strategy", ["fsdp"])
def test_a_sharded_full_fine_tune_exports_to_a_transformers_directory(tmp_path, strategy):
    _, model_dir, out = train_on_two_processes(tmp_path, "full", strategy)
    merged = tmp_path / "merged"
    assert (
        main(["merge", "--model", str(model_dir), "--adapter", str(out), "--output", str(merged)])
        == 0
    )
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(merged)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[weight], tuned.state_dict()[weight])  # it trained
    adapter = load_file(str(out / "adapter_model.safetensors"))  # gathered from both ranks' shards
    assert torch.equal(adapter[f"base_model.model.{weight}"], tuned.state_dict()[weight])
    ids = torch.tensor([[1, 40, 41, 42]])
    assert torch.isfinite(tuned(input_ids=ids).logits).all()
