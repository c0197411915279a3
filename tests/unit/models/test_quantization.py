"""Unit tests for tunesmith.models.quantization (tiny tensors and models, CPU only)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.models.quantization import (
    NF4_TABLE,
    QuantizedLinear,
    dequantize_double,
    double_quantize,
    load_quantized,
    nf4_table_from_quantiles,
    pack_nibbles,
    quantize_absmax,
    quantize_model,
    quantize_nf4,
    save_quantized,
    unpack_nibbles,
)

# bitsandbytes backends/utils.py _NF4_QUANT_TABLE (== get_4bit_type("nf4"))
PUBLISHED_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_nf4_table_matches_published_and_quantiles():
    assert NF4_TABLE.tolist() == torch.tensor(PUBLISHED_NF4).tolist()
    assert torch.allclose(nf4_table_from_quantiles(), NF4_TABLE, atol=1e-6, rtol=0)


def test_nf4_codes_of_table_levels():
    idx = torch.randperm(64) % 16  # every level 4 times, shuffled
    q = quantize_nf4(NF4_TABLE[idx] * 2.5, block_size=64, double_quant=False)
    assert torch.equal(unpack_nibbles(q.packed).long(), idx)
    assert q.absmax.tolist() == [2.5]


def test_pack_unpack_round_trip_and_nibble_order():
    assert pack_nibbles(torch.tensor([1, 2, 3, 4])).tolist() == [0x12, 0x34]  # first = high
    codes = torch.randint(0, 16, (130,), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_double_quant_round_trip_bounded():
    absmax = torch.rand(1000) * 3  # 4 blocks of 256, the last one short
    dq = double_quantize(absmax)
    restored = dequantize_double(dq)
    centered = (absmax - absmax.mean()).view(-1)
    bound = torch.cat([c.abs().max().expand(c.numel()) for c in centered.split(256)]) / 254
    assert dq.codes.codes.dtype == torch.int8 and dq.codes.scales.numel() == 4
    assert ((restored - absmax).abs() <= bound + 1e-6).all()
    assert (restored - absmax).abs().max() < 0.01


@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
def test_int8_error_bounded_by_half_step(granularity):
    x = torch.randn(7, 50)
    q = quantize_absmax(x, bits=8, granularity=granularity, block_size=64)
    step = 1.0 / q.scales.repeat_interleave(q.group_size)[: x.numel()].view(7, 50)
    err = (q.dequantize() - x).abs()
    assert q.codes.dtype == torch.int8 and q.codes.shape == x.shape
    assert (err <= 0.5 * step * (1 + 1e-5)).all()


def test_zero_blocks_do_not_divide_by_zero():
    x = torch.zeros(3, 64)
    x[1] = torch.randn(64)
    for q in (quantize_absmax(x, granularity="row"), quantize_nf4(x, double_quant=True)):
        out = q.dequantize()
        assert torch.isfinite(out).all() and out[0].abs().max() == 0 and out[2].abs().max() == 0


def test_nf4_error_between_int4_and_int8():
    w = torch.randn(128, 128)

    def mse(q):
        return ((q.dequantize() - w) ** 2).mean()

    nf4 = mse(quantize_nf4(w, block_size=64, double_quant=False))
    int4 = mse(quantize_absmax(w, bits=4, granularity="block", block_size=64))
    int8 = mse(quantize_absmax(w, bits=8, granularity="block", block_size=64))
    assert int8 < nf4 < int4


def test_unaligned_shapes_are_padded_and_cropped():
    w = torch.randn(5, 37)  # 185 elements: not a multiple of 64
    q = quantize_nf4(w)
    assert q.packed.numel() == 3 * 64 // 2 and q.dequantize().shape == w.shape
    assert (q.dequantize() - w).abs().max() < 0.5 * w.abs().max()


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_quantized_linear_matches_dequantized_weight(scheme, chunk_rows):
    lin = nn.Linear(40, 10)
    q = QuantizedLinear.from_linear(lin, scheme=scheme, chunk_rows=chunk_rows)
    x = torch.randn(2, 3, 40)
    ref = F.linear(x, q.dequantized_weight(), lin.bias)
    assert torch.allclose(q(x), ref, atol=1e-5, rtol=1e-5)
    assert (q.in_features, q.out_features) == (40, 10)


def test_gradient_flows_to_input_only():
    q = QuantizedLinear.from_linear(nn.Linear(16, 8), chunk_rows=3)
    x = torch.randn(4, 16, requires_grad=True)
    q(x).pow(2).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    F.linear(xr, q.dequantized_weight(), q.bias).pow(2).sum().backward()
    assert list(q.parameters()) == [] and not any(b.requires_grad for b in q.buffers())
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)


def test_autocast_bfloat16():
    q = QuantizedLinear.from_linear(nn.Linear(16, 8), chunk_rows=3)
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    ref = F.linear(x.detach(), q.dequantized_weight(), q.bias)
    assert torch.allclose(y.float(), ref, atol=0.1)


def test_nf4_double_quant_bytes_formula():
    n = 1024 * 1024
    q = QuantizedLinear.from_linear(
        nn.Linear(1024, 1024, bias=False), scheme="nf4", double_quant=True, block_size=64
    )
    expected = n // 2 + n // 64 + (n // 64 // 256) * 4 + 4  # codes, int8 absmax, scales, mean
    assert q.weight_bytes() == expected
    assert q.weight_bytes() <= 0.3 * n * 4


class TinyLM(nn.Module):
    """Embedding -> 2-layer MLP -> lm_head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(128, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16, bias=False))
        self.lm_head = nn.Linear(16, 128, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(self.mlp(self.embed(ids)))


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_quantize_model_save_load_round_trip(tmp_path, scheme):
    model = TinyLM()
    report = quantize_model(model, scheme)
    assert report.num_layers == 2 and report.skipped == ["lm_head"]
    assert report.bytes_after < report.bytes_before
    assert isinstance(model.mlp[0], QuantizedLinear) and isinstance(model.lm_head, nn.Linear)
    ids = torch.randint(0, 128, (2, 5))
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    torch.manual_seed(1)
    loaded = load_quantized(TinyLM(), path)
    assert isinstance(loaded.mlp[2], QuantizedLinear)
    assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "fp3"},
        {"block_size": 0},
        {"block_size": -64},
        {"scheme": "int8", "double_quant": True},
        {"block_size": 63},
    ],
)
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError) as info:
        QuantizedLinear.from_linear(nn.Linear(8, 4), **kwargs)
    assert isinstance(info.value, TunesmithError)
    with pytest.raises(TunesmithError):
        quantize_model(nn.Sequential(nn.Linear(8, 4)), **{"scheme": "nf4", **kwargs})
