"""LN tuning config (Zhao et al. 2024, "Tuning LayerNorm in Attention"; PEFT's LN_TUNING): which
normalisation layers (LayerNorm, RMSNorm) train their weight and bias."""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import peft_targets, refuse_options, used_options

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
    return {
        "peft_type": PEFT_TYPE,
        "target_modules": peft_targets(cfg.target_modules),
        "exclude_modules": None,
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> LnTuningConfig:
    unsupported = used_options(d, UNSUPPORTED)
    refuse_options(unsupported, "LN tuning")
    return LnTuningConfig(target_modules=d.get("target_modules"))
