"""FourierFT config (Gao et al. 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier
Transform"): n trained spectral coefficients at fixed random frequencies per layer,
dW = scaling * Re(IDFT2(spectrum))."""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import check_targets, peft_targets, refuse_options, used_options

PEFT_TYPE = "FOURIERFT"
# PEFT options tunesmith does not implement: a PEFT adapter that sets one is refused on load.
UNSUPPORTED = ("n_frequency_pattern", "modules_to_save", "exclude_modules")
UNSUPPORTED += ("layers_to_transform", "layers_pattern")


@dataclass
class FourierFTConfig(MethodConfig):
    name: str = opt("fourierft", "method name")
    n_frequency: int = opt(
        1000, "trained spectral coefficients per layer (at most in * out); 1000 is PEFT's default"
    )
    scaling: float = opt(150.0, "the update is multiplied by this (PEFT: 100-150; 300 for LLaMA)")
    random_loc_seed: int = opt(777, "seed of the random frequency locations")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    init_weights: bool = opt(
        False,
        "false: spectrum ~ N(0, 1), PEFT's and the paper's default (the model does not start at "
        "the base); true: zeros (it does)",
    )

    def __post_init__(self):
        if self.n_frequency < 1:
            raise ConfigError(f"method.n_frequency must be >= 1, got {self.n_frequency}")
        check_targets(self.target_modules)


def to_peft_config(cfg: FourierFTConfig) -> dict:
    """The keys Hugging Face PEFT's FourierFTConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "n_frequency": cfg.n_frequency,
        "scaling": cfg.scaling,
        "random_loc_seed": cfg.random_loc_seed,
        "target_modules": peft_targets(cfg.target_modules),
        "init_weights": cfg.init_weights,
        "fan_in_fan_out": False,  # PEFT sets it per layer (true for GPT-2's Conv1D)
        "bias": "none",
        "n_frequency_pattern": {},
        "exclude_modules": None,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def from_peft_config(d: dict) -> FourierFTConfig:
    """A FourierFTConfig from PEFT's keys; fan_in_fan_out is ignored (the layer type decides, as
    PEFT overrides it too)."""
    unsupported = used_options(d, UNSUPPORTED, bias=True)
    if d.get("random_loc_seed", 777) is None:
        unsupported.append("random_loc_seed=null")
    refuse_options(unsupported, "FourierFT")
    return FourierFTConfig(
        n_frequency=d["n_frequency"],
        scaling=d.get("scaling", 150.0),
        random_loc_seed=d.get("random_loc_seed", 777),
        target_modules=d["target_modules"],
        init_weights=bool(d.get("init_weights", False)),
    )
