"""VeRA config (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"):
dW = diag(lambda_b) B diag(lambda_d) A with A, B frozen random matrices shared by all layers."""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import check_targets, peft_targets, refuse_options, used_options

PEFT_TYPE = "VERA"
# PEFT options tunesmith does not implement: a PEFT adapter that sets one is refused on load.
UNSUPPORTED = ("modules_to_save", "layers_to_transform", "layers_pattern")


@dataclass
class VeraConfig(MethodConfig):
    name: str = opt("vera", "method name")
    r: int = opt(256, "rank of the shared random projections; higher than LoRA's (e.g. 256)")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    projection_prng_key: int = opt(0, "seed of the shared random matrices A and B")
    save_projection: bool = opt(
        True, "write A and B into the adapter file (false: regenerated from the seed on load)"
    )
    vera_dropout: float = opt(0.0, "dropout on the VeRA input path (0 skips it)")
    d_initial: float = opt(0.1, "initial value of every entry of lambda_d; <= 0.1 is advised")
    init_weights: bool = opt(
        True, "true: lambda_b = 0 (start at the base model), lambda_d = d_initial; false: random"
    )

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        if not 0 <= self.vera_dropout < 1:
            raise ConfigError(f"method.vera_dropout must be in [0, 1), got {self.vera_dropout}")
        check_targets(self.target_modules)


def to_peft_config(cfg: VeraConfig) -> dict:
    """The keys Hugging Face PEFT's VeraConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "r": cfg.r,
        "target_modules": peft_targets(cfg.target_modules),
        "projection_prng_key": cfg.projection_prng_key,
        "save_projection": cfg.save_projection,
        "vera_dropout": cfg.vera_dropout,
        "d_initial": cfg.d_initial,
        "init_weights": cfg.init_weights,
        "fan_in_fan_out": False,  # PEFT sets it per layer (true for GPT-2's Conv1D)
        "bias": "none",
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def from_peft_config(d: dict) -> VeraConfig:
    """A VeraConfig from PEFT's keys. fan_in_fan_out is ignored: the layer type tells (as PEFT,
    which overrides it for nn.Linear and Conv1D alike)."""
    unsupported = used_options(d, UNSUPPORTED, bias=True)
    refuse_options(unsupported, "VeRA")
    return VeraConfig(
        r=d["r"],
        target_modules=d["target_modules"],
        projection_prng_key=d.get("projection_prng_key", 0),
        save_projection=d.get("save_projection", True),
        vera_dropout=d.get("vera_dropout", 0.0),
        d_initial=d.get("d_initial", 0.1),
        init_weights=bool(d.get("init_weights", True)),
    )
