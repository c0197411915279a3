"""LoRA config: W = W0 + (alpha / r) * B @ A on the targeted linear layers, plus the variants
rsLoRA (scaling alpha / sqrt(r)), DoRA (a learned per-row magnitude) and PiSSA (SVD initialisation).
"""

from dataclasses import dataclass
from typing import Optional, Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

INITS = ("default", "gaussian", "pissa")


@dataclass
class LoraConfig(MethodConfig):
    name: str = opt("lora", "method name")
    r: int = opt(8, "rank of the update B @ A; 4-64 is typical")
    alpha: float = opt(16.0, "scaling numerator: the update is multiplied by alpha / r")
    dropout: float = opt(0.0, "dropout on the LoRA input path (0 skips it)")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    use_rslora: bool = opt(False, "rank-stabilised scaling alpha / sqrt(r)")
    use_dora: bool = opt(False, "DoRA: also learn a per-output-row magnitude of the updated weight")
    init: str = opt(
        "default", "default (B = 0), gaussian (B = 0, A ~ N(0, 1/r)) or pissa (top-r SVD of W0)"
    )
    layers_to_transform: Optional[Union[int, list]] = opt(
        None,
        "only the targets inside these transformer blocks (indices; negative ones count from the "
        "last block, e.g. [-2, -1]); with target_modules a list or all-linear, as in PEFT",
    )
    layers_pattern: Optional[Union[str, list]] = opt(
        None, "the block list's name(s) for layers_to_transform, e.g. layers or h (PEFT's rule)"
    )

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex or 'all-linear'"
            )
        if self.layers_to_transform is not None:
            self.layers_to_transform = _layer_indices(self.layers_to_transform, self.target_modules)
        if self.init not in INITS:
            raise ConfigError(f"method.init must be one of {', '.join(INITS)}, got {self.init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r**0.5 if self.use_rslora else self.r)


def to_peft_config(cfg: LoraConfig) -> dict:
    """The keys Hugging Face PEFT's LoraConfig reads from adapter_config.json.

    A PiSSA adapter is written as PEFT writes it by default: the trained A and B with
    init_lora_weights="pissa", so the loader recomputes the residual base weights from the SVD.
    """
    targets = (
        cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    )
    init = True if cfg.init == "default" else cfg.init
    return {
        "peft_type": "LORA",
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": init,
        "modules_to_save": None,
        "layers_to_transform": cfg.layers_to_transform,
        "layers_pattern": cfg.layers_pattern,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def from_peft_config(d: dict) -> LoraConfig:
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save") if d.get(k)]
    if unsupported:
        raise ConfigError(
            f"this PEFT LoRA adapter uses {', '.join(unsupported)}, which is not supported yet"
        )
    if d.get("bias", "none") != "none":
        raise ConfigError(f"PEFT LoRA adapters with bias={d['bias']!r} are not supported yet")
    return LoraConfig(
        r=d["r"],
        alpha=d.get("lora_alpha", 8),
        dropout=d.get("lora_dropout", 0.0),
        target_modules=d["target_modules"],
        use_rslora=d.get("use_rslora", False),
        use_dora=bool(d.get("use_dora", False)),
        init=_init_from_peft(d.get("init_lora_weights", True)),
        layers_to_transform=d.get("layers_to_transform") or None,
        layers_pattern=d.get("layers_pattern") or None,
    )


def _layer_indices(layers, targets) -> list:
    indices = [layers] if isinstance(layers, int) else layers
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indices
    ):
        raise ConfigError(
            f"method.layers_to_transform must be a block index or a list of them, got {layers!r}"
        )
    if isinstance(targets, str) and targets != "all-linear":
        # PEFT ignores layers_to_transform for a regex; refusing keeps both libraries equal.
        raise ConfigError(
            "method.layers_to_transform needs target_modules as a list of names or all-linear; "
            "with a regex, put the block indices into the regex"
        )
    return indices


def _init_from_peft(value) -> str:
    # Loading overwrites A and B, so only inits that change the base weights matter: True, False
    # and "gaussian" all load the same way; PiSSA's residual base is recomputed on load.
    if isinstance(value, bool):
        return "default"
    if value in ("pissa", "gaussian"):
        return value
    raise ConfigError(
        f"this PEFT LoRA adapter uses init_lora_weights={value!r}, which tunesmith does not "
        f"reproduce; supported: true, false, 'gaussian', 'pissa'. Convert it to a plain LoRA "
        f"adapter with PEFT's save_pretrained(path_initial_model_for_weight_conversion=...)"
    )
