"""The CPU attention: equal to transformers' SDPA path in outputs and gradients, for grouped heads,
padding, causal and bidirectional rows, packed rows and decoding; SDPA above the size budget."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.models import attention
from tunesmith.models.attention import cpu_attention_forward, set_attention


class _Layer(torch.nn.Module):
    def __init__(self, groups: int, causal: bool = True):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def _inputs(batch=2, heads=6, kv_heads=2, q_len=11, kv_len=11, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g, requires_grad=True)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=g, requires_grad=True)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=g, requires_grad=True)
    return q, k, v


def _padded_causal_mask(batch, length, pad_last: int):
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[-1, length - pad_last :] = False
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None] & keep[:, None, None]


def _run(fn, layer, q, k, v, mask):
    out, _ = fn(layer, q, k, v, mask, scaling=q.shape[-1] ** -0.5)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return [out.detach()] + grads


@pytest.mark.parametrize(
    "case",
    ["causal", "padded", "bidirectional", "bidirectional-padded", "decode", "no-groups"],
)
def test_outputs_and_gradients_equal_sdpa(case):
    q_len = 1 if case == "decode" else 11
    heads, kv_heads = (4, 4) if case == "no-groups" else (6, 2)
    q, k, v = _inputs(heads=heads, kv_heads=kv_heads, q_len=q_len)
    causal = not case.startswith("bidirectional")
    mask = None
    if case == "padded":
        mask = _padded_causal_mask(2, 11, pad_last=4)
    if case == "bidirectional-padded":
        keep = torch.ones(2, 11, dtype=torch.bool)
        keep[1, -3:] = False
        mask = keep[:, None, None, :].expand(2, 1, 11, 11)
    layer = _Layer(heads // kv_heads, causal)
    ours = _run(cpu_attention_forward, layer, q, k, v, mask)
    reference = _run(sdpa_attention_forward, layer, q, k, v, mask)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-5, name


def test_a_query_row_with_nothing_to_attend_to_stays_finite():
    q, k, v = _inputs(batch=1)
    mask = torch.zeros(1, 1, 11, 11, dtype=torch.bool)
    mask[..., 3:, :] = torch.ones(8, 11, dtype=torch.bool).tril(3)
    out, dq, dk, dv = _run(cpu_attention_forward, _Layer(3), q, k, v, mask)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))


def test_above_the_budget_the_call_goes_to_sdpa(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    q, k, v = _inputs()
    cpu_attention_forward(_Layer(3), q, k, v, None)
    assert calls == []
    monkeypatch.setattr(attention, "MATMUL_MAX_SCORES", 2 * 6 * 11 * 11 - 1)
    cpu_attention_forward(_Layer(3), q, k, v, None)
    assert calls == [q.shape]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_bert])
def test_models_give_the_same_logits_and_gradients_as_with_sdpa(make):
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, -3:] = 0
    results = []
    for implementation in ("sdpa", "auto"):
        model = make()
        assert set_attention(model, implementation) == (
            "sdpa" if implementation == "sdpa" else attention.NAME
        )
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].square().mean().backward()
        grad = next(p.grad for p in model.parameters() if p.grad is not None)
        results.append((logits[mask.bool()].detach(), grad))
    (a, ga), (b, gb) = results
    assert (a - b).abs().max() < 1e-5
    assert (ga - gb).abs().max() < 1e-5


def test_packed_rows_attend_only_within_their_example():
    model = tiny_llama()
    set_attention(model, "auto")
    first, second = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11]])
    packed = torch.cat([first, second], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(input_ids=first).logits, model(input_ids=second).logits], dim=1)
    assert (together - alone).abs().max() < 1e-5


def test_an_unknown_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention='nonsense'"):
        set_attention(tiny_llama(), "nonsense")


def test_under_autocast_the_matmuls_run_in_bf16_and_gradients_reach_fp32_inputs():
    q, k, v = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cpu_attention_forward(_Layer(3), q, k, v, _padded_causal_mask(2, 11, pad_last=3))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == k.grad.dtype == torch.float32
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
