"""BLEU, chrF and ROUGE-1/2/L through `tunesmith eval` (eval.metrics) and in the compare report."""

import csv
import json

import pytest
import yaml

from tests.tiny import save_tiny_model
from tunesmith.cli.main import main

pytest.importorskip("sacrebleu")


@pytest.fixture
def cfg_path(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(20)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 64},
        "train": {"max_steps": 1, "batch_size": 4, "lr": 1e-2},
        "eval": {
            "max_new_tokens": 4,
            "limit": 3,
            "metrics": ["exact_match", "rouge", "bleu", "chrf"],
        },
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "cfg.yaml"


def test_eval_writes_the_chosen_generation_metrics(cfg_path, capsys):
    assert main(["eval", str(cfg_path), "--base"]) == 0
    metrics = json.loads((cfg_path.parent / "out/metrics.json").read_text())
    assert {"exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"} <= set(metrics)
    assert "contains" not in metrics  # not asked for
    assert 0 <= metrics["chrf"] <= 100 and 0 <= metrics["rouge1"] <= 1
    assert "bleu" in capsys.readouterr().out


def test_compare_report_shows_generation_metrics(cfg_path, capsys):
    out = cfg_path.parent / "cmp"
    args = ["compare", str(cfg_path), "--methods", "lora", "--metric", "rouge_l"]
    assert main([*args, "--output", str(out)]) == 0
    header = (out / "compare.md").read_text().splitlines()[0]
    assert "rouge_l" in header and "bleu" in header and "chrf" in header
    row = next(csv.DictReader((out / "compare.csv").open()))
    assert float(row["bleu"]) >= 0 and float(row["chrf"]) >= 0
