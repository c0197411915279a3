"""Int8 and int4 weight-only linear layers for decoding: the kernel equals the dequantized matmul, the
rounding stays within half a step, and a quantized model keeps its greedy tokens close."""

import pytest
import torch
from torch import nn

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.models.weight_only import Int4WeightLinear, Int8WeightLinear, quantize_for_decoding


def _linear(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(24, 40, bias=bias)


def _int4_linear(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(64, 32, bias=bias)  # in: two groups of 32; out: a multiple of 16


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "layer, make", [(Int8WeightLinear, _linear), (Int4WeightLinear, _int4_linear)]
)
def test_output_equals_the_dequantized_weight_matmul(layer, make, bias):
    linear = make(bias=bias)
    q = layer(linear, torch.float32)
    x = torch.randn(3, 5, linear.in_features)
    expected = x @ q.dequantized_weight().T + (linear.bias.detach() if bias else 0)
    assert q(x).shape == (3, 5, linear.out_features)
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


def test_int4_rounding_is_at_most_half_a_group_step():
    linear = _int4_linear()
    w = linear.weight.detach()
    groups = w.view(32, 2, 32)
    step = (groups.amax(dim=2) - groups.amin(dim=2)) / 15  # (out, groups)
    error = (Int4WeightLinear(linear, torch.float32).dequantized_weight() - w).view(32, 2, 32)
    assert (error.abs() <= step[..., None] / 2 + 1e-6).all()


def test_int4_weights_that_are_on_the_grid_come_back_exactly():
    # Q4_1-style weights (step * q + minimum per group of 32), as the embedded file stores them.
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (32, 2, 32), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans the grid, as Q4_1's own rounding makes it
    step, low = torch.rand(32, 2, 1, generator=gen) / 8, torch.randn(32, 2, 1, generator=gen)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_((q * step + low).view(32, 64))
    back = Int4WeightLinear(linear, torch.float32).dequantized_weight()
    torch.testing.assert_close(back, linear.weight.detach(), atol=1e-6, rtol=1e-6)


def test_bits_4_keeps_the_output_head_and_odd_shapes_int8():
    model = tiny_llama(hidden_size=32, intermediate_size=48)  # 48 inputs: not whole groups
    quantize_for_decoding(model, torch.float32, bits=4)
    block = model.model.layers[0]
    assert type(block.self_attn.q_proj) is Int4WeightLinear
    assert type(block.mlp.down_proj) is Int8WeightLinear  # in_features 48
    assert type(model.lm_head) is Int8WeightLinear


@pytest.mark.parametrize("bits", [8, 4])
def test_bf16_kernel_activations_in_an_fp32_model_return_fp32_close_to_the_fp32_kernel(bits):
    # How serving runs the int kernels on CPUs without native bf16 (fp32 activations are ~10x
    # slower there): casts at each layer, the rest of the model in fp32.
    fp32, mixed = (tiny_llama(hidden_size=32, intermediate_size=64) for _ in range(2))
    quantize_for_decoding(fp32, torch.float32, bits)
    quantize_for_decoding(mixed, torch.float32, bits, kernel_dtype=torch.bfloat16)
    assert mixed.lm_head.scale.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in mixed.parameters())  # embeddings, norms
    ids = torch.tensor([[3, 7, 11, 5]])
    with torch.no_grad():
        want, got = fp32(ids).logits, mixed(ids).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0.05 * float(want.abs().max()), rtol=0)
