"""Bottleneck adapter specifics: placements, the forward equations, init and refusals."""

import pytest
import torch
from torch import nn

from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama
from tunesmith.errors import ConfigError, UnsupportedModuleError
from tunesmith.methods import apply_method, merge_adapters
from tunesmith.methods.adapter import AdapterConfig, BottleneckAdapter
from tunesmith.utils.modules import count_parameters


def _wrapped(model):
    return {n: m.mode for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)}


def _randomise_up(layer):
    # Training would move `up` away from zero; do it by hand to test the forward equation.
    with torch.no_grad():
        layer.adapter_up["default"].weight.normal_()
        layer.adapter_up["default"].bias.normal_()


def _adapt(layer, h):
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    return layer.scaling["default"] * up(torch.relu(down(h)))


def test_placements_wrap_the_expected_modules():
    assert _wrapped(
        apply_method(tiny_gpt2(), AdapterConfig(placement="houlsby", reduction_factor=4))
    ) == {f"transformer.h.{i}.{m}.c_proj": "serial" for i in range(2) for m in ("attn", "mlp")}
    assert _wrapped(
        apply_method(tiny_llama(), AdapterConfig(placement="pfeiffer", reduction_factor=4))
    ) == {f"model.layers.{i}.mlp.down_proj": "serial" for i in range(2)}
    assert _wrapped(
        apply_method(tiny_bert(), AdapterConfig(placement="parallel", reduction_factor=4))
    ) == {f"bert.encoder.layer.{i}.output": "residual" for i in range(2)}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_bert])
def test_houlsby_has_twice_the_parameters_of_pfeiffer(build):
    houlsby = count_parameters(
        apply_method(build(), AdapterConfig(placement="houlsby", reduction_factor=4))
    )[0]
    pfeiffer = count_parameters(
        apply_method(build(), AdapterConfig(placement="pfeiffer", reduction_factor=4))
    )[0]
    h, b = 16, 4
    assert pfeiffer == 2 * (2 * h * b + b + h) and houlsby == 2 * pfeiffer  # 2 layers


def test_near_identity_init():
    layer = (
        apply_method(tiny_llama(), AdapterConfig(init_std=1e-2, reduction_factor=4))
        .model.layers[0]
        .mlp.down_proj
    )
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    assert torch.all(up.weight == 0) and torch.all(up.bias == 0) and torch.all(down.bias == 0)
    assert 0 < down.weight.abs().max() <= 2e-2  # truncated at 2 std


def test_serial_and_parallel_equations():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16)
    gpt2 = apply_method(tiny_gpt2(), AdapterConfig(placement="pfeiffer", reduction_factor=4))
    serial = gpt2.transformer.h[0].mlp.c_proj
    _randomise_up(serial)
    h = torch.randn(2, 3, 64)
    y = serial.base_layer(h)
    torch.testing.assert_close(serial(h), y + _adapt(serial, y))
    llama = apply_method(
        tiny_llama(), AdapterConfig(placement="parallel", reduction_factor=4, scaling=4.0)
    )
    parallel = llama.model.layers[0].mlp
    _randomise_up(parallel)
    torch.testing.assert_close(parallel(x), parallel.base_layer(x) + _adapt(parallel, x))


def test_bert_parallel_adapter_joins_before_the_layer_norm():
    torch.manual_seed(0)
    bert = apply_method(tiny_bert(), AdapterConfig(placement="parallel", reduction_factor=4))
    layer = bert.bert.encoder.layer[0].output
    _randomise_up(layer)
    inner, x = torch.randn(2, 3, 32), torch.randn(2, 3, 16)  # (B, T, intermediate), (B, T, hidden)
    expected = layer.base_layer.LayerNorm(layer.base_layer.dense(inner) + x + _adapt(layer, x))
    torch.testing.assert_close(layer(inner, x), expected)


def test_refusals():
    with pytest.raises(ConfigError, match="no bottleneck"):
        apply_method(tiny_llama(), AdapterConfig(reduction_factor=32))
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge_adapters(apply_method(tiny_llama(), AdapterConfig(reduction_factor=4)))
    with pytest.raises(ConfigError, match="placement"):
        AdapterConfig(placement="middle")
    model = nn.Sequential(nn.Linear(4, 4))
    model.config = tiny_llama().config
    with pytest.raises(UnsupportedModuleError, match="Sequential"):
        apply_method(model, AdapterConfig(reduction_factor=4))
