"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
n trainable embeddings put in front of every input; the model stays frozen. Outputs at the
virtual positions are dropped, so callers see (batch, tokens) shapes. Not mergeable.
"""

import dataclasses

from torch import nn

from ...errors import ConfigError
from ..base import MethodSpec
from ..registry import register_method
from ..virtual_tokens import PromptTable, attach_virtual_tokens
from .config import PromptTuningConfig, from_peft_config, to_peft_config
from .layers import PromptTuningLayer, initial_table

__all__ = ["PromptTuningConfig", "PromptTuningLayer", "apply_prompt_tuning"]


def apply_prompt_tuning(
    model: nn.Module, cfg: PromptTuningConfig, adapter_name: str = "default"
) -> None:
    """Add `cfg.num_virtual_tokens` trainable virtual tokens as adapter `adapter_name`.

    The method's own part of `MethodSpec.apply`: afterwards only they train. Raises ConfigError
    when init is 'text' and no tokenizer can be found, or when the model holds another
    prompt-based method's adapter.
    """
    token_ids = _text_ids(cfg.init_text, cfg.tokenizer) if cfg.init == "text" else None
    table = initial_table(model.get_input_embeddings(), cfg.num_virtual_tokens, cfg.init, token_ids)
    attach_virtual_tokens(model, PromptTuningLayer).add_encoder(adapter_name, PromptTable(table))


def resolve(model: nn.Module, cfg: PromptTuningConfig) -> PromptTuningConfig:
    """A text init without method.tokenizer uses the model's own; the recorded (and saved) config
    names the tokenizer used."""
    if cfg.init != "text" or cfg.tokenizer:
        return cfg
    return dataclasses.replace(cfg, tokenizer=getattr(model, "name_or_path", None))


def _text_ids(text: str, tokenizer: str) -> list:
    if not tokenizer:
        raise ConfigError(
            "method.init is 'text' but no tokenizer is known: the model has no path; set "
            "method.tokenizer to a tokenizer name or directory"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except OSError as e:
        raise ConfigError(
            f"method.tokenizer={tokenizer!r} cannot be loaded ({e}); give a tokenizer directory"
        ) from None
    return tok(text)["input_ids"]  # as PEFT: with the special tokens the tokenizer adds


register_method(
    MethodSpec(
        name="prompt_tuning",
        config_cls=PromptTuningConfig,
        apply=apply_prompt_tuning,
        resolve=resolve,
        is_prompt_based=True,
        peft_type="PROMPT_TUNING",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
