"""The CLI trains with data.packing and data.group_by_length on a tiny model."""

import json

import pytest
import yaml

from tests.tiny import save_tiny_model
from tunesmith.cli.main import main

pytestmark = pytest.mark.integration


def test_train_with_packing_and_length_grouping(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [
        {"instruction": f"Echo {i}" + " x" * (i % 7), "input": "", "output": f"echo {i}"}
        for i in range(30)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {
            "train": str(tmp_path / "data.jsonl"),
            "max_length": 128,
            "packing": True,
            "group_by_length": True,
        },
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1},
        "eval": {"max_new_tokens": 4, "limit": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 3 and all(loss == loss for loss in losses)


def test_packing_with_prompt_tuning_is_refused(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"a {i}", "input": "", "output": "b"} for i in range(10)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "prompt_tuning"},
        "data": {"train": str(tmp_path / "data.jsonl"), "packing": True},
        "train": {"max_steps": 1},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) != 0
    assert "data.packing" in capsys.readouterr().err
