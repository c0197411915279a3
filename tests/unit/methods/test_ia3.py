"""(IA)^3 specifics the matrix does not cover: defaults, config checks, roles, exact unmerge."""

import copy

import pytest
import torch

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.config.loader import build_config
from tunesmith.errors import ConfigError
from tunesmith.methods import (
    adapter_configs,
    apply_method,
    config_classes,
    merge_adapters,
    unmerge_adapters,
)
from tunesmith.methods.ia3 import Ia3Config, Ia3Linear

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def _roles(model):
    return {
        name.split(".")[-1]: m.is_feedforward
        for name, m in model.named_modules()
        if isinstance(m, Ia3Linear)
    }


def test_defaults_follow_the_architecture():
    assert _roles(apply_method(tiny_llama(), Ia3Config())) == {
        "k_proj": False,
        "v_proj": False,
        "down_proj": True,
    }
    gpt2 = apply_method(tiny_gpt2(), Ia3Config())
    assert _roles(gpt2) == {"c_attn": False, "c_proj": True}
    assert not isinstance(gpt2.transformer.h[0].attn.c_proj, Ia3Linear)  # only mlp.c_proj
    saved = adapter_configs(gpt2)["default"]  # the resolved config is what gets saved
    assert saved.target_modules == ["c_attn", "mlp.c_proj"] and saved.feedforward_modules == [
        "mlp.c_proj"
    ]


def test_explicit_targets_keep_only_feedforward_defaults_among_them():
    model = apply_method(tiny_llama(), Ia3Config(target_modules=["k_proj", "v_proj"]))
    assert adapter_configs(model)["default"].feedforward_modules == []
    assert _roles(model) == {"k_proj": False, "v_proj": False}


def test_feedforward_must_be_among_targets():
    with pytest.raises(ConfigError, match="subset"):
        Ia3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])


def test_unknown_architecture_needs_explicit_modules():
    model = tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="method.target_modules is not set"):
        apply_method(model, Ia3Config())


def test_built_from_yaml_mapping():
    cfg = build_config({"method": {"name": "ia3", "target_modules": ["v_proj"]}}, config_classes())
    assert isinstance(cfg.method, Ia3Config) and cfg.method.feedforward_modules is None


def test_unmerge_restores_weights_even_with_zero_entries():
    model = apply_method(tiny_gpt2(), Ia3Config())
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Ia3Linear):
                m.ia3_l["default"].uniform_(0.5, 1.5)
                m.ia3_l["default"].view(-1)[0] = 0.0  # division cannot undo this one
    out = _logits(model)
    merge_adapters(model)
    torch.testing.assert_close(_logits(model), out, atol=1e-5, rtol=0)
    unmerge_adapters(model)
    for key, value in model.state_dict().items():
        if "ia3_l" not in key:
            torch.testing.assert_close(value, before[key], atol=1e-6, rtol=1e-6)
