"""Per-sequence log-probabilities of the labelled (response) tokens, straight from a model.

The output head runs only at labelled positions and in chunks (each chunk's logits are recomputed in
backward rather than kept), so a batch never holds its full (B, T, vocab) logits: with a 49k
vocabulary that is most of a preference step's memory.
"""

import torch
from torch.utils.checkpoint import checkpoint

from .sft import IGNORE, _inputs, supports_hidden_path


def sequence_logps(
    model, input_ids, attention_mask, labels, chunk_size: int = 256, position_ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) over each row's labelled tokens (B,), number of such tokens (B,)).

    Position t predicts token t+1; labels == -100 (prompt, padding) carry nothing.
    """
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE
    counts = mask.sum(1)
    inputs = _inputs(input_ids, attention_mask, position_ids)
    if not supports_hidden_path(model):
        logits = model(**inputs).logits[:, :-1].float()  # (B, T-1, V)
        logp = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0)[..., None])[..., 0]
        return (logp * mask).sum(1), counts
    hidden = model.base_model(**inputs).last_hidden_state[:, :-1]  # (B, T-1, H)
    selected, wanted = hidden[mask], targets[mask]  # (N, H), (N,)
    rows = torch.nonzero(mask)[:, 0]  # (N,) the row of each selected position
    head = model.get_output_embeddings()
    parts = []
    for start in range(0, wanted.numel(), chunk_size):
        h, t = selected[start : start + chunk_size], wanted[start : start + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logps(head, h, t))
    per_token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device).index_add(
        0, rows, per_token
    )
    return sums, counts


def _chunk_logps(head, h, t):
    logits = head(h).float()  # (n, V)
    return logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, -1)
