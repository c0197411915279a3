"""BitFit config (Ben Zaken et al. 2021): only the bias terms train."""

from dataclasses import dataclass

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "TUNESMITH_BITFIT"


@dataclass
class BitfitConfig(MethodConfig):
    name: str = opt("bitfit", "method name")


def to_peft_config(cfg: BitfitConfig) -> dict:
    return {"peft_type": PEFT_TYPE}


def from_peft_config(d: dict) -> BitfitConfig:
    if d.get("peft_type") != PEFT_TYPE:
        raise ConfigError(
            f"not a BitFit adapter: peft_type is {d.get('peft_type')!r}, expected {PEFT_TYPE!r}"
        )
    return BitfitConfig()
