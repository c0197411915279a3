"""The classification CLI end to end on a tiny model: train, eval, classify (argument and stdin),
table, and each bad-input error as one line with exit code 2."""

import io
import json

import pytest
import yaml

from tests.tiny import save_tiny_model
from tunesmith.cli.main import main


@pytest.fixture
def run_dir(tmp_path, cache_dir):
    model_dir = save_tiny_model(tmp_path / "tiny")
    lines = ["label,text"] + [
        f"{'spam' if i % 2 else 'ham'},{'win cash now' if i % 2 else 'see you'} {i}"
        for i in range(40)
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(tmp_path / "train.csv"), "max_length": 32},
        "task": {"type": "classify", "mode": "head", "trainable": "head"},
        "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-2, "log_every": 1},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_train_eval_and_classify(run_dir, capsys, monkeypatch):
    cfg = str(run_dir / "cfg.yaml")
    assert main(["train", cfg]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert main(["eval", cfg]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "out/metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(metrics) and metrics[
        "split"
    ] == "test"
    assert "macro_f1" in out and "precision" in out and (run_dir / "out/confusion.png").is_file()
    assert main(["classify", "--run", str(run_dir / "out"), "win cash now 99"]) == 0
    label, prob = capsys.readouterr().out.split()
    assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1
    monkeypatch.setattr("sys.stdin", io.StringIO("see you 1\nwin cash now 2\n"))
    assert main(["classify", "--config", cfg]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_table_runs_rows_and_reuses_finished_ones(run_dir, capsys):
    spec = {
        "config": str(run_dir / "cfg.yaml"),
        "output": str(run_dir / "table"),
        "columns": ["train_accuracy", "test_accuracy", "train_seconds", "trainable_params"],
        "rows": [
            {"name": "head only", "overrides": ["task.trainable=head"]},
            {"name": "last block", "overrides": ["task.trainable=last_block"]},
        ],
    }
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["table", str(run_dir / "spec.yaml")]) == 0
    table = (run_dir / "table/table.md").read_text()
    assert "| head only |" in table and "| last block |" in table and "34" in table
    stamp = (run_dir / "table/head_only/metrics.json").stat().st_mtime_ns
    assert main(["table", str(run_dir / "spec.yaml")]) == 0
    assert (
        run_dir / "table/head_only/metrics.json"
    ).stat().st_mtime_ns == stamp  # reused, not retrained


@pytest.mark.parametrize(
    "setup, args, fragment",
    [
        (
            lambda d: (d / "test.csv").write_text("label,text\nham,x\nmaybe,y\n"),
            ["data.test={d}/test.csv"],
            "test data has label(s) the training data never had: 'maybe'",
        ),
        (
            None,
            ["data.label_field=category"],
            "no field 'category' (data.label_field); the record has: label, text",
        ),
        (
            None,
            ["task.mode=prompt", "task.trainable=none", "task.template={text} is spam"],
            "answer slot {answer}",
        ),
        (
            None,
            [
                "task.mode=prompt",
                "task.trainable=none",
                "task.label_words={ham: \u00e9\u00e9, spam: x}",
            ],
            "is not in the model's vocabulary",
        ),
        (
            None,
            ["method.name=sparse"],
            "method.name=sparse is set but task.trainable=head trains the head only; "
            "set task.trainable=method to train with sparse, or remove the method section",
        ),
        (
            None,
            ["task.mode=knn"],
            "task.mode must be one of features, head, icl, prompt, got 'knn'",
        ),
        (
            None,
            ["task.mode=icl", "task.icl_shots=2", "icl.shots=3"],
            "task.icl_shots=2 and icl.shots=3 disagree",
        ),
        (
            None,
            ["features.c=2"],
            "section 'features' does not apply to task.type=classify task.mode=head",
        ),
    ],
)
def test_bad_input_is_one_clear_line(run_dir, capsys, setup, args, fragment):
    if setup:
        setup(run_dir)
    assert (
        main(["train", str(run_dir / "cfg.yaml"), *[a.replace("{d}", str(run_dir)) for a in args]])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and len(err.strip().splitlines()) == 1
