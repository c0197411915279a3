"""LoHa config (Hyeon-Woo et al. 2022, FedPara; as in LyCORIS and PEFT):
dW = (alpha / r) * (W1a @ W1b) * (W2a @ W2b), a Hadamard product of two rank-r products."""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import check_targets, peft_targets, refuse_options, used_options

PEFT_TYPE = "LOHA"
# PEFT options tunesmith does not implement: a PEFT adapter that sets one is refused on load.
UNSUPPORTED = ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern")
UNSUPPORTED += ("modules_to_save", "exclude_modules")


@dataclass
class LohaConfig(MethodConfig):
    name: str = opt("loha", "method name")
    r: int = opt(8, "rank of each of the two products; the update's rank can reach r^2")
    alpha: float = opt(8.0, "scaling numerator: the update is multiplied by alpha / r")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    rank_dropout: float = opt(0.0, "training: drop rows of the update with this probability")
    module_dropout: float = opt(0.0, "training: skip the whole update with this probability")
    init_weights: bool = opt(
        True, "true: W2b = 0, so the model starts unchanged (PEFT's default); false: all random"
    )

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        for key in ("rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be in [0, 1), got {getattr(self, key)}")
        check_targets(self.target_modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def to_peft_config(cfg: LohaConfig) -> dict:
    """The keys Hugging Face PEFT's LoHaConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "r": cfg.r,
        "alpha": cfg.alpha,
        "rank_dropout": cfg.rank_dropout,
        "module_dropout": cfg.module_dropout,
        "target_modules": peft_targets(cfg.target_modules),
        "init_weights": cfg.init_weights,
        "use_effective_conv2d": False,
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> LohaConfig:
    """A LohaConfig from PEFT's keys. use_effective_conv2d only concerns convolutions, so it is
    accepted and has no effect (as in PEFT on linear layers)."""
    unsupported = used_options(d, UNSUPPORTED)
    refuse_options(unsupported, "LoHa")
    return LohaConfig(
        r=d["r"],
        alpha=d.get("alpha", 8),
        target_modules=d["target_modules"],
        rank_dropout=d.get("rank_dropout", 0.0),
        module_dropout=d.get("module_dropout", 0.0),
        init_weights=bool(d.get("init_weights", True)),
    )
