"""Attention that suits a CPU: plain matmuls for short rows, PyTorch's SDPA for long ones.

PyTorch's CPU flash attention is built for long sequences; for the rows of fine-tuning data (tens
to a few hundred tokens) its backward pass is slower than the matmuls it replaces (measured 1.6x
slower than matmul attention at 256 tokens, 4x at 64). Matmul attention materialises the
(query x key) probabilities, so this module keeps them in the compute dtype only (2 bytes per entry
in bf16) and recomputes nothing else: the backward pass is four matmuls and a softmax backward.
Above `MATMUL_MAX_SCORES` probabilities per layer (or for anything unusual: dropout, biases,
soft-capping, paged caches) the call goes to transformers' own SDPA path, so results never depend
on which one ran beyond rounding.

`register()` makes the implementation known to transformers as "tunesmith" (masks as for sdpa:
boolean, True = attend, or None for plain causal rows); `model.attention: auto` selects it.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import ConfigError

NAME = "tunesmith"
# Matmul attention keeps batch x heads x queries x keys probabilities per layer for the backward
# pass (2 bytes each in bf16): 2**23 of them is 16 MiB a layer, e.g. 4 rows of 512 tokens with 8
# heads. It was faster than SDPA up to 512 keys and even at 768 (bf16, 9 heads, one core).
MATMUL_MAX_SCORES = 2**23


class MatmulAttention(torch.autograd.Function):
    """softmax(q k^T * scale, masked) v for grouped heads; saves the probabilities in q's dtype.

    q: (B, Hkv, G*L, D) with each kv head's G query heads stacked along the rows; k, v: (B, Hkv, S,
    D); keep: boolean (B or 1, 1, 1, L, S), True = attend, or None (no masking). Returns
    (B, Hkv, G*L, D).
    """

    @staticmethod
    def forward(ctx, q, k, v, keep, scale):
        q = q * scale  # scaling the (rows x D) queries is cheaper than the (rows x keys) scores
        probs = _probabilities(q, k, keep)
        out = torch.matmul(probs, v)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype)
        grad_v = torch.matmul(probs.transpose(-1, -2), grad_out)
        grad_probs = torch.matmul(grad_out, v.transpose(-1, -2))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_q = torch.matmul(grad_scores, k) * ctx.scale
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
        return grad_q, grad_k, grad_v, None, None


def _probabilities(q, k, keep):
    """softmax(q k^T, masked) for queries already scaled."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if keep is not None:
        # A finite floor, not -inf: a query row with nothing to attend to (left padding) gets
        # uniform weights instead of NaN, as in transformers' eager attention.
        batch, kv_heads, rows, keys = scores.shape
        grouped = scores.view(batch, kv_heads, -1, keep.shape[-2], keys)
        grouped.masked_fill_(~keep, torch.finfo(scores.dtype).min)
    # Softmax in the scores' own dtype: the CPU kernel accumulates in fp32 either way, and
    # asking for a different output dtype takes a path measured 5-10x slower.
    return torch.softmax(scores, dim=-1)


def matmul_attention(q, k, v, keep, scale):
    """MatmulAttention's forward; without gradients it runs outside the autograd Function, whose
    bookkeeping costs more than the ops on a decode step's one query row."""
    if torch.is_grad_enabled():
        return MatmulAttention.apply(q, k, v, keep, scale)
    return torch.matmul(_probabilities(q * scale, k, keep), v)


def _keep_mask(mask, q_len: int, kv_len: int, causal: bool, device):
    """The boolean mask as (B or 1, 1, 1, L, S), broadcast over the heads of a group; None when
    every query sees every key."""
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
        return mask[None, None, None]
    return mask.expand(-1, 1, q_len, kv_len)[:, :, None]


def _is_simple_call(attention_mask, dropout, kwargs, query, key) -> bool:
    unusual = ("position_bias", "softcap", "cache", "sliding_window", "s_aux", "sinks")
    return (
        query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2] <= MATMUL_MAX_SCORES
        and dropout == 0.0
        and not any(kwargs.get(name) is not None for name in unusual)
        and (attention_mask is None or attention_mask.dtype == torch.bool)
        and query.shape[-1] == key.shape[-1]
    )


def cpu_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-function signature: query (B, H, L, D), key/value (B, Hkv, S, D);
    returns ((B, L, H, D), None)."""
    if not _is_simple_call(attention_mask, dropout, kwargs, query, key):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    causal = q_len > 1 and (
        is_causal if is_causal is not None else getattr(module, "is_causal", True)
    )
    keep = _keep_mask(attention_mask, q_len, kv_len, causal, query.device)
    stacked = query.reshape(batch, kv_heads, groups * q_len, dim)
    scale = scaling if scaling is not None else dim**-0.5
    dtype = _compute_dtype(query)
    with torch.autocast(query.device.type, enabled=False):  # dtypes are explicit in here
        out = matmul_attention(stacked.to(dtype), key.to(dtype), value.to(dtype), keep, scale)
    return out.view(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _compute_dtype(query) -> torch.dtype:
    """The dtype autocast would give these matmuls (the query's own dtype outside autocast)."""
    device = query.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return query.dtype


def register() -> str:
    """Make "tunesmith" a transformers attention implementation (idempotent); returns its name."""
    AttentionInterface.register(NAME, cpu_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def set_attention(model, attention: str) -> str:
    """Give `model` the attention implementation `attention` (model.attention); returns the one in use.

    "auto" picks this module's CPU attention where the architecture takes a pluggable attention
    function, and leaves transformers' choice (SDPA) elsewhere; any other value is passed to
    transformers ("sdpa", "eager", ...), and one it rejects is a ConfigError.
    """
    if attention == "auto":
        try:
            model.set_attn_implementation(register())
        except (ValueError, ImportError):  # the architecture has no attention interface
            pass
        return model.config._attn_implementation
    try:
        model.set_attn_implementation(register() if attention == NAME else attention)
    except (ValueError, ImportError) as err:
        raise ConfigError(
            f"model.attention={attention!r} does not work for {type(model).__name__}: {err}; "
            "use auto, sdpa or eager"
        ) from None
    return model.config._attn_implementation
