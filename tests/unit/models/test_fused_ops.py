"""Fused RMSNorm and SwiGLU: the same forward as transformers' modules (bit for bit), gradients
equal to autograd through the eager ops, less saved for the backward, and fused only where a
module matches."""

import copy

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.models.fused_ops import RMSNormFunction, SwiGLUFunction, fuse_modules


def _grads(fn, *inputs, wrt=()):
    out = fn(*inputs)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)
    leaves = [t for t in inputs if t.requires_grad] + list(wrt)
    return out.detach(), torch.autograd.grad((out * weights).sum(), leaves)


def _leaf(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype).requires_grad_(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers(dtype):
    norm = LlamaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    norm.to(dtype)
    x = _leaf(3, 5, 16, dtype=dtype)
    expected, (gx, gw) = _grads(norm, x, wrt=[norm.weight])
    w2 = norm.weight.detach().clone().requires_grad_(True)
    got, (fx, fw) = _grads(lambda a, b: RMSNormFunction.apply(a, b, 1e-6), x, w2)
    assert torch.equal(expected, got)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fx, gx, **tol)
    torch.testing.assert_close(fw, gw, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_matches_autograd_through_the_eager_ops(dtype):
    gate, up = _leaf(4, 7, 12, dtype=dtype, seed=1), _leaf(4, 7, 12, dtype=dtype, seed=2)
    expected, eager_grads = _grads(lambda g, u: nn.functional.silu(g) * u, gate, up)
    gate2, up2 = (t.detach().clone().requires_grad_(True) for t in (gate, up))
    got, fused_grads = _grads(SwiGLUFunction.apply, gate2, up2)
    assert torch.equal(expected, got)
    for a, b in zip(fused_grads, eager_grads):
        assert torch.equal(a, b)  # the same ops in the same order


def test_fused_tiny_llama_equals_the_unfused_one_and_saves_less():
    plain = tiny_llama()
    fused = copy.deepcopy(plain)
    # two blocks x (two norms + MLP) + the final norm
    assert fuse_modules(fused) == 7
    assert type(fused.model.norm).__name__ == "LlamaRMSNorm"
    assert isinstance(fused.model.layers[0].mlp, LlamaMLP)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    saved = {}
    for name, model in (("plain", plain), ("fused", fused)):
        model.train()
        total, seen = [0], {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t, total=total, seen=seen):  # activations only: each storage once, no weights
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total[0] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(input_ids=ids).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        saved[name] = (logits.detach(), total[0])
    assert torch.equal(saved["plain"][0], saved["fused"][0])
    assert saved["fused"][1] < 0.8 * saved["plain"][1]
    for (name, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    copy.deepcopy(fused)  # a fused model copies like any other


class GemmaStyleRMSNorm(nn.Module):
    """Another RMSNorm form: scales by (1 + weight); the probe must leave it alone."""

    def __init__(self, dim):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.full((dim,), 0.1)), 1e-6

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def test_only_matching_modules_are_fused():
    other = nn.Sequential(GemmaStyleRMSNorm(8))
    assert fuse_modules(other) == 0 and type(other[0]) is GemmaStyleRMSNorm
    assert fuse_modules(tiny_gpt2()) == 0  # LayerNorm and a GELU MLP: nothing of ours
    assert fuse_modules(tiny_llama(), "none") == 0
    with pytest.raises(ConfigError, match="fused_ops"):
        fuse_modules(tiny_llama(), "always")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_gradients_the_fused_model_gives_the_same_logits(dtype):
    # Decoding and evaluation skip the autograd Functions: the same ops, so bit-equal output.
    plain = tiny_llama().to(dtype)
    fused = copy.deepcopy(plain)
    fuse_modules(fused)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
