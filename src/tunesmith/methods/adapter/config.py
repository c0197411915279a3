"""Bottleneck adapter config (Houlsby et al. 2019, Pfeiffer et al. 2020, He et al. 2021)."""

from dataclasses import dataclass

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "TUNESMITH_ADAPTER"
PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
NON_LINEARITIES = ("relu", "gelu", "silu")


@dataclass
class AdapterConfig(MethodConfig):
    name: str = opt("adapter", "method name")
    placement: str = opt(
        "houlsby",
        "houlsby (after attention and after the FFN), pfeiffer (after the FFN) "
        "or parallel (beside the FFN)",
    )
    reduction_factor: int = opt(
        16, "bottleneck size = hidden_size // reduction_factor; 8-64 is typical"
    )
    non_linearity: str = opt("relu", "activation between the projections: relu, gelu or silu")
    scaling: float = opt(
        1.0, "multiplies the adapter's output; He et al. use 4 for parallel adapters"
    )
    init_std: float = opt(
        1e-2, "std of the down-projection's truncated-normal init (Houlsby: 1e-2)"
    )

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"method.placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.non_linearity not in NON_LINEARITIES:
            raise ConfigError(
                f"method.non_linearity must be one of {', '.join(NON_LINEARITIES)}, "
                f"got {self.non_linearity!r}"
            )
        if self.reduction_factor < 1:
            raise ConfigError(f"method.reduction_factor must be >= 1, got {self.reduction_factor}")
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std must be > 0, got {self.init_std}")


def to_peft_config(cfg: AdapterConfig) -> dict:
    return {
        "peft_type": PEFT_TYPE,
        "placement": cfg.placement,
        "reduction_factor": cfg.reduction_factor,
        "non_linearity": cfg.non_linearity,
        "scaling": cfg.scaling,
        "init_std": cfg.init_std,
    }


def from_peft_config(d: dict) -> AdapterConfig:
    return AdapterConfig(
        placement=d["placement"],
        reduction_factor=d["reduction_factor"],
        non_linearity=d.get("non_linearity", "relu"),
        scaling=d.get("scaling", 1.0),
        init_std=d.get("init_std", 1e-2),
    )
