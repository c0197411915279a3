"""A lean greedy decoder: the same tokens as HF `generate(do_sample=False)`, with less around them.

One prefill and then one forward per token on a DynamicCache, under torch.inference_mode, with
the output head run on the last position only (`logits_to_keep=1`) and no logits processors,
stopping criteria or output bookkeeping. Rows are left-padded; a finished row emits pad_token_id.
Models with virtual-token methods (prompt/prefix tuning) need HF generate instead.
"""

import inspect
from typing import Optional, Union

import torch
from transformers import DynamicCache

from ..models.compat import cache_kwarg


@torch.inference_mode()
def greedy_decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    max_new_tokens: int = 64,
    eos_token_id: Union[int, list, None] = None,
    pad_token_id: int = 0,
) -> torch.Tensor:
    """New tokens (B, n <= max_new_tokens) of greedy decoding from left-padded `input_ids` (B, T)."""
    mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
    positions = _positions(input_ids, mask)  # (B, T)
    eos = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), dtype=torch.long
    )
    extra = {cache_kwarg(model): DynamicCache(config=model.config), "use_cache": True}
    if _keeps_logits(model):
        extra["logits_to_keep"] = 1
    logits = _last_logits(
        model, input_ids=input_ids, attention_mask=mask, position_ids=positions, **extra
    )
    position = positions[:, -1:] + 1  # (B, 1)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    tokens = []
    for step in range(max_new_tokens):
        token = torch.where(done, pad_token_id, logits.argmax(-1))  # (B,)
        tokens.append(token)
        done = done | torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = _last_logits(
            model, input_ids=token[:, None], attention_mask=mask, position_ids=position, **extra
        )
        position = position + 1
    return torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros((input_ids.shape[0], 0))


def _last_logits(model, **kwargs) -> torch.Tensor:
    return model(**kwargs).logits[:, -1]  # (B, V)


def _positions(input_ids: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    # As HF generate: count real tokens only, so a left-padded row starts at position 0.
    if mask is None:
        return torch.arange(input_ids.shape[1]).expand(input_ids.shape[0], -1)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters
