"""Causal-LM loss computed only where labels carry loss.

The output head runs on the selected positions only (not the full (B, T, vocab) logits), in
chunks, each recomputed in backward, so memory stays at one chunk of logits.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def causal_lm_loss(model, input_ids, attention_mask, labels, chunk_size: int = 1024) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy over label positions, number of such positions)."""
    if not supports_hidden_path(model):
        return _full_logits_loss(model, input_ids, attention_mask, labels)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # position t predicts token t+1
    mask = targets != IGNORE
    selected = hidden[:, :-1][mask]  # (N, H)
    wanted = targets[mask]  # (N,)
    n = int(wanted.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    head = model.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        h, t = selected[start:start + chunk_size], wanted[start:start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, t)
    return total / n, n


def supports_hidden_path(model) -> bool:
    """True when logits = output head(last hidden state) with nothing in between (no softcapping/scale)."""
    cfg = getattr(model, "config", None)
    if cfg is None or model.get_output_embeddings() is None or getattr(model, "base_model", model) is model:
        return False
    return not any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier"))


def _chunk_loss(head, h, t):
    return F.cross_entropy(head(h).float(), t, reduction="sum")


def _full_logits_loss(model, input_ids, attention_mask, labels):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss / max(n, 1), n
