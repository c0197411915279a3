"""PrefixTuningLayer: per-layer key/value prefixes, put into the KV cache before the first pass.

A prefix row holds, for one virtual token, the keys and values of every layer, in PEFT's order:
(layer 0 keys, layer 0 values, layer 1 keys, ...), each kv_heads * head_dim wide. The prefixes
enter as "past" keys/values, so the model's own masking, RoPE (none on the prefix, as in PEFT)
and caching apply unchanged; the real tokens take positions n, n+1, ...
"""

import torch
from torch import nn
from transformers import DynamicCache

from ...errors import UnsupportedModuleError
from ...models.compat import cache_kwarg
from ..virtual_tokens import PromptTable, VirtualTokenLayer


class PrefixMLP(nn.Module):
    """Li & Liang's reparameterisation, as PEFT's PrefixEncoder: (n, d) -> Linear -> tanh -> Linear."""

    def __init__(self, n: int, kv_dim: int, hidden: int, out: int):
        super().__init__()
        self.embedding = nn.Embedding(n, kv_dim)  # N(0, 1) init
        self.transform = nn.Sequential(nn.Linear(kv_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def forward(self) -> torch.Tensor:
        return self.transform(self.embedding.weight)  # (n, layers * 2 * kv_dim)


class PrefixTuningLayer(VirtualTokenLayer):
    """One encoder per adapter (a PrefixMLP, or a PromptTable of plain prefixes)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim

    @property
    def row_width(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim

    def num_virtual_tokens(self, name: str) -> int:
        enc = self.encoders[name]
        return enc.weight.shape[0] if isinstance(enc, PromptTable) else enc.embedding.num_embeddings

    def inject(self, backbone: nn.Module, kwargs: dict, name: str) -> int:
        cache_name = cache_kwarg(backbone)  # "cache" from transformers 5.24 on
        cache = kwargs.get(cache_name)
        _check_cache_support(backbone, cache)
        ref = (
            kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        )
        kv = self.prefix_kv(name, ref.shape[0], backbone.get_input_embeddings().weight.dtype)
        if cache is None:
            kwargs[cache_name] = DynamicCache(kv, config=backbone.config)
        else:  # the empty cache generate() made: fill it in place
            for i, (k, v) in enumerate(kv):
                cache.update(k, v, i)
        return 0  # nothing is put in front of the sequence itself

    def prefix_kv(self, name: str, batch: int, dtype: torch.dtype) -> list:
        """Per layer (keys, values), each (batch, kv_heads, n, head_dim)."""
        table = self.encoders[name]().to(dtype)  # (n, layers * 2 * kv_dim)
        n = table.shape[0]
        kv = table.view(n, self.layers, 2, self.kv_heads, self.head_dim).permute(
            1, 2, 3, 0, 4
        )  # (L, 2, h, n, d)
        return [
            (kv[i, 0].expand(batch, -1, -1, -1), kv[i, 1].expand(batch, -1, -1, -1))
            for i in range(self.layers)
        ]


def _check_cache_support(backbone: nn.Module, cache) -> None:
    if getattr(cache, "is_compileable", False):
        raise UnsupportedModuleError(
            f"prefix tuning needs a dynamic KV cache, got {type(cache).__name__}; "
            f"generate with the default cache"
        )
    if backbone.training and any(
        getattr(m, "gradient_checkpointing", False) for m in backbone.modules()
    ):
        raise UnsupportedModuleError(
            "prefix tuning does not work with gradient checkpointing (transformers drops "
            "the KV cache that carries the prefixes); disable gradient checkpointing"
        )
