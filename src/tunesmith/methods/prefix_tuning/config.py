"""Prefix tuning config: trainable key/value prefixes at every layer, optionally through an MLP."""

from dataclasses import dataclass
from typing import Optional

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError


@dataclass
class PrefixTuningConfig(MethodConfig):
    name: str = opt("prefix_tuning", "method name")
    num_virtual_tokens: int = opt(
        20, "prefix length: key/value vectors put in front at every layer; 10-50 is typical"
    )
    projection: bool = opt(
        True,
        "train the prefixes through an MLP (embedding -> Linear -> tanh -> Linear), "
        "Li & Liang's reparameterisation; false trains the prefixes directly",
    )
    encoder_hidden_size: Optional[int] = opt(
        None,
        "width of the MLP's hidden layer; default: the key/value width "
        "(kv heads * head dim), as PEFT",
    )
    folded: bool = opt(
        False,
        "the adapter holds plain prefixes, the MLP folded in (set by fold() and by loading "
        "a saved adapter)",
    )

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise ConfigError(
                f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}"
            )
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ConfigError(
                f"method.encoder_hidden_size must be >= 1 or unset, got {self.encoder_hidden_size}"
            )
        if self.encoder_hidden_size is not None and not self.projection:
            raise ConfigError(
                "method.encoder_hidden_size is the MLP's width but method.projection is false (no "
                "MLP); set projection: true or drop encoder_hidden_size"
            )

    @property
    def uses_mlp(self) -> bool:
        return self.projection and not self.folded


def to_peft_config(cfg: PrefixTuningConfig) -> dict:
    """PEFT's PrefixTuningConfig keys. The file always holds plain prefixes (PEFT's inference form);
    dims are left to PEFT, which reads them from the model (kv heads for grouped-query attention)."""
    return {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "num_transformer_submodules": 1,
        "token_dim": None,
        "num_attention_heads": None,
        "num_layers": None,
        "prefix_projection": cfg.projection,
        "encoder_hidden_size": cfg.encoder_hidden_size,
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> PrefixTuningConfig:
    if d.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(
            f"PEFT prefix tuning with num_transformer_submodules={d['num_transformer_submodules']} "
            f"(encoder-decoder models) is not supported"
        )
    projection = bool(d.get("prefix_projection", False))
    return PrefixTuningConfig(
        num_virtual_tokens=d["num_virtual_tokens"],
        projection=projection,
        folded=True,
        encoder_hidden_size=d.get("encoder_hidden_size") if projection else None,
    )
