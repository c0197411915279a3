"""LoKr config (LyCORIS; Edalati et al. 2022, "KronA"; as in PEFT): dW = (alpha / r) * W1 ⊗ W2, a
Kronecker product of a small factor W1 and a larger W2 that is itself low-rank when r is small."""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import check_targets, peft_targets, refuse_options, used_options

PEFT_TYPE = "LOKR"
# PEFT options tunesmith does not implement: a PEFT adapter that sets one is refused on load.
UNSUPPORTED = ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern")
UNSUPPORTED += ("modules_to_save", "exclude_modules")
INITS = (True, False, "lycoris")


@dataclass
class LokrConfig(MethodConfig):
    name: str = opt("lokr", "method name")
    r: int = opt(8, "rank of a factor that is decomposed (W2 when r < max(its dims) / 2)")
    alpha: float = opt(8.0, "scaling numerator: the update is multiplied by alpha / r")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    decompose_both: bool = opt(False, "also decompose W1 into a rank-r product when r is small")
    decompose_factor: int = opt(
        -1, "split each dimension into (f, dim / f) when f divides it; -1: near its square root"
    )
    rank_dropout: float = opt(0.0, "training: drop rows of the update with this probability")
    rank_dropout_scale: bool = opt(False, "rescale the kept rows by their share (rank_dropout)")
    module_dropout: float = opt(0.0, "training: skip the whole update with this probability")
    init_weights: Union[bool, str] = opt(
        True,
        "true: W1 = 0, the model starts unchanged (PEFT's default); 'lycoris': W2 = 0 instead; "
        "false: all random",
    )

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        for key in ("rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ConfigError(
                f"method.decompose_factor must be -1 or >= 1, got {self.decompose_factor}"
            )
        if self.init_weights not in INITS or not isinstance(self.init_weights, (bool, str)):
            raise ConfigError(
                f"method.init_weights must be true, false or 'lycoris', got {self.init_weights!r}"
            )
        check_targets(self.target_modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def to_peft_config(cfg: LokrConfig) -> dict:
    """The keys Hugging Face PEFT's LoKrConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "r": cfg.r,
        "alpha": cfg.alpha,
        "rank_dropout": cfg.rank_dropout,
        "module_dropout": cfg.module_dropout,
        "rank_dropout_scale": cfg.rank_dropout_scale,
        "decompose_both": cfg.decompose_both,
        "decompose_factor": cfg.decompose_factor,
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


def from_peft_config(d: dict) -> LokrConfig:
    """A LokrConfig from PEFT's keys; use_effective_conv2d only concerns convolutions (ignored)."""
    unsupported = used_options(d, UNSUPPORTED)
    refuse_options(unsupported, "LoKr")
    return LokrConfig(
        r=d["r"],
        alpha=d.get("alpha", 8),
        target_modules=d["target_modules"],
        decompose_both=d.get("decompose_both", False),
        decompose_factor=d.get("decompose_factor", -1),
        rank_dropout=d.get("rank_dropout", 0.0),
        rank_dropout_scale=d.get("rank_dropout_scale", False),
        module_dropout=d.get("module_dropout", 0.0),
        init_weights=d.get("init_weights", True),
    )
