"""`tunesmith train` with task.type=distill from YAML: a cut student of a tiny teacher, the
forgetting switches on, then `tunesmith eval` of the run."""

import json

import yaml

from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.cli.main import main


def test_distill_from_yaml_with_forgetting_switches(tmp_path, capsys):
    teacher = save_tiny_model(tmp_path / "teacher", tiny_llama(num_hidden_layers=4))
    records = [{"instruction": f"Echo {i}", "output": f"echo {i}"} for i in range(24)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "general.txt").write_text("".join(f"some general text {i}\n" for i in range(20)))
    cfg = {
        "task": {"type": "distill"},
        "model": {"name": str(teacher), "keep_layers": [0, 3]},
        "method": {"name": "full"},
        "distill": {"teacher": str(teacher), "loss": "jsd", "cache_top_k": 8, "alpha": 0.2},
        "data": {
            "train": str(tmp_path / "data.jsonl"),
            "max_length": 48,
            "replay": str(tmp_path / "general.txt"),
            "replay_ratio": 0.2,
        },
        "train": {
            "max_steps": 3,
            "batch_size": 4,
            "lr": 1e-3,
            "l2sp_lambda": 0.1,
            "ewc_lambda": 1.0,
            "ewc_samples": 4,
            "lwf_lambda": 0.5,
            "log_every": 1,
        },
        "eval": {"max_new_tokens": 4, "limit": 3, "general_data": str(tmp_path / "general.txt")},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "general_perplexity_after" in printed
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    for key in ("general_perplexity_before", "general_perplexity_after", "teacher_cache_mb"):
        assert key in metrics
    log = (tmp_path / "out/metrics.jsonl").read_text()
    assert all(k in log for k in ("kd_loss", "start_penalty", "lwf_kl"))
    assert (tmp_path / "out/student/config.json").is_file()
    assert main(["eval", str(tmp_path / "cfg.yaml")]) == 0
    assert "general_perplexity" in capsys.readouterr().out
