"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
n trainable embeddings put in front of every input; the model stays frozen. Outputs at the
virtual positions are dropped, so callers see (batch, tokens) shapes. Not mergeable.
"""
import dataclasses

from torch import nn

from ...errors import ConfigError
from ..base import MethodSpec, mark_trainable, record_adapter
from ..virtual_tokens import PromptTable, attach_virtual_tokens
from ..registry import register_method
from .config import PromptTuningConfig, from_peft_config, to_peft_config
from .layers import PromptTuningLayer, initial_table

__all__ = ["PromptTuningConfig", "PromptTuningLayer", "apply_prompt_tuning"]


def apply_prompt_tuning(model: nn.Module, cfg: PromptTuningConfig, adapter_name: str = "default") -> nn.Module:
    """Add `cfg.num_virtual_tokens` trainable virtual tokens as adapter `adapter_name`.

    Only they train afterwards. Raises ConfigError when init is 'text' and no tokenizer can be
    found, or when the model holds another prompt-based method's adapter.
    """
    token_ids = None
    if cfg.init == "text":  # the recorded (and saved) config names the tokenizer used
        cfg = dataclasses.replace(cfg, tokenizer=cfg.tokenizer or getattr(model, "name_or_path", None))
        token_ids = _text_ids(cfg.init_text, cfg.tokenizer)
    table = initial_table(model.get_input_embeddings(), cfg.num_virtual_tokens, cfg.init, token_ids)
    attach_virtual_tokens(model, PromptTuningLayer).add_encoder(adapter_name, PromptTable(table))
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


def _text_ids(text: str, tokenizer: str) -> list:
    if not tokenizer:
        raise ConfigError("method.init is 'text' but no tokenizer is known: the model has no path; set "
                          "method.tokenizer to a tokenizer name or directory")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except OSError as e:
        raise ConfigError(f"method.tokenizer={tokenizer!r} cannot be loaded ({e}); give a tokenizer "
                          "directory") from None
    return tok(text)["input_ids"]  # as PEFT: with the special tokens the tokenizer adds


register_method(MethodSpec(name="prompt_tuning", config_cls=PromptTuningConfig, apply=apply_prompt_tuning,
                           is_prompt_based=True, peft_type="PROMPT_TUNING", to_peft_config=to_peft_config,
                           from_peft_config=from_peft_config))
