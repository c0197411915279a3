"""(IA)^3 config: which layers get a learned rescaling vector, and which of them are rescaled on
the input (the FFN down projection) rather than on the output (keys and values)."""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

# PEFT's per-architecture defaults (TRANSFORMERS_MODELS_TO_IA3_*_MODULES_MAPPING), for the decoder
# models we load. Same values, so an adapter written with defaults reads the same in PEFT.
DEFAULT_TARGETS = {
    "llama": ["k_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "gemma": ["q_proj", "v_proj", "down_proj"],
    "gemma2": ["q_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "v_proj", "down_proj"],
    "phi": ["q_proj", "v_proj", "fc2"],
    "opt": ["q_proj", "k_proj", "fc2"],
    "gpt2": ["c_attn", "mlp.c_proj"],  # c_attn is the fused q, k, v projection
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
}
DEFAULT_FEEDFORWARD = {
    "llama": ["down_proj"],
    "mistral": ["down_proj"],
    "gemma": ["down_proj"],
    "gemma2": ["down_proj"],
    "qwen2": ["down_proj"],
    "qwen3": ["down_proj"],
    "phi": ["fc2"],
    "opt": ["fc2"],
    "gpt2": ["mlp.c_proj"],
    "gpt_neox": ["dense_4h_to_h"],
    "falcon": ["dense_4h_to_h"],
}


@dataclass
class Ia3Config(MethodConfig):
    name: str = opt("ia3", "method name")
    target_modules: Optional[Union[str, list]] = opt(
        None,
        "layers to rescale: names (list), a full-name regex or 'all-linear'; "
        "unset: the architecture's default (llama: k_proj, v_proj, down_proj; gpt2: c_attn, mlp.c_proj)",
    )
    feedforward_modules: Optional[Union[str, list]] = opt(
        None,
        "targets rescaled on their input (FFN down projections): names (a subset of target_modules) "
        "or a regex; unset: the architecture's default (llama: down_proj; gpt2: mlp.c_proj)",
    )

    def __post_init__(self):
        targets, ff = self.target_modules, self.feedforward_modules
        if targets is not None and not targets:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex, 'all-linear', "
                "or leave it unset for the architecture's default"
            )
        if isinstance(targets, list) and isinstance(ff, list) and not set(ff) <= set(targets):
            # PEFT refuses such a config too, so the adapter could not be read there.
            raise ConfigError(
                f"method.feedforward_modules must be a subset of method.target_modules; "
                f"{sorted(set(ff) - set(targets))} are not targets ({targets})"
            )


def resolve_defaults(cfg: Ia3Config, model_type: Optional[str]) -> Ia3Config:
    """cfg with unset target/feedforward modules filled from the architecture's defaults.

    With explicit target names and no feedforward modules, only the default feedforward names
    that are among the targets are kept (PEFT needs feedforward_modules within target_modules).
    Raises ConfigError for an unset field on an architecture without defaults.
    """
    targets, ff = cfg.target_modules, cfg.feedforward_modules
    if targets is None:
        targets = _default(DEFAULT_TARGETS, model_type, "target_modules")
    if ff is None:
        ff = _default(DEFAULT_FEEDFORWARD, model_type, "feedforward_modules")
        if isinstance(targets, list):
            ff = [f for f in ff if f in targets]
    return dataclasses.replace(cfg, target_modules=targets, feedforward_modules=ff)


def _default(table: dict, model_type: Optional[str], field: str) -> list:
    if model_type not in table:
        raise ConfigError(
            f"method.{field} is not set and there is no (IA)^3 default for model type "
            f"{model_type!r} (defaults exist for {', '.join(sorted(table))}); set method.{field}"
        )
    return list(table[model_type])


def to_peft_config(cfg: Ia3Config) -> dict:
    """The keys Hugging Face PEFT's IA3Config reads from adapter_config.json (cfg already resolved)."""

    def names(v):
        return v if isinstance(v, str) else sorted(v)

    return {
        "peft_type": "IA3",
        "target_modules": names(cfg.target_modules),
        "feedforward_modules": names(cfg.feedforward_modules),
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
        "modules_to_save": None,
        "exclude_modules": None,
    }


def from_peft_config(d: dict) -> Ia3Config:
    if d.get("modules_to_save"):
        raise ConfigError("this PEFT IA3 adapter uses modules_to_save, which is not supported yet")
    if d.get("exclude_modules"):
        raise ConfigError("this PEFT IA3 adapter uses exclude_modules, which is not supported yet")
    return Ia3Config(
        target_modules=d.get("target_modules"), feedforward_modules=d.get("feedforward_modules")
    )
