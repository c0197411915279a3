"""Bad input gives one line naming the file and the fix: data files, config YAML, output paths, adapters."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny import tiny_llama
from tunesmith.config.loader import _read_yaml
from tunesmith.data.readers import read_records
from tunesmith.errors import CheckpointError, ConfigError, DataError
from tunesmith.methods import apply_method
from tunesmith.methods.io import load_adapter, read_adapter_config, save_adapter
from tunesmith.methods.lora import LoraConfig
from tunesmith.utils.paths import ensure_output_dir

LATIN1 = "café".encode("latin-1")  # é is byte 3
JUNK = b"\x89PNG\r\n\x1a\n\x00\x00"  # not UTF-8 from byte 0


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# --- data files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, body, offset",
    [
        ("d.jsonl", b'{"text": "ok"}\n{"text": "' + LATIN1 + b'"}\n', 15 + 10 + 3),
        ("d.json", b'[{"text": "' + LATIN1 + b'"}]', 11 + 3),
        ("d.csv", b"text,label\n" + LATIN1 + b",a\n", 11 + 3),
        ("d.tsv", b"text\tlabel\n" + LATIN1 + b"\ta\n", 11 + 3),
        ("d.txt", LATIN1 + b"\n", 3),
        ("d.jsonl", JUNK, 0),
    ],
)
def test_data_file_not_utf8_names_the_byte(tmp_path, name, body, offset):
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert _one_line(err).startswith(f"{path}: not UTF-8 text (byte {offset})")
    assert body[offset : offset + 1].decode("latin-1") in ("é", "\x89")


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "d.csv").write_bytes("\ufefftext,label\nhi,a\n".encode("utf-8"))
    assert read_records(tmp_path / "d.csv")[0]["text"] == "hi"


def test_jsonl_named_json_suggests_jsonl(tmp_path):
    (tmp_path / "d.json").write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(
        DataError, match=r"d.json:2: not valid JSON \(Extra data\); .*data.file_type: jsonl"
    ):
        read_records(tmp_path / "d.json")


def test_parquet_junk_is_one_line(tmp_path):
    (tmp_path / "d.parquet").write_bytes(JUNK * 10)
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "d.parquet")
    assert "not a readable Parquet file" in _one_line(err)


def test_csv_field_over_the_limit_is_a_data_error(tmp_path):
    (tmp_path / "d.csv").write_text("text\n" + "x" * 200_000 + "\n")
    with pytest.raises(
        DataError, match=r"d.csv:\d+: not valid CSV \(field larger than field limit"
    ):
        read_records(tmp_path / "d.csv")


# --- config YAML ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "model:\n  name: x\ntrain: lr: 1\n",
            ":3:10: not valid YAML: mapping values are not allowed here",
        ),
        (
            "model:\n  name: 'abc\n",
            (
                ":3:1: not valid YAML: found unexpected end of stream (while scanning a "
                "quoted scalar that starts at line 2, column 9)"
            ),
        ),
        (
            "model:\n\tname: x\n",
            ":2:1: not valid YAML: found character '\\t' that cannot start any token",
        ),
        ("train: [1, 2\nmodel: 3\n", ":2:6: not valid YAML: expected ',' or ']', but got ':'"),
        ("a: \x01\n", ": not valid YAML: character #x0001 (at character 3) is not allowed"),
    ],
)
def test_yaml_syntax_error_is_file_line_column_problem(tmp_path, body, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        _read_yaml(str(path))
    assert _one_line(err).startswith(f"{path}{expected}")


def test_yaml_tabs_suggest_spaces(tmp_path):
    (tmp_path / "cfg.yaml").write_text("model:\n\tname: x\n")
    with pytest.raises(ConfigError, match="indent with spaces, not tabs"):
        _read_yaml(str(tmp_path / "cfg.yaml"))


def test_yaml_not_utf8_or_a_directory(tmp_path):
    (tmp_path / "cfg.yaml").write_bytes(b"model:\n  name: " + LATIN1 + b"\n")
    with pytest.raises(ConfigError) as err:
        _read_yaml(str(tmp_path / "cfg.yaml"))
    assert _one_line(err) == f"{tmp_path / 'cfg.yaml'}: not UTF-8 text (byte 18); save it as UTF-8"
    with pytest.raises(ConfigError, match="is a directory; give the YAML file inside it"):
        _read_yaml(str(tmp_path))


# --- output paths -----------------------------------------------------------------------------


def test_output_dir_is_created(tmp_path):
    assert ensure_output_dir(tmp_path / "a" / "b", "output.dir").is_dir()
    assert ensure_output_dir(tmp_path / "a" / "b", "output.dir").is_dir()  # existing is fine


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(ConfigError) as err:
        ensure_output_dir(tmp_path / "x", "output.dir")
    assert (
        _one_line(err) == f"output.dir {tmp_path / 'x'} exists and is a file; choose another path"
    )
    with pytest.raises(ConfigError, match=r"output.dir .*x/y/z: .*x is a file, not a directory"):
        ensure_output_dir(tmp_path / "x" / "y" / "z", "output.dir")


def test_output_dir_not_writable(tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod does not deny anything: simulate the OS's answers.
    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(
        ConfigError, match=r"^output.dir /root/x is not writable \(Permission denied\)"
    ):
        ensure_output_dir("/root/x", "output.dir")
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(ConfigError, match=r"--output .* is not writable \(Permission denied\)"):
        ensure_output_dir(tmp_path, "--output")


def test_quantize_and_merge_refuse_a_file_output_before_loading(tmp_path):
    from tunesmith.api import merge_to_directory, quantize_to_directory

    (tmp_path / "out").write_text("")
    with pytest.raises(ConfigError, match="exists and is a file"):
        quantize_to_directory("/nonexistent/model", "nf4", str(tmp_path / "out"))
    adapter = _saved_adapter(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="exists and is a file"):
        merge_to_directory("/nonexistent/model", str(adapter), str(tmp_path / "out"))


# --- adapters ---------------------------------------------------------------------------------


def _saved_adapter(path, r=4, **model_sizes):
    model = apply_method(
        tiny_llama(**model_sizes), LoraConfig(r=r, alpha=8, target_modules=["q_proj", "v_proj"])
    )
    return save_adapter(model, path, base_model="tiny")


def _load_error(adapter, model=None) -> str:
    with pytest.raises(CheckpointError) as err:
        load_adapter(model or tiny_llama(), adapter)
    return _one_line(err)


@pytest.fixture
def adapter(tmp_path):
    return _saved_adapter(tmp_path / "adapter")


def _edit_config(adapter, **changes):
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_weights(adapter, edit):
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    edit(tensors)
    save_file(tensors, str(weights))


def test_adapter_round_trip_still_loads(adapter):
    """The checks refuse only what is broken: a good adapter loads with its saved tensors."""
    from tunesmith.methods.io import adapter_state_dict

    model = tiny_llama()
    load_adapter(model, adapter)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    loaded = adapter_state_dict(model)
    assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_adapter_directory_missing_or_a_file(tmp_path, adapter):
    assert "does not exist: adapter_config.json is missing" in _load_error(tmp_path / "nope")
    assert f"is a file; give its directory ({adapter})" in _load_error(
        adapter / "adapter_config.json"
    )
    (tmp_path / "empty").mkdir()
    assert "not an adapter directory: adapter_config.json is missing" in _load_error(
        tmp_path / "empty"
    )


def test_adapter_config_invalid_json_names_line_and_column(adapter):
    (adapter / "adapter_config.json").write_text('{\n  "peft_type": "LORA",\n  "r": 4,,\n}')
    with pytest.raises(CheckpointError) as err:
        read_adapter_config(adapter)
    assert _one_line(err).startswith(
        f"{adapter / 'adapter_config.json'}:3:10: not valid JSON (Expecting"
    )


def test_adapter_config_not_utf8(adapter):
    (adapter / "adapter_config.json").write_bytes(b'{"peft_type": "' + LATIN1 + b'"}')
    assert "adapter_config.json: not UTF-8 text (byte 18)" in _load_error(adapter)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"peft_type": None}, "has no peft_type"),
        (
            {"peft_type": "NOPE"},
            "adapter_config.json: adapter type 'NOPE' is not supported; supported: ",
        ),
    ],
)
def test_adapter_config_peft_type(adapter, changes, fragment):
    _edit_config(adapter, **changes)
    assert fragment in _load_error(adapter)


def test_adapter_config_missing_key_and_unknown_targets(adapter):
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    del cfg["r"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert "adapter_config.json: LORA setting 'r' is missing" in _load_error(adapter)
    _edit_config(adapter, r=4, target_modules=["nope_proj"])
    assert "adapter_config.json does not fit this model: " in _load_error(adapter)


@pytest.mark.parametrize(
    "cut, fragment",
    [
        (None, "adapter_model.safetensors is missing"),
        (0, "adapter_model.safetensors is empty (0 bytes)"),
        (100, "adapter_model.safetensors is truncated or not a safetensors file (100 bytes: "),
        (4, "adapter_model.safetensors is truncated or not a safetensors file (4 bytes: "),
    ],
)
def test_adapter_weights_missing_empty_or_truncated(adapter, cut, fragment):
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.unlink() if cut is None else weights.write_bytes(data[:cut])
    message = _load_error(adapter)
    assert fragment in message and (cut is None or "save or copy the adapter again" in message)


def test_adapter_tensor_missing_or_unexpected(adapter):
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _edit_weights(adapter, lambda t: t.pop(key))
    assert (
        f"has no tensor {key}: its adapter_config.json names other target_modules"
        in _load_error(adapter)
    )
    _edit_weights(
        adapter,
        lambda t: t.update(
            {key: torch.zeros(8, 4), "base_model.model.extra.weight": torch.zeros(2)}
        ),
    )
    assert (
        "has tensor base_model.model.extra.weight that this model has no place for (1 such tensors)"
        in _load_error(adapter)
    )


def test_adapter_rank_that_does_not_match_its_config(adapter):
    _edit_config(adapter, r=8)
    message = _load_error(adapter)
    assert "lora_A.weight has shape (4, 16), this model needs (8, 16)" in message
    assert "the weights have rank 4 but adapter_config.json says r=8; set r to 4" in message


def test_adapter_trained_on_another_hidden_size(tmp_path):
    adapter = _saved_adapter(tmp_path / "big", hidden_size=32, intermediate_size=64)
    message = _load_error(adapter)
    assert "q_proj.lora_A.weight has shape (4, 32), this model needs (4, 16)" in message
    assert (
        "made for a different base model (this model has hidden_size 16); load it on tiny"
        in message
    )


def test_adapter_tensor_not_float_or_not_finite(adapter):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _edit_weights(adapter, lambda t: t.update({key: t[key].to(torch.int64)}))
    assert f"tensor {key} is int64, adapter weights are floating point" in _load_error(adapter)
    _edit_weights(adapter, lambda t: t.update({key: torch.full((4, 16), float("nan"))}))
    assert f"tensor {key} holds NaN or inf values" in _load_error(adapter)


def test_table_spec_yaml_error_is_one_line(tmp_path):
    from tunesmith.recipes.table import read_spec

    (tmp_path / "spec.yaml").write_text("config: a.yaml\nrows: - x\n")
    with pytest.raises(ConfigError) as err:
        read_spec(str(tmp_path / "spec.yaml"))
    assert _one_line(err).startswith(f"{tmp_path / 'spec.yaml'}:2:")
    (tmp_path / "spec.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a table spec is a mapping"):
        read_spec(str(tmp_path / "spec.yaml"))


# --- base model directories -------------------------------------------------------------------


def test_model_dir_with_truncated_weights_or_broken_files(tmp_path):
    from tests.tiny import save_tiny_model
    from tunesmith.errors import ModelLoadError
    from tunesmith.models import load_base_model

    model_dir = save_tiny_model(tmp_path / "m")
    weights, config = model_dir / "model.safetensors", (model_dir / "config.json").read_text()
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(
        ModelLoadError, match="the weights cannot be read .*; copy or download the model again"
    ):
        load_base_model(str(model_dir))
    (model_dir / "config.json").write_text(config[:-5])
    with pytest.raises(ModelLoadError, match="config.json cannot be read"):
        load_base_model(str(model_dir))
    save_tiny_model(model_dir)
    (model_dir / "tokenizer.json").write_text("{")
    with pytest.raises(ModelLoadError, match="the tokenizer cannot be read"):
        load_base_model(str(model_dir))
