"""A classification head in place of the LM head.

`SequenceClassifier` runs the language model's backbone (`lm.base_model`: LlamaModel, GPT2Model,
BertModel ...), reads one vector per sequence (`pool`) and maps it to class logits with a linear
head. The LM head is never run. Decoders read their last real token (the only one that has seen the
whole text), encoders their first ([CLS]).
"""

import torch
from torch import nn

from ..errors import ConfigError

POOLINGS = ("last", "first", "mean")


def is_decoder(lm: nn.Module) -> bool:
    """True for causal (generating) LMs, False for masked-LM encoders such as BERT."""
    return bool(getattr(lm, "can_generate", lambda: False)())


def resolve_pooling(lm: nn.Module, pooling: str) -> str:
    """'auto' -> 'last' for decoders, 'first' for encoders; other values pass through."""
    if pooling == "auto":
        return "last" if is_decoder(lm) else "first"
    if pooling not in POOLINGS:
        raise ConfigError(f"task.pooling must be auto, last, first or mean, got {pooling!r}")
    return pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per sequence from hidden (B, T, H) and its 0/1 mask (B, T): the last or first real
    token, or the mean over real tokens. Works with left or right padding."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    if how == "last":
        index = (mask * (positions + 1)).argmax(dim=1)  # (B,) last position holding a real token
    elif how == "first":
        index = (mask * (mask.shape[1] - positions)).argmax(dim=1)
    elif how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    else:
        raise ConfigError(f"unknown pooling {how!r}; use last, first or mean")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # (B, H)


class SequenceClassifier(nn.Module):
    """lm's backbone + pooling + a linear head (hidden size -> n_classes), with a bias unless
    `bias=False` (a reward model's scalar head has none, as transformers' `score` heads).

    `prefix` (optional, models.prefix_cache.FrozenPrefix) lets forward() take the cached output of
    the frozen lower blocks (`hidden=`) instead of token ids.
    """

    def __init__(self, lm: nn.Module, n_classes: int, pooling: str = "auto", bias: bool = True):
        super().__init__()
        self.lm = lm
        self.pooling = resolve_pooling(lm, pooling)
        self.head = nn.Linear(lm.config.hidden_size, n_classes, bias=bias)
        self.prefix = None

    @property
    def backbone(self) -> nn.Module:
        return self.lm.base_model

    def forward(self, input_ids=None, attention_mask=None, hidden=None) -> torch.Tensor:
        """Class logits (B, n_classes), float32."""
        if hidden is not None:
            states = self.prefix.top(hidden, attention_mask)  # (B, T, H)
        else:
            states = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        return self.head(pool(states, attention_mask, self.pooling).float())
