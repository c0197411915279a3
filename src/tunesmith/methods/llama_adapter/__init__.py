"""LLaMA-Adapter (Zhang et al. 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language Models with
Zero-init Attention"): learned adaption prompts in the top L layers, attended through a gate that
starts at zero, so training starts from the base model's output exactly. PEFT's adaption_prompt
(same parameters and file). Llama-family models only; not mergeable.
"""

from torch import nn

from ...errors import ConfigError, UnsupportedModuleError
from ...utils.modules import replace_module
from ..base import MethodSpec, mark_trainable, record_adapter
from ..registry import register_method
from .config import LlamaAdapterConfig, from_peft_config, to_peft_config
from .layers import AdaptedAttention

__all__ = ["AdaptedAttention", "LlamaAdapterConfig", "apply_llama_adapter"]
MODEL_TYPES = (
    "llama",
    "mistral",
)  # attention with q/k/v/o_proj and rotate-half RoPE, as PEFT supports


def apply_llama_adapter(
    model: nn.Module, cfg: LlamaAdapterConfig, adapter_name: str = "default"
) -> nn.Module:
    """Wrap the top `cfg.adapter_layers` self-attention modules and add adapter `adapter_name`.

    Only the prompts and gates train afterwards. Raises UnsupportedModuleError for models outside
    the Llama family, ConfigError when adapter_layers exceeds the model's layers.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPES:
        raise UnsupportedModuleError(
            f"llama_adapter needs a Llama-family model (model_type {', '.join(MODEL_TYPES)}); this one is "
            f"{model_type!r} ({type(model).__name__}). Use prefix_tuning or lora for it"
        )
    names = [n for n, _ in model.named_modules() if n.endswith(".self_attn")]
    if cfg.adapter_layers > len(names):
        raise ConfigError(
            f"method.adapter_layers={cfg.adapter_layers} but the model has {len(names)} layers"
        )
    for name in names[-cfg.adapter_layers :]:
        module = model.get_submodule(name)
        if not isinstance(module, AdaptedAttention):
            module = AdaptedAttention(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name, cfg.adapter_len, model.config.hidden_size)
    for mod in model.modules():
        if isinstance(mod, AdaptedAttention) and adapter_name in mod.adapter_names:
            mod.set_active([adapter_name])
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


register_method(
    MethodSpec(
        name="llama_adapter",
        config_cls=LlamaAdapterConfig,
        apply=apply_llama_adapter,
        peft_type="ADAPTION_PROMPT",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
