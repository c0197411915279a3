"""Selected-module fine-tuning config: the last K blocks and/or modules picked by name."""

from dataclasses import dataclass

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "TUNESMITH_SELECTED"


@dataclass
class SelectedConfig(MethodConfig):
    name: str = opt("selected", "method name")
    top_k_layers: int = opt(1, "train the last K transformer blocks (0: none, only method.modules)")
    modules: list = opt(
        [],
        "more modules to train: full name, name tail or full-name regex, e.g. ['norm', 'lm_head']",
    )

    def __post_init__(self):
        if self.top_k_layers < 0:
            raise ConfigError(f"method.top_k_layers must be >= 0, got {self.top_k_layers}")
        if self.top_k_layers == 0 and not self.modules:
            raise ConfigError(
                "method.top_k_layers is 0 and method.modules is empty: nothing would train; "
                "set top_k_layers >= 1 or name modules such as ['lm_head']"
            )
        if any(not isinstance(m, str) or not m for m in self.modules):
            raise ConfigError(
                f"method.modules must be a list of non-empty strings, got {self.modules!r}"
            )


def to_peft_config(cfg: SelectedConfig) -> dict:
    return {"peft_type": PEFT_TYPE, "top_k_layers": cfg.top_k_layers, "modules": list(cfg.modules)}


def from_peft_config(d: dict) -> SelectedConfig:
    return SelectedConfig(
        top_k_layers=d.get("top_k_layers", 0), modules=list(d.get("modules") or [])
    )
