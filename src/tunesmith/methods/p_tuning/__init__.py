"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens computed by a trainable prompt
encoder (bidirectional LSTM + MLP, or PEFT's MLP) from trainable embeddings; the model stays frozen.

`num_virtual_tokens` soft tokens go in front of the input (PEFT's p-tuning, outputs at those
positions are dropped). A template such as "[P][P] {text} [P] It was" also places soft tokens
between anchor words: build the inputs with `template_ids`, which writes the config's
`placeholder_token_id` at each [P]; the model puts the encoder's outputs there. The saved file
holds the encoder's output (PEFT's `prompt_embeddings`); `fold()` does the same in memory.
Not mergeable.
"""

import torch
from torch import nn

from ...errors import ConfigError
from ..base import MethodSpec, mark_trainable, record_adapter
from ..registry import register_method
from ..virtual_tokens import PromptTable, attach_virtual_tokens, fold_virtual_tokens
from .config import SOFT, TEXT, PTuningConfig, from_peft_config, template_pieces, to_peft_config
from .layers import LstmPromptEncoder, MlpPromptEncoder, PTuningLayer

__all__ = ["PTuningConfig", "PTuningLayer", "apply_p_tuning", "fold", "template_ids"]


def apply_p_tuning(
    model: nn.Module, cfg: PTuningConfig, adapter_name: str = "default"
) -> nn.Module:
    """Add a prompt encoder of `cfg.total_virtual_tokens` virtual tokens as adapter `adapter_name`.

    Only the encoder trains afterwards. Raises ConfigError when the placeholder id is not in the
    vocabulary or the model holds another prompt-based method's adapter.
    """
    weight = model.get_input_embeddings().weight
    if cfg.placeholder_token_id is not None and cfg.placeholder_token_id >= weight.shape[0]:
        raise ConfigError(
            f"method.placeholder_token_id={cfg.placeholder_token_id} is not a token id of this model "
            f"(vocabulary size {weight.shape[0]})"
        )
    layer = attach_virtual_tokens(model, PTuningLayer)
    rows, dim = cfg.total_virtual_tokens, weight.shape[1]
    hidden = cfg.encoder_hidden_size or dim
    if cfg.folded:
        encoder = PromptTable(
            torch.randn(rows, dim)
        )  # the encoder's output as a table (N(0, 1) start)
    elif cfg.encoder == "lstm":
        encoder = LstmPromptEncoder(rows, dim, hidden, cfg.encoder_num_layers, cfg.encoder_dropout)
    else:
        encoder = MlpPromptEncoder(rows, dim, hidden)
    layer.add_encoder(
        adapter_name, encoder.to(weight.device), cfg.num_virtual_tokens, cfg.placeholder_token_id
    )
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


def fold(model: nn.Module, adapter_name: str = "default") -> None:
    """Replace the encoder of adapter `adapter_name` by the table it computes (in place)."""
    fold_virtual_tokens(model, adapter_name)


def template_ids(template: str, text: str, tokenizer, placeholder_token_id: int) -> list[int]:
    """Token ids of `text` placed in `template`: each [P] becomes placeholder_token_id, {text} and
    the literal pieces are tokenized separately without special tokens (add a BOS yourself if the
    model wants one). E.g. template_ids("[P][P] {text} [P] It was", "great film", tok, 0)."""
    ids = []
    for piece in template_pieces(template):
        if piece == SOFT:
            ids.append(placeholder_token_id)
        else:
            ids += tokenizer(text if piece == TEXT else piece, add_special_tokens=False)[
                "input_ids"
            ]
    return ids


register_method(
    MethodSpec(
        name="p_tuning",
        config_cls=PTuningConfig,
        apply=apply_p_tuning,
        is_prompt_based=True,
        peft_type="P_TUNING",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
