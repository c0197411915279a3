"""Adapters of different methods active at once (stacking) equal applying each in turn."""

import copy
import io

import pytest
import torch

from tests.tiny import save_tiny_model, tiny_llama
from tunesmith import load_model
from tunesmith.cli.main import main
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method, set_active_adapters
from tunesmith.methods.base import adapter_layers
from tunesmith.methods.io import save_adapter
from tunesmith.methods.lora import LoraConfig, LoraLinear
from tunesmith.methods.prompt_tuning import PromptTuningConfig

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8]])
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def _randomize(model, name, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            if name in layer.adapter_names:
                for p in layer.adapter_parameters(name).values():
                    p.copy_(0.5 * torch.randn_like(p))


def _stacked(base):
    model = copy.deepcopy(base)
    apply_method(model, PromptTuningConfig(num_virtual_tokens=3), "prompt")
    _randomize(model, "prompt", 1)
    apply_method(model, LORA, "lora")
    _randomize(model, "lora", 2)
    set_active_adapters(model, ["prompt", "lora"])
    return model


def test_prompt_tuning_plus_lora_equals_prompt_tuning_on_the_lora_updated_weights():
    base = tiny_llama()
    stacked = _stacked(base)
    # the reference: W0 + s * B @ A written into a plain copy, then the same virtual tokens
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for path, layer in adapter_layers(stacked):
            if isinstance(layer, LoraLinear):
                reference.get_submodule(path).weight += layer.delta_weight("lora")
    apply_method(reference, PromptTuningConfig(num_virtual_tokens=3), "prompt")
    prompt_layer = next(
        layer for _, layer in adapter_layers(stacked) if "prompt" in layer.adapter_names
    )
    with torch.no_grad():
        for _, layer in adapter_layers(reference):
            for key, p in layer.adapter_parameters("prompt").items():
                p.copy_(prompt_layer.adapter_parameters("prompt")[key])
    expected = _logits(reference)
    assert (expected - _logits(base)).abs().max() > 1e-3
    for alone in (["prompt"], ["lora"]):  # each alone differs: both take part
        set_active_adapters(stacked, alone)
        assert (_logits(stacked) - expected).abs().max() > 1e-3
    set_active_adapters(stacked, ["prompt", "lora"])
    assert (_logits(stacked) - expected).abs().max().item() <= 1e-5


def test_two_prompt_adapters_cannot_be_active_at_once():
    model = _stacked(tiny_llama())
    apply_method(model, PromptTuningConfig(num_virtual_tokens=2), "prompt2")
    with pytest.raises(ConfigError, match="runs 1 at a time"):
        set_active_adapters(model, ["prompt", "prompt2", "lora"])
    with pytest.raises(ConfigError, match="no adapter named nope"):
        set_active_adapters(model, ["nope"])


def test_load_model_and_generate_stack_saved_adapters(tmp_path, capsys, monkeypatch):
    model_dir = save_tiny_model(tmp_path / "tiny")
    base, _ = load_model(str(model_dir))
    stacked = _stacked(base)
    save_adapter(stacked, tmp_path / "p", "prompt")
    save_adapter(stacked, tmp_path / "l", "lora")
    loaded, _ = load_model(str(model_dir), adapter=[str(tmp_path / "p"), str(tmp_path / "l")])
    assert (_logits(loaded) - _logits(stacked)).abs().max().item() <= 1e-5
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    args = ["generate", "--model", str(model_dir), "--adapter", str(tmp_path / "p")]
    assert main([*args, "--adapter", str(tmp_path / "l"), "--max-new-tokens", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
