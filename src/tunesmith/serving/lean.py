"""A lean decode step for Llama-family models: one new token per row, without the model's forward.

At batch 1 on a CPU a decode step multiplies each weight matrix by one vector; the matmuls take a
few milliseconds and transformers' forward (mask building, cache objects, output records, keyword
plumbing through 30 blocks) costs about as much again. This step calls the model's own modules
(embedding, norms, projections, MLP, head: so LoRA, IA3 and other layer-level adapters, int8
weights and fused ops all apply as in the forward) and does the rest itself: rotary embedding of
the one new position, appending to the cache rows, attention over them with the padding mask.

It is used only where a probe shows it gives the forward's logits (`LeanDecoder.fits`): any
model whose blocks do more (sliding windows, query/key norms, soft-capping, extra tokens in front
of the cache such as prefix tuning) fails the probe and keeps the ordinary forward.
"""

from typing import NamedTuple, Optional

import torch
from transformers import DynamicCache

# Logits of a probe decode step must agree with the forward's to this (absolute, over logits).
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


class LeanDecoder:
    """decode(ids (B, 1), mask (B, T), cache, positions (B, 1)) -> logits (B, V) for one model."""

    def __init__(self, model):
        # No reference to the model itself: the engine keys decoders weakly by model.
        self.config = cfg = model.config
        inner = model.model
        self.embed, self.blocks, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.head = inner.rotary_emb, model.lm_head
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.shape = HeadShape(
            heads, kv_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        )
        self.compiled = None  # a CompiledBlocks the engine may attach (serving/compiled.py)

    @classmethod
    def build(cls, model) -> Optional["LeanDecoder"]:
        """A decoder for model when it has the Llama block layout, else None."""
        inner = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if inner is None or not all(hasattr(inner, n) for n in needed):
            return None
        if not hasattr(model, "lm_head") or not all(_llama_block(b) for b in inner.layers):
            return None
        return cls(model)

    def decode(self, ids, mask, cache: DynamicCache, positions) -> torch.Tensor:
        """Call under torch.inference_mode (the engine's loop runs in it)."""
        x = self.embed(ids)  # (B, 1, hidden)
        cos, sin = self.rotary(x, positions)  # (B, 1, D) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1, D): broadcast over heads
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        keep = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if self.compiled is not None and self.compiled.usable():
            x, keys, values = self.compiled(x, cos, sin, keys, values, keep)
        else:
            keep = None if bool(keep.all()) else keep
            x, keys, values = run_blocks(self.blocks, self.shape, x, cos, sin, keys, values, keep)
        for layer, k, v in zip(cache.layers, keys, values):
            layer.keys, layer.values = k, v  # (B, Hkv, T, D), as DynamicCache grows
        return self.head(self.norm(x))[:, -1].float()  # (B, V)

    def fits(self, forward, decode) -> bool:
        """True when `decode` (this step, in the caller's context) equals `forward` (the model's
        own), both called as f(ids, mask, cache, positions), on a short probe: two rows, one
        left-padded, after a 3-token prefill."""
        ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
        mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            with torch.inference_mode():
                cache_a = DynamicCache(config=self.config)
                forward(ids, mask, cache_a, positions)
                if any(layer.keys.shape[2] != 3 for layer in cache_a.layers):
                    return False  # virtual tokens in front of the cache: not ours to handle
                cache_b = DynamicCache(config=self.config)
                forward(ids, mask, cache_b, positions)
                step, longer = torch.tensor([[11], [12]]), torch.ones(2, 4, dtype=torch.long)
                step_pos = mask.sum(1, keepdim=True)
                want = forward(step, longer, cache_a, step_pos)
                got = decode(step, longer, cache_b, step_pos)
        except Exception:  # a layout this step does not know: the forward serves the model
            return False
        dtype = self.embed.weight.dtype
        tolerance = PROBE_TOLERANCE.get(dtype, 5e-2) * max(1.0, float(want.abs().max()))
        return want.shape == got.shape and float((want - got).abs().max()) <= tolerance


class HeadShape(NamedTuple):
    heads: int
    kv_heads: int
    head_dim: int


def run_blocks(blocks, shape: HeadShape, x, cos, sin, keys: list, values: list, keep):
    """(x, keys, values) after every block for one new token per row; keys[i], values[i]
    (B, Hkv, T, D) are block i's cache, returned one column longer. keep: (B, 1, 1, T + 1)
    boolean, True = attend, or None (every column)."""
    longer_keys, longer_values = [], []
    for block, k, v in zip(blocks, keys, values):
        h, k, v = _attention(block.self_attn, shape, block.input_layernorm(x), cos, sin, k, v, keep)
        x = x + h
        x = x + block.mlp(block.post_attention_layernorm(x))
        longer_keys.append(k)
        longer_values.append(v)
    return x, longer_keys, longer_values


def _attention(attn, shape: HeadShape, h, cos, sin, keys, values, keep):
    b, (heads, kv_heads, dim) = h.shape[0], shape
    q = attn.q_proj(h).view(b, 1, heads, dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, 1, kv_heads, dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, 1, kv_heads, dim).transpose(1, 2)
    keys = torch.cat([keys, _rotate(k, cos, sin)], dim=2)
    values = torch.cat([values, v], dim=2)
    # One query row per head against the cache, the query heads of a kv head stacked as rows.
    # In fp32: CPU bf16 matmuls on shapes this small run ~2x slower than fp32 ones, more than
    # the casts cost (batch-1 int4 decode: +10 % tokens/s).
    q = _rotate(q, cos, sin).float().reshape(b, kv_heads, heads // kv_heads, dim) * attn.scaling
    scores = torch.matmul(q, keys.float().transpose(-1, -2))  # (B, Hkv, G, T)
    if keep is not None:
        # A finite floor as in the forward's attention: a row with nothing to attend to stays finite.
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, dim=-1), values.float())  # (B, Hkv, G, D)
    return attn.o_proj(out.reshape(b, 1, heads * dim).to(h.dtype)), keys, values


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _llama_block(block) -> bool:
    attn = getattr(block, "self_attn", None)
    parts = ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")
    others = ("input_layernorm", "post_attention_layernorm", "mlp")
    if attn is None or not all(hasattr(attn, p) for p in parts):
        return False
    # Query/key norms (Qwen3, OLMo2) or a sliding window act between the pieces this step calls.
    extra = ("q_norm", "k_norm", "q_layernorm", "k_layernorm")
    if any(hasattr(attn, n) for n in extra) or getattr(attn, "sliding_window", None):
        return False
    return all(hasattr(block, n) for n in others)
