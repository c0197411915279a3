"""AdamW8bit: state quantization round trip, exactness of its fp32 path, loss tracking, bytes, resume."""

import io

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.config.schema import TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.training.optim import build_optimizer
from tunesmith.training.optim8bit import (
    AdamW8bit,
    dequantize_signed,
    dequantize_sqrt,
    optimizer_state_bytes,
    quantize_signed,
    quantize_sqrt,
)


def _spread(n=3000, seed=0):
    # magnitudes log-uniform over six orders of magnitude inside each block, both signs
    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    return sign * 10 ** (-6 * torch.rand(n, generator=gen))


def test_signed_round_trip_has_bounded_relative_error():
    x = _spread().view(30, 100)
    codes, absmax = quantize_signed(x)
    y = dequantize_signed(codes, absmax, x.shape)
    assert codes.dtype == torch.int8 and absmax.numel() == 12  # ceil(3000 / 256) blocks
    assert ((y - x).abs() / x.abs()).max() < 0.07
    assert torch.equal(torch.sign(y), torch.sign(x))
    zeros = torch.zeros(300)
    assert torch.equal(dequantize_signed(*quantize_signed(zeros), zeros.shape), zeros)


def test_sqrt_domain_round_trip_keeps_small_second_moments_positive():
    v = _spread().pow(2)
    v[::7] = 0.0
    codes, absmax = quantize_sqrt(v)
    w = dequantize_sqrt(codes, absmax, v.shape)
    assert codes.dtype == torch.uint8
    nz = v > 0
    assert ((w[nz] - v[nz]).abs() / v[nz]).max() < 0.08
    assert (w > 0).all()  # never rounded to zero: m / (sqrt(v) + eps) stays bounded


def test_fp32_path_equals_torch_adamw_exactly():
    p1 = torch.nn.Parameter(torch.randn(8, 16))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ref = torch.optim.AdamW([p1], lr=1e-2, weight_decay=0.1)
    ours = AdamW8bit([p2], lr=1e-2, weight_decay=0.1)  # 128 values < min_8bit_size: fp32 state
    for _ in range(5):
        g = torch.randn(8, 16)
        p1.grad, p2.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    torch.testing.assert_close(p2, p1, atol=0, rtol=0)


def _train_losses(optimizer_cls, steps=30, **kw):
    model = apply_method(tiny_llama(), LoraConfig(r=8, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer_cls(params, lr=1e-2, **kw)
    ids = (torch.arange(24) * 7 % 13 + 3).repeat(4, 1)  # (4, 24), a learnable periodic sequence
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, opt


def test_loss_tracks_fp32_adamw_and_state_is_smaller():
    torch.manual_seed(0)
    ref, ref_opt = _train_losses(torch.optim.AdamW)
    torch.manual_seed(0)
    ours, opt = _train_losses(AdamW8bit, min_8bit_size=0)  # every tensor in 8 bits
    assert ours[-1] < ours[0] - 0.2  # it learns (LoRA only, on a random tiny model)
    assert max(abs(a - b) / b for a, b in zip(ours, ref)) < 0.01  # and tracks fp32 AdamW
    assert all("exp_avg_codes" in s for s in opt.state.values())
    assert optimizer_state_bytes(opt) < 0.5 * optimizer_state_bytes(ref_opt)


def test_state_bytes_of_a_large_parameter_are_about_a_quarter():
    p = torch.nn.Parameter(torch.randn(64, 256))
    fp32, eight = torch.optim.AdamW([p]), AdamW8bit([p])
    p.grad = torch.randn_like(p)
    fp32.step()
    eight.step()
    assert optimizer_state_bytes(eight) / optimizer_state_bytes(fp32) < 0.26


def test_state_dict_round_trip_resumes_exactly():
    def run(interrupt: bool):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(40, 200))
        opt = AdamW8bit([p], lr=1e-2)
        grads = [torch.randn(40, 200, generator=torch.Generator().manual_seed(i)) for i in range(6)]
        for i, g in enumerate(grads):
            if interrupt and i == 3:
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                opt = AdamW8bit([p], lr=1e-2)
                opt.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
                assert opt.state[p]["exp_avg_codes"].dtype == torch.int8
                assert opt.state[p]["exp_avg_sq_codes"].dtype == torch.uint8
            p.grad = g
            opt.step()
        return p.detach()

    torch.testing.assert_close(run(True), run(False), atol=0, rtol=0)


def test_config_selects_the_optimizer():
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    assert isinstance(build_optimizer(params, TrainConfig(optimizer="adamw8bit")), AdamW8bit)
    assert type(build_optimizer(params, TrainConfig())) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="train.optimizer must be adamw or adamw8bit"):
        TrainConfig(optimizer="sgd")


def test_adamw_on_cpu_parameters_is_the_fused_kernel_with_the_default_update():
    torch.manual_seed(0)
    start = [torch.randn(40, 30), torch.randn(30)]
    grads = [[torch.randn_like(t) * 1e-2 for t in start] for _ in range(4)]

    def trained(make):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return opt, params

    ours, got = trained(lambda ps: build_optimizer(ps, TrainConfig(weight_decay=0.1, lr=1e-2)))
    assert all(group["fused"] for group in ours.param_groups)
    # The default (for-loop) AdamW with the same groups: weight decay on the matrix only.
    _, want = trained(
        lambda ps: torch.optim.AdamW(
            [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}],
            lr=1e-2,
        )
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
