"""P-tuning config: virtual tokens computed by a prompt encoder (LSTM + MLP, or MLP), optionally
placed by a template that mixes them with anchor words around the input.

Template syntax: literal text, `[P]` for one soft token and exactly one `{text}` for the input,
e.g. "[P][P] {text} [P] It was". Inputs are built with `p_tuning.template_ids`, which writes
`placeholder_token_id` at every `[P]`; the model replaces those embeddings by the encoder's
outputs. The `num_virtual_tokens` soft tokens are put in front of everything (PEFT's p-tuning).
"""

import re
from dataclasses import dataclass
from typing import Optional

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

ENCODERS = {"lstm": "LSTM", "mlp": "MLP"}  # ours -> PEFT's encoder_reparameterization_type
SOFT, TEXT = "[P]", "{text}"


@dataclass
class PTuningConfig(MethodConfig):
    name: str = opt("p_tuning", "method name")
    num_virtual_tokens: int = opt(
        20,
        "soft tokens put in front of every input (PEFT's p-tuning); 0 with a template "
        "uses the template's [P] tokens only",
    )
    encoder: str = opt(
        "lstm",
        "prompt encoder: lstm (bidirectional LSTM + 2-layer MLP, Liu et al.) or mlp "
        "(3-layer MLP, PEFT's default)",
    )
    encoder_hidden_size: Optional[int] = opt(
        None, "hidden width of the encoder; default: the model's hidden size"
    )
    encoder_num_layers: int = opt(2, "LSTM layers (encoder: lstm)")
    encoder_dropout: float = opt(
        0.0, "dropout between LSTM layers (encoder: lstm, encoder_num_layers > 1)"
    )
    template: Optional[str] = opt(
        None,
        "e.g. '[P][P] {text} [P] It was': soft tokens [P] and anchor words around "
        "the input {text}; inputs come from p_tuning.template_ids",
    )
    placeholder_token_id: Optional[int] = opt(
        None,
        "token id that marks a [P] slot in the inputs (template); pick one the data never contains",
    )
    folded: bool = opt(
        False,
        "the adapter holds the encoder's output as a plain table (set by fold() and by "
        "loading a saved adapter)",
    )

    def __post_init__(self):
        if self.num_virtual_tokens < 0:
            raise ConfigError(
                f"method.num_virtual_tokens must be >= 0, got {self.num_virtual_tokens}"
            )
        if self.encoder not in ENCODERS:
            raise ConfigError(f"method.encoder must be lstm or mlp, got {self.encoder!r}")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ConfigError(
                f"method.encoder_hidden_size must be >= 1 or unset, got {self.encoder_hidden_size}"
            )
        if self.encoder_num_layers < 1 or (self.encoder == "mlp" and self.encoder_num_layers != 2):
            raise ConfigError(
                f"method.encoder_num_layers={self.encoder_num_layers}: it counts LSTM layers (>= 1); "
                f"the mlp encoder has a fixed depth, leave it at 2"
            )
        if not 0 <= self.encoder_dropout < 1 or (
            self.encoder_dropout and (self.encoder == "mlp" or self.encoder_num_layers == 1)
        ):
            raise ConfigError(
                f"method.encoder_dropout={self.encoder_dropout} must be in [0, 1) and acts only "
                f"between LSTM layers (encoder: lstm, encoder_num_layers > 1)"
            )
        self._check_template()

    def _check_template(self):
        if self.template is None:
            if self.placeholder_token_id is not None:
                raise ConfigError(
                    "method.placeholder_token_id is set but method.template is not; drop one"
                )
            if self.num_virtual_tokens < 1:
                raise ConfigError("method.num_virtual_tokens must be >= 1 without a template")
            return
        if self.template.count(TEXT) != 1 or self.soft_in_template < 1:
            raise ConfigError(
                f"method.template={self.template!r} needs exactly one {TEXT} and at least one {SOFT}"
            )
        if self.placeholder_token_id is None or self.placeholder_token_id < 0:
            raise ConfigError(
                "method.template needs method.placeholder_token_id (the id written at each [P])"
            )

    @property
    def soft_in_template(self) -> int:
        return self.template.count(SOFT) if self.template else 0

    @property
    def total_virtual_tokens(self) -> int:
        """Rows of the encoder's output: the prepended tokens, then the template's [P] slots."""
        return self.num_virtual_tokens + self.soft_in_template


def template_pieces(template: str) -> list[str]:
    """The template cut into [P], {text} and literal pieces (empty ones dropped)."""
    return [p for p in re.split(r"(\[P\]|\{text\})", template) if p]


def to_peft_config(cfg: PTuningConfig) -> dict:
    """PEFT's PromptEncoderConfig keys (+ template keys, which PEFT ignores, when a template is used)."""
    d = {
        "peft_type": "P_TUNING",
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "num_transformer_submodules": 1,
        "token_dim": None,
        "num_attention_heads": None,
        "num_layers": None,
        "encoder_reparameterization_type": ENCODERS[cfg.encoder],
        "encoder_hidden_size": cfg.encoder_hidden_size,
        "encoder_num_layers": cfg.encoder_num_layers,
        "encoder_dropout": cfg.encoder_dropout,
        "modules_to_save": None,
    }
    if cfg.template is not None:
        d.update(template=cfg.template, placeholder_token_id=cfg.placeholder_token_id)
    return d


def from_peft_config(d: dict) -> PTuningConfig:
    if d.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(
            f"PEFT p-tuning with num_transformer_submodules={d['num_transformer_submodules']} "
            f"(encoder-decoder models) is not supported"
        )
    encoder = {v: k for k, v in ENCODERS.items()}.get(
        d.get("encoder_reparameterization_type", "MLP")
    )
    if encoder is None:
        raise ConfigError(
            f"PEFT p-tuning encoder {d.get('encoder_reparameterization_type')!r} is not supported"
        )
    # The file holds the encoder's output; the encoder settings are recorded, not used.
    layers = d.get("encoder_num_layers", 2) if encoder == "lstm" else 2
    return PTuningConfig(
        num_virtual_tokens=d["num_virtual_tokens"],
        encoder=encoder,
        folded=True,
        encoder_hidden_size=d.get("encoder_hidden_size"),
        encoder_num_layers=layers,
        encoder_dropout=d.get("encoder_dropout", 0.0) if layers > 1 and encoder == "lstm" else 0.0,
        template=d.get("template"),
        placeholder_token_id=d.get("placeholder_token_id"),
    )
