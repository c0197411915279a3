"""Full fine-tuning config: every base parameter trains; saved as peft_type TUNESMITH_FULL."""

from dataclasses import dataclass

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "TUNESMITH_FULL"


@dataclass
class FullConfig(MethodConfig):
    name: str = opt("full", "method name")


def to_peft_config(cfg: FullConfig) -> dict:
    return {"peft_type": PEFT_TYPE}


def from_peft_config(d: dict) -> FullConfig:
    if d.get("peft_type") != PEFT_TYPE:
        raise ConfigError(
            f"not a full fine-tuning adapter: peft_type is {d.get('peft_type')!r}, "
            f"expected {PEFT_TYPE!r}"
        )
    return FullConfig()
