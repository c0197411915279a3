"""Prompt tuning config: n trainable virtual-token embeddings put in front of the input."""

from dataclasses import dataclass
from typing import Optional

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

INITS = {
    "random": "RANDOM",
    "vocab": "SAMPLE_VOCAB",
    "text": "TEXT",
}  # ours -> PEFT's prompt_tuning_init


@dataclass
class PromptTuningConfig(MethodConfig):
    name: str = opt("prompt_tuning", "method name")
    num_virtual_tokens: int = opt(
        20, "number of virtual tokens put in front of every input; 8-100 is typical"
    )
    init: str = opt(
        "random",
        "initial embeddings: random (N(0, 1), as PEFT), vocab (embeddings of random "
        "vocabulary tokens) or text (embeddings of init_text, repeated or cut to fit)",
    )
    init_text: Optional[str] = opt(
        None, "text whose token embeddings start the prompt (init: text), e.g. a task description"
    )
    tokenizer: Optional[str] = opt(
        None, "tokenizer name or path for init: text; default: the model's own path"
    )

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise ConfigError(
                f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}"
            )
        if self.init not in INITS:
            raise ConfigError(f"method.init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError(
                "method.init is 'text' but method.init_text is empty; give the text to start from"
            )
        if self.init != "text" and (self.init_text or self.tokenizer):
            raise ConfigError(
                f"method.init_text/method.tokenizer are only used with init: text, but init is "
                f"{self.init!r}; set init: text or drop them"
            )


def to_peft_config(cfg: PromptTuningConfig) -> dict:
    """PEFT's PromptTuningConfig keys; dims are left to PEFT, which reads them from the model."""
    return {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "num_transformer_submodules": 1,
        "token_dim": None,
        "num_attention_heads": None,
        "num_layers": None,
        "prompt_tuning_init": INITS[cfg.init],
        "prompt_tuning_init_text": cfg.init_text,
        "tokenizer_name_or_path": cfg.tokenizer,
        "tokenizer_kwargs": None,
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> PromptTuningConfig:
    # The embeddings come from the file: the init is irrelevant (and 'text' would need the tokenizer).
    if d.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(
            f"PEFT prompt tuning with num_transformer_submodules={d['num_transformer_submodules']} "
            f"(encoder-decoder models) is not supported"
        )
    return PromptTuningConfig(num_virtual_tokens=d["num_virtual_tokens"])
