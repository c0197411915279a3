"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"):
trainable key/value vectors in front of the real ones at every attention layer.

Trained through an MLP (embedding -> Linear -> tanh -> Linear); `fold()` replaces the MLP by the
plain prefixes it computes, which is also what the saved file holds (PEFT's `prompt_embeddings`,
(n, layers * 2 * kv_heads * head_dim)). Grouped-query attention: prefixes have kv_heads heads.
Not mergeable.
"""

import torch
from torch import nn

from ..base import MethodSpec, mark_trainable, record_adapter
from ..registry import register_method
from ..virtual_tokens import PromptTable, attach_virtual_tokens, fold_virtual_tokens
from .config import PrefixTuningConfig, from_peft_config, to_peft_config
from .layers import PrefixMLP, PrefixTuningLayer

__all__ = ["PrefixTuningConfig", "PrefixTuningLayer", "apply_prefix_tuning", "fold", "kv_shape"]


def apply_prefix_tuning(
    model: nn.Module, cfg: PrefixTuningConfig, adapter_name: str = "default"
) -> nn.Module:
    """Add trainable prefixes of `cfg.num_virtual_tokens` tokens at every layer as adapter `adapter_name`.

    Only the prefixes (or the MLP making them) train afterwards. Raises ConfigError when the
    model holds another prompt-based method's adapter.
    """
    layers, kv_heads, head_dim = kv_shape(model.config)
    layer = attach_virtual_tokens(model, PrefixTuningLayer, layers, kv_heads, head_dim)
    device = model.get_input_embeddings().weight.device
    n, kv_dim = cfg.num_virtual_tokens, kv_heads * head_dim
    if cfg.uses_mlp:
        encoder = PrefixMLP(n, kv_dim, cfg.encoder_hidden_size or kv_dim, layer.row_width)
    else:
        encoder = PromptTable(torch.randn(n, layer.row_width))  # N(0, 1), as PEFT's nn.Embedding
    layer.add_encoder(adapter_name, encoder.to(device))
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


def fold(model: nn.Module, adapter_name: str = "default") -> None:
    """Replace the MLP of adapter `adapter_name` by the plain prefixes it computes (in place)."""
    fold_virtual_tokens(model, adapter_name)


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder config; kv heads < heads under grouped-query attention."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


register_method(
    MethodSpec(
        name="prefix_tuning",
        config_cls=PrefixTuningConfig,
        apply=apply_prefix_tuning,
        is_prompt_based=True,
        peft_type="PREFIX_TUNING",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
