"""Per-sequence log-probabilities of the labelled (response) tokens, straight from a model.

The output head runs only at labelled positions and in chunks (each chunk's logits are recomputed in
backward rather than kept), so a batch never holds its full (B, T, vocab) logits: with a 49k
vocabulary that is most of a preference step's memory.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from .sft import IGNORE, _inputs, supports_hidden_path


def sequence_logps(
    model, input_ids, attention_mask, labels, chunk_size: int = 256, position_ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) over each row's labelled tokens (B,), number of such tokens (B,)).

    Position t predicts token t+1; labels == -100 (prompt, padding) carry nothing.
    """
    stats = token_logps(model, input_ids, attention_mask, labels, chunk_size, position_ids)
    return stats.logps.sum(1), stats.mask.sum(1)


@dataclass
class TokenStats:
    """Per-position statistics of the labelled tokens, (B, T-1), zero where mask is False."""

    logps: torch.Tensor  # log p(token t+1 | tokens <= t), float32
    mask: torch.Tensor  # bool: position t predicts a labelled token
    hidden: Optional[torch.Tensor] = None  # (B, T-1, H) last hidden states (with_hidden)
    entropy: Optional[torch.Tensor] = None  # entropy of the predicted distribution, no gradient


def token_logps(
    model,
    input_ids,
    attention_mask,
    labels,
    chunk_size: int = 256,
    position_ids=None,
    temperature: float = 1.0,
    with_hidden: bool = False,
    with_entropy: bool = False,
) -> TokenStats:
    """Log-probabilities of each labelled token (the distribution at `temperature`, as it was
    sampled), and on request the hidden states (a value head's input) and the entropies."""
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE
    inputs = _inputs(input_ids, attention_mask, position_ids)
    if with_hidden or supports_hidden_path(model):
        hidden = model.base_model(**inputs).last_hidden_state[:, :-1]  # (B, T-1, H)
        head = model.get_output_embeddings()
    else:
        hidden, head = None, None
        logits = model(**inputs).logits[:, :-1]  # (B, T-1, V)
    selected = (hidden if head is not None else logits)[mask]  # (N, H) or (N, V)
    wanted = targets[mask]
    logps, entropies = [], []
    for start in range(0, wanted.numel(), chunk_size):
        x, t = selected[start : start + chunk_size], wanted[start : start + chunk_size]
        if head is not None and torch.is_grad_enabled():
            logps.append(checkpoint(_chunk_logps, head, x, t, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logps(head, x, t, temperature))
        if with_entropy:
            entropies.append(_chunk_entropy(head, x, temperature))
    stats = TokenStats(_scatter(logps, mask), mask, hidden if with_hidden else None)
    if with_entropy:
        stats.entropy = _scatter(entropies, mask)
    return stats


def _scatter(parts: list, mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if parts:
        out = out.masked_scatter(mask, torch.cat(parts))
    return out


def _logits(head, x, temperature: float) -> torch.Tensor:
    logits = (head(x) if head is not None else x).float()
    return logits / temperature if temperature != 1.0 else logits


def _chunk_logps(head, x, t, temperature: float = 1.0):
    logits = _logits(head, x, temperature)  # (n, V)
    return logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, -1)


@torch.no_grad()
def _chunk_entropy(head, x, temperature: float):
    logp = torch.log_softmax(_logits(head, x, temperature), -1)
    return -(logp.exp() * logp).sum(-1)
