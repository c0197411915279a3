"""LoRA config: W = W0 + (alpha / r) * B @ A on the targeted linear layers."""
from dataclasses import dataclass
from typing import Union

from ...config.errors import ConfigError
from ...config.fields import opt
from ...config.schema import MethodConfig


@dataclass
class LoraConfig(MethodConfig):
    name: str = opt("lora", "method name")
    r: int = opt(8, "rank of the update B @ A; 4-64 is typical")
    alpha: float = opt(16.0, "scaling numerator: the update is multiplied by alpha / r")
    dropout: float = opt(0.0, "dropout on the LoRA input path (0 skips it)")
    target_modules: Union[str, list] = opt(["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'")
    use_rslora: bool = opt(False, "rank-stabilised scaling alpha / sqrt(r)")

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("method.target_modules is empty; give layer names, a regex or 'all-linear'")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.use_rslora else self.r)


def to_peft_config(cfg: LoraConfig) -> dict:
    """The keys Hugging Face PEFT's LoraConfig reads from adapter_config.json."""
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    return {"peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
            "target_modules": targets, "use_rslora": cfg.use_rslora, "use_dora": False, "bias": "none",
            "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def from_peft_config(d: dict) -> LoraConfig:
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save")
                   if d.get(k)]
    if unsupported:
        raise ConfigError(f"this PEFT LoRA adapter uses {', '.join(unsupported)}, which is not supported yet")
    if d.get("bias", "none") != "none":
        raise ConfigError(f"PEFT LoRA adapters with bias={d['bias']!r} are not supported yet")
    return LoraConfig(r=d["r"], alpha=d.get("lora_alpha", 8), dropout=d.get("lora_dropout", 0.0),
                      target_modules=d["target_modules"], use_rslora=d.get("use_rslora", False))
