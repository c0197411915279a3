"""LLaMA-Adapter config: adaption prompts in the top layers, attended through a zero-initialised gate."""

from dataclasses import dataclass

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError


@dataclass
class LlamaAdapterConfig(MethodConfig):
    name: str = opt("llama_adapter", "method name")
    adapter_len: int = opt(10, "adaption prompt length per adapted layer; 10 in the paper")
    adapter_layers: int = opt(
        8, "number of top decoder layers that get an adaption prompt (at most the model's)"
    )

    def __post_init__(self):
        if self.adapter_len < 1:
            raise ConfigError(f"method.adapter_len must be >= 1, got {self.adapter_len}")
        if self.adapter_layers < 1:
            raise ConfigError(f"method.adapter_layers must be >= 1, got {self.adapter_layers}")


def to_peft_config(cfg: LlamaAdapterConfig) -> dict:
    """PEFT's AdaptionPromptConfig keys."""
    return {
        "peft_type": "ADAPTION_PROMPT",
        "adapter_len": cfg.adapter_len,
        "adapter_layers": cfg.adapter_layers,
        "target_modules": "self_attn",
    }


def from_peft_config(d: dict) -> LlamaAdapterConfig:
    if d.get("target_modules", "self_attn") != "self_attn":
        raise ConfigError(
            f"PEFT adaption prompts on {d['target_modules']!r} are not supported (only self_attn)"
        )
    return LlamaAdapterConfig(adapter_len=d["adapter_len"], adapter_layers=d["adapter_layers"])
