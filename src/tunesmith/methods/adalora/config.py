"""AdaLoRA config: an SVD-form update P diag(lambda) Q per layer whose ranks a budget schedule
prunes by importance from init_r towards target_r on average (Zhang et al. 2023)."""

from dataclasses import dataclass
from typing import Optional, Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "ADALORA"


@dataclass
class AdaloraConfig(MethodConfig):
    name: str = opt("adalora", "method name")
    init_r: int = opt(12, "initial rank of every layer's update (the budget starts at its sum)")
    target_r: int = opt(8, "average rank the budget schedule ends at (target_r x layers in all)")
    alpha: float = opt(8.0, "scaling numerator: the update is multiplied by alpha / init_r")
    dropout: float = opt(0.0, "dropout on the update's input path (0 skips it)")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    tinit: int = opt(0, "warm-up updates before the first rank pruning")
    tfinal: int = opt(
        0, "last updates with the ranks fixed; the budget reaches target_r when they start"
    )
    deltaT: int = opt(1, "updates between two budget allocations while ranks are pruned")
    beta1: float = opt(0.85, "EMA factor of the sensitivity |w * grad| (PEFT's beta1)")
    beta2: float = opt(0.85, "EMA factor of its uncertainty (PEFT's beta2)")
    orth_reg_weight: float = opt(
        0.5, "weight of the orthogonality penalty ||P^T P - I|| + ||Q Q^T - I|| in the loss"
    )
    total_step: Optional[int] = opt(
        None, "optimizer updates the schedule spans; unset: the training run's number of updates"
    )
    rank_pattern: Optional[dict] = opt(
        None,
        "kept singular directions per layer (<layer>.lora_E: [bool] * init_r), written by "
        "training; when set, layers are built at those ranks (as a saved adapter loads)",
    )

    def __post_init__(self):
        if not 1 <= self.target_r <= self.init_r:
            raise ConfigError(
                f"method.target_r must be in [1, init_r={self.init_r}], got {self.target_r}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ConfigError(
                f"method.beta1 and method.beta2 must be in (0, 1), got {self.beta1}, {self.beta2}"
            )
        if self.orth_reg_weight < 0:
            raise ConfigError(f"method.orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if min(self.tinit, self.tfinal) < 0 or self.deltaT < 1:
            raise ConfigError(
                f"method.tinit and tfinal must be >= 0 and deltaT >= 1, got {self.tinit}, "
                f"{self.tfinal}, {self.deltaT}"
            )
        if self.total_step is not None:
            self.check_schedule(self.total_step, "method.total_step")
        if not self.target_modules:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex or 'all-linear'"
            )

    def check_schedule(self, total: int, source: str) -> None:
        """Raise ConfigError unless tinit < total - tfinal (a budgeting phase exists)."""
        if self.tinit >= total - self.tfinal:
            raise ConfigError(
                f"AdaLoRA's schedule has no budgeting phase: method.tinit={self.tinit} must be "
                f"below total_step - tfinal = {total} - {self.tfinal} (total_step {total} from "
                f"{source}); lower tinit/tfinal or train for more steps"
            )


def to_peft_config(cfg: AdaloraConfig) -> dict:
    """The keys Hugging Face PEFT's AdaLoraConfig reads (total_step stays null until a training
    run sets it; PEFT refuses such a file)."""
    targets = (
        cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    )
    return {
        "peft_type": PEFT_TYPE,
        "init_r": cfg.init_r,
        "target_r": cfg.target_r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "tinit": cfg.tinit,
        "tfinal": cfg.tfinal,
        "deltaT": cfg.deltaT,
        "beta1": cfg.beta1,
        "beta2": cfg.beta2,
        "orth_reg_weight": cfg.orth_reg_weight,
        "total_step": cfg.total_step,
        "rank_pattern": cfg.rank_pattern,
        "init_lora_weights": True,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


# PEFT (LoRA) settings we do not implement, each with the values that mean "not used".
_UNSUPPORTED = {
    "bias": ("none",),
    "modules_to_save": (None, []),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, []),
    "exclude_modules": (None, []),
    "alpha_pattern": (None, {}),
    "trainable_token_indices": (None,),
    "layer_replication": (None,),
    "target_parameters": (None, []),
    "lora_bias": (False,),
    "use_dora": (False,),
    "use_rslora": (False,),
}


def from_peft_config(d: dict) -> AdaloraConfig:
    for key, off in _UNSUPPORTED.items():
        if d.get(key, off[0]) not in off:
            raise ConfigError(
                f"this PEFT ADALORA adapter uses {key}={d[key]!r}, which tunesmith's adalora does "
                f"not support (supported: {key}={off[0]!r})"
            )
    pattern = d.get("rank_pattern") or None
    return AdaloraConfig(
        init_r=d.get("init_r", 12),
        target_r=d.get("target_r", 8),
        alpha=d.get("lora_alpha", 8),
        dropout=d.get("lora_dropout", 0.0),
        target_modules=d["target_modules"],
        tinit=d.get("tinit", 0),
        tfinal=d.get("tfinal", 0),
        deltaT=d.get("deltaT", 1),
        beta1=d.get("beta1", 0.85),
        beta2=d.get("beta2", 0.85),
        orth_reg_weight=d.get("orth_reg_weight", 0.5),
        total_step=d.get("total_step"),
        rank_pattern={k: [bool(v) for v in bits] for k, bits in pattern.items()}
        if pattern
        else None,
    )
