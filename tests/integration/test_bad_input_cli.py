"""Bad input through the CLI: each ends in exit code 2 and one `error: ...` line on stderr."""

import json

import pytest
import yaml

from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.cli.main import main
from tunesmith.methods import apply_method
from tunesmith.methods.io import save_adapter
from tunesmith.methods.lora import LoraConfig


@pytest.fixture
def run_dir(tmp_path):
    save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(tmp_path / "tiny")},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 48},
        "train": {"max_steps": 1, "batch_size": 4},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    model = apply_method(
        tiny_llama(), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    )
    save_adapter(model, tmp_path / "adapter")
    (tmp_path / "a_file").write_text("")
    return tmp_path


def _error_line(capsys, args) -> str:
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_yaml_syntax_error(run_dir, capsys):
    (run_dir / "bad.yaml").write_text("model:\n  name: x\ntrain: lr: 1\n")
    assert (
        _error_line(capsys, ["train", run_dir / "bad.yaml"])
        == f"error: {run_dir / 'bad.yaml'}:3:10: not valid YAML: mapping values are not allowed here"
    )


def test_config_is_a_directory(run_dir, capsys):
    assert "is a directory" in _error_line(capsys, ["train", run_dir])


def test_data_file_not_utf8(run_dir, capsys):
    (run_dir / "data.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    line = _error_line(capsys, ["train", run_dir / "cfg.yaml"])
    assert line == f"error: {run_dir / 'data.jsonl'}: not UTF-8 text (byte 20); save it as UTF-8"


def test_output_dir_is_a_file(run_dir, capsys):
    line = _error_line(capsys, ["train", run_dir / "cfg.yaml", f"output.dir={run_dir / 'a_file'}"])
    assert (
        line == f"error: output.dir {run_dir / 'a_file'} exists and is a file; choose another path"
    )


def test_merge_and_quantize_output_is_a_file(run_dir, capsys):
    merge = [
        "merge",
        "--model",
        run_dir / "tiny",
        "--adapter",
        run_dir / "adapter",
        "--output",
        run_dir / "a_file",
    ]
    assert "exists and is a file" in _error_line(capsys, merge)
    quantize = ["quantize", "--model", run_dir / "tiny", "--output", run_dir / "a_file"]
    assert "exists and is a file" in _error_line(capsys, quantize)


def test_truncated_adapter(run_dir, capsys):
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    line = _error_line(
        capsys, ["generate", "--model", run_dir / "tiny", "--adapter", run_dir / "adapter", "hi"]
    )
    assert f"{weights} is truncated or not a safetensors file" in line


def test_adapter_config_invalid_json(run_dir, capsys):
    (run_dir / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA",}')
    line = _error_line(
        capsys, ["info", "--model", run_dir / "tiny", "--adapter", run_dir / "adapter"]
    )
    assert "adapter_config.json:1:22: not valid JSON" in line


def test_damaged_classifier_json(run_dir, capsys):
    out = run_dir / "cls"
    out.mkdir()
    cfg = {
        "model": {"name": str(run_dir / "tiny")},
        "data": {"train": str(run_dir / "data.jsonl")},
        "task": {"type": "classify", "mode": "head", "trainable": "head"},
        "output": {"dir": str(out)},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    (out / "classifier.json").write_text('{"labels": ["a", "b"]}')
    line = _error_line(capsys, ["classify", "--run", out, "some text"])
    assert "classifier.json is damaged (KeyError: 'mode'); train the classifier again" in line
