"""LN tuning config (Zhao et al. 2024, "Tuning LayerNorm in Attention"; PEFT's LN_TUNING): which
normalisation layers (LayerNorm, RMSNorm) train their weight and bias."""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "LN_TUNING"
UNSUPPORTED = ("modules_to_save", "exclude_modules")  # refused on load


@dataclass
class LnTuningConfig(MethodConfig):
    name: str = opt("ln_tuning", "method name")
    target_modules: Optional[Union[str, list]] = opt(
        None,
        "normalisation layers to train: names (list, matched against the end of the module name) "
        "or a full-name regex; unset: every LayerNorm/RMSNorm of the model",
    )

    def __post_init__(self):
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex, or leave it unset "
                "for every normalisation layer"
            )


def with_targets(cfg: LnTuningConfig, names: list) -> LnTuningConfig:
    """cfg with unset target_modules replaced by `names` (the model's norm layer names)."""
    if cfg.target_modules is not None:
        return cfg
    return dataclasses.replace(cfg, target_modules=names)


def to_peft_config(cfg: LnTuningConfig) -> dict:
    """The keys Hugging Face PEFT's LNTuningConfig reads (cfg resolved when saved: None only for
    a config not yet applied, which PEFT reads as its architecture default)."""
    targets = cfg.target_modules
    return {
        "peft_type": PEFT_TYPE,
        "target_modules": targets
        if targets is None or isinstance(targets, str)
        else sorted(targets),
        "exclude_modules": None,
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> LnTuningConfig:
    unsupported = [k for k in UNSUPPORTED if d.get(k)]
    if unsupported:
        raise ConfigError(
            f"this PEFT LN tuning adapter uses {', '.join(unsupported)}, which tunesmith does "
            f"not support; save it again without that option"
        )
    return LnTuningConfig(target_modules=d.get("target_modules"))
