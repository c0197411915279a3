"""LoRA variants beyond the matrix: config mapping to PEFT keys, PiSSA's single-adapter rule and
the restoration of W0 when a PiSSA adapter is disabled, inactive or deleted."""

import copy

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method, set_active_adapter
from tunesmith.methods.base import disabled_adapters
from tunesmith.methods.lora import LoraConfig
from tunesmith.methods.lora.config import from_peft_config, to_peft_config

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def _trained_pissa(model, targets=("q_proj", "v_proj")):
    apply_method(model, LoraConfig(r=2, init="pissa", target_modules=list(targets)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(
    "cfg",
    [
        LoraConfig(use_dora=True),
        LoraConfig(init="pissa", use_rslora=True),
        LoraConfig(init="gaussian"),
    ],
)
def test_peft_config_round_trip(cfg):
    assert from_peft_config(to_peft_config(cfg)) == cfg


def test_peft_init_values():
    d = to_peft_config(LoraConfig())
    assert d["init_lora_weights"] is True and d["use_dora"] is False
    assert from_peft_config({**d, "init_lora_weights": False}).init == "default"
    with pytest.raises(ConfigError, match="olora"):
        from_peft_config({**d, "init_lora_weights": "olora"})
    with pytest.raises(ConfigError, match="method.init"):
        LoraConfig(init="svd")


def test_pissa_cannot_share_a_layer():
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="PiSSA"):
        apply_method(model, LoraConfig(r=2, init="pissa", target_modules=["q_proj"]), "p")
    pissa = apply_method(tiny_llama(), LoraConfig(r=2, init="pissa", target_modules=["q_proj"]))
    weights = copy.deepcopy(pissa.state_dict())
    with pytest.raises(ConfigError, match="PiSSA"):
        apply_method(pissa, LoraConfig(r=2, target_modules=["v_proj", "q_proj"]), "other")
    assert all(torch.equal(v, weights[k]) for k, v in pissa.state_dict().items())  # nothing changed


def test_pissa_rank_above_layer_rank():
    with pytest.raises(ConfigError, match="exceeds"):
        apply_method(
            tiny_llama(), LoraConfig(r=9, init="pissa", target_modules=["k_proj"])
        )  # k_proj: 8 x 16


def test_inactive_or_disabled_pissa_gives_the_original_model():
    base = tiny_llama()
    model = _trained_pissa(copy.deepcopy(base))
    apply_method(model, LoraConfig(r=2, target_modules=["o_proj"]), "other")  # other layers only
    with disabled_adapters(model):
        torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)
    set_active_adapter(model, "other")  # B = 0: the output is W0's
    torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)


def test_deleting_pissa_puts_w0_back():
    base = tiny_llama()
    model = _trained_pissa(copy.deepcopy(base))
    layer = model.model.layers[0].self_attn.q_proj
    layer.delete_adapter("default")
    torch.testing.assert_close(
        layer.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight, atol=1e-6, rtol=0
    )


def test_re_adding_a_pissa_adapter_starts_from_w0_again():
    base = tiny_llama()
    model = _trained_pissa(copy.deepcopy(base))
    apply_method(
        model, LoraConfig(r=2, use_dora=True, target_modules=["q_proj", "v_proj"])
    )  # same name
    layer = model.model.layers[0].self_attn.q_proj
    assert not layer.pissa_init and "default" in layer.lora_magnitude_vector
    torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)
