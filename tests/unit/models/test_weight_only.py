"""Int8 weight-only linear layers for decoding: the kernel equals the dequantized matmul, the
rounding stays within half a step, and a quantized model keeps its greedy tokens close."""

import pytest
import torch
from torch import nn

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.models.weight_only import Int8WeightLinear, quantize_for_decoding


def _linear(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(24, 40, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_output_equals_the_dequantized_weight_matmul(bias):
    linear = _linear(bias=bias)
    q = Int8WeightLinear(linear, torch.float32)
    x = torch.randn(3, 5, 24)
    expected = x @ q.dequantized_weight().T + (linear.bias.detach() if bias else 0)
    assert q(x).shape == (3, 5, 40)
    assert (q(x) - expected).abs().max() < 1e-5


def test_rounding_is_at_most_half_a_step_per_weight():
    linear = _linear()
    q = Int8WeightLinear(linear, torch.float32)
    step = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    error = (q.dequantized_weight() - linear.weight.detach()).abs()
    assert (error <= step / 2 + 1e-7).all()
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127


def test_a_quantized_model_replaces_every_linear_and_stays_close():
    model, reference = tiny_llama(), tiny_llama()
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert quantize_for_decoding(model, torch.float32) == linears
    assert not any(type(m) is nn.Linear for m in model.modules())
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = reference(input_ids=ids).logits, model(input_ids=ids).logits
    assert (a - b).abs().max() < 0.02 * a.abs().max()


def test_merging_into_an_int8_layer_is_refused_with_the_fix():
    q = Int8WeightLinear(_linear(), torch.float32)
    with pytest.raises(ConfigError, match="tunesmith merge"):
        q.set_weight(torch.zeros(40, 24))
