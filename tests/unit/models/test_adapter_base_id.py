"""base_model_name_or_path of saved adapters: the embedded model's Hub id for 'default', and that
id loading the embedded files again when the HF cache does not hold it."""

import json

import pytest
import torch

from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.methods import apply_method
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.lora import LoraConfig
from tunesmith.models import load_base_model
from tunesmith.models.loading import DEFAULT_HUB_ID, DEFAULT_NAME, model_id_for_adapter


@pytest.fixture
def embedded(cache_dir):
    """A tiny model standing in for the embedded one, where default_model_dir() finds it converted."""
    return save_tiny_model(cache_dir / "models" / DEFAULT_NAME, tiny_llama(seed=1))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty local HF cache; returns a function that puts a model under a repo id into it."""
    root = tmp_path / "hub"
    root.mkdir()
    for target in ("huggingface_hub.constants.HF_HUB_CACHE", "transformers.utils.hub.HF_HUB_CACHE"):
        monkeypatch.setattr(target, str(root), raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))

    def put(repo_id, model):
        repo = root / f"models--{repo_id.replace('/', '--')}"
        save_tiny_model(repo / "snapshots" / "abc123", model)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")

    return put


def test_model_id_for_adapter_names_the_embedded_model_and_keeps_the_rest():
    assert (
        model_id_for_adapter("default") == DEFAULT_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    for name in ("runs/base", "/abs/base", "./base", "m.gguf", "acme/tiny"):
        assert model_id_for_adapter(name) == name
    assert model_id_for_adapter(None) is None


@pytest.mark.parametrize(
    "base, recorded", [("default", DEFAULT_HUB_ID), ("models/mine", "models/mine"), (None, None)]
)
def test_saved_adapter_records_the_base_model(llama, tmp_path, base, recorded):
    model = apply_method(llama, LoraConfig(r=2, target_modules=["q_proj"]))
    out = save_adapter(model, tmp_path / "a", base_model=base)
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == recorded
    )


def test_embedded_hub_id_loads_the_embedded_files_when_not_in_the_hf_cache(embedded, hub):
    model, _ = load_base_model(DEFAULT_HUB_ID)
    want, _ = load_base_model("default")
    torch.testing.assert_close(model.lm_head.weight, want.lm_head.weight)


def test_embedded_hub_id_in_the_hf_cache_loads_from_there(embedded, hub):
    hub(
        DEFAULT_HUB_ID,
        tiny_llama(seed=2, hidden_size=8, num_attention_heads=2, num_key_value_heads=1),
    )
    model, _ = load_base_model(DEFAULT_HUB_ID)
    assert model.config.hidden_size == 8  # the cached Hub model, not the embedded one (16)


@pytest.mark.parametrize("recorded", ["default", DEFAULT_HUB_ID])
def test_own_adapter_loads_on_the_base_its_config_names(embedded, hub, tmp_path, recorded):
    base, _ = load_base_model("default")
    trained = apply_method(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for p in trained.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    out = save_adapter(trained, tmp_path / "a", base_model="default")
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = (
        recorded  # as older adapters ("default") or newer ones wrote it
    )
    (out / "adapter_config.json").write_text(json.dumps(config))
    model, _ = load_base_model(config["base_model_name_or_path"])
    load_adapter(model, out)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model(input_ids=ids).logits, trained(input_ids=ids).logits)
