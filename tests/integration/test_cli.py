"""The CLI end to end on a tiny model directory: train three steps, eval, generate, merge, info, errors."""

import csv
import io
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.tiny import save_tiny_model
from tunesmith import load_model
from tunesmith.cli.main import main


@pytest.fixture
def run_dir(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(30)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 64},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1},
        "eval": {"max_new_tokens": 4, "limit": 3},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_train_writes_peft_adapter_metrics_and_curve(run_dir, capsys):
    assert main(["train", str(run_dir / "cfg.yaml"), "train.seed=3"]) == 0
    out = run_dir / "out"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "loss_curve.png",
        "checkpoints/last/state.json",
        "best/adapter_model.safetensors",
    ):
        assert (out / name).exists(), name
    adapter = load_file(str(out / "adapter_model.safetensors"))
    b_keys = [k for k in adapter if "lora_B" in k]
    assert b_keys and all(k.startswith("base_model.model.model.layers.") for k in adapter)
    assert all(adapter[k].abs().sum() > 0 for k in b_keys)  # B started at zero: training changed it
    losses = [
        json.loads(x)["loss"]
        for x in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 3
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_eval_generate_merge_info(run_dir, capsys, monkeypatch):
    assert main(["train", str(run_dir / "cfg.yaml")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir / "cfg.yaml")]) == 0
    metrics = json.loads((run_dir / "out/metrics.json").read_text())
    assert {"loss", "perplexity", "exact_match", "contains"} <= set(metrics)
    assert "perplexity" in capsys.readouterr().out

    model_dir, adapter = str(run_dir / "tiny"), str(run_dir / "out")
    monkeypatch.setattr("sys.stdin", io.StringIO("Echo 1\nEcho 2\n"))
    assert (
        main(["generate", "--model", model_dir, "--adapter", adapter, "--max-new-tokens", "3"]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 2  # one completion per prompt line

    merged = run_dir / "merged"
    assert main(["merge", "--model", model_dir, "--adapter", adapter, "--output", str(merged)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    with_adapter, _ = load_model(model_dir, adapter=adapter)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            plain(ids).logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-5
        )

    assert main(["info", "--model", model_dir, "--adapter", adapter]) == 0
    info = capsys.readouterr().out
    assert "trainable parameters" in info and "LlamaForCausalLM" in info


def test_methods_lists_lora(capsys):
    assert main(["methods"]) == 0
    assert "lora" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "missing.yaml"], "config file not found"),
        (["train", "{cfg}", "train.bach_size=2"], "did you mean 'train.batch_size'"),
        (["train", "{cfg}", "model.name=/nonexistent/model"], "directory not found"),
        (
            ["train", "{cfg}", "model.name=someorg/not-cached-model"],
            "nor in the local Hugging Face cache",
        ),
        (["train", "{cfg}", "data.train=/nonexistent.jsonl"], "data file not found"),
        (["train", "{cfg}", "method.target_modules=[nope]"], "its linear layers are named"),
        (
            ["generate", "--model", "{tiny}", "--adapter", "/nonexistent", "hi"],
            "adapter_config.json is missing",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(run_dir, capsys, args, fragment):
    args = [a.format(cfg=run_dir / "cfg.yaml", tiny=run_dir / "tiny") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_adapter_for_another_base_names_the_mismatched_tensor(run_dir, capsys):
    from tests.tiny import tiny_llama

    assert main(["train", str(run_dir / "cfg.yaml")]) == 0
    other = save_tiny_model(run_dir / "other", tiny_llama(hidden_size=32, intermediate_size=64))
    assert main(["generate", "--model", str(other), "--adapter", str(run_dir / "out"), "hi"]) == 2
    assert "lora_A.weight has shape" in capsys.readouterr().err


def test_compare_tabulates_each_method_with_its_own_overrides(run_dir, capsys):
    out = run_dir / "cmp"
    assert (
        main(
            [
                "compare",
                str(run_dir / "cfg.yaml"),
                "train.max_steps=2",
                "--methods",
                "lora,ia3",
                "--set",
                "ia3:train.lr=0.05",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["lora", "ia3"]
    assert all(float(r["value"]) >= 0 and int(r["trainable_params"]) > 0 for r in rows)
    assert yaml.safe_load((out / "ia3/config.yaml").read_text())["train"]["lr"] == 0.05
    assert yaml.safe_load((out / "lora/config.yaml").read_text())["train"]["lr"] == 0.01
    assert (out / "compare.png").stat().st_size > 0 and "| ia3 |" in (
        out / "compare.md"
    ).read_text()


def test_compare_rejects_an_override_for_a_method_not_compared(run_dir, capsys):
    assert (
        main(
            [
                "compare",
                str(run_dir / "cfg.yaml"),
                "--methods",
                "lora",
                "--set",
                "ia3:train.lr=0.05",
            ]
        )
        == 2
    )
    assert "'ia3' is not among --methods" in capsys.readouterr().err


def test_compare_keeps_going_past_a_method_that_does_not_apply(run_dir, capsys):
    out = run_dir / "cmp"
    assert (
        main(
            [
                "compare",
                str(run_dir / "cfg.yaml"),
                "train.max_steps=1",
                "--methods",
                "bitfit,lora",
                "--output",
                str(out),
            ]
        )
        == 1
    )
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert rows[0]["value"].startswith("failed: ") and "bias" in rows[0]["value"]
    assert rows[1]["method"] == "lora" and int(rows[1]["trainable_params"]) > 0
