"""Causal-LM loss computed only where labels carry loss.

The output head runs on the selected positions only (not the full (B, T, vocab) logits), in
chunks, so memory stays at one chunk of logits: a plain bias-free linear head computes its
gradients during the forward pass (head_loss.py); other heads recompute each chunk in backward.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .head_loss import fused_head_loss

IGNORE = -100


def causal_lm_loss(
    model,
    input_ids,
    attention_mask,
    labels,
    chunk_size: int = 256,
    position_ids=None,
    model_kwargs: Optional[dict] = None,
) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy over label positions, number of such positions).

    With `position_ids` (a packed batch, see data.packing) the model gets no 2D attention mask:
    the restarting position_ids confine attention to each example.
    """
    inputs = {**_inputs(input_ids, attention_mask, position_ids), **(model_kwargs or {})}
    if not supports_hidden_path(model):
        return _full_logits_loss(model, inputs, labels)
    hidden = model.base_model(**inputs).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # position t predicts token t+1
    mask = targets != IGNORE
    selected = hidden[:, :-1][mask]  # (N, H)
    wanted = targets[mask]  # (N,)
    n = int(wanted.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    head = model.get_output_embeddings()
    if torch.is_grad_enabled() and type(head) is nn.Linear and head.bias is None:
        return fused_head_loss(selected, head.weight, wanted, chunk_size) / n, n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        h, t = selected[start : start + chunk_size], wanted[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, t)
    return total / n, n


def supports_hidden_path(model) -> bool:
    """True when logits = output head(last hidden state) with nothing in between (no softcapping/scale)."""
    cfg = getattr(model, "config", None)
    if (
        cfg is None
        or model.get_output_embeddings() is None
        or getattr(model, "base_model", model) is model
    ):
        return False
    return not any(
        getattr(cfg, k, None)
        for k in ("final_logit_softcapping", "logit_scale", "output_multiplier")
    )


def _inputs(input_ids, attention_mask, position_ids) -> dict:
    if position_ids is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    # No cache: transformers only detects packed position_ids when past_key_values is None.
    return {
        "input_ids": input_ids,
        "attention_mask": None,
        "position_ids": position_ids,
        "use_cache": False,
    }


def _chunk_loss(head, h, t):
    return F.cross_entropy(head(h).float(), t, reduction="sum")


def _full_logits_loss(model, inputs, labels):
    logits = model(**inputs).logits[:, :-1].float()
    targets = labels[:, 1:]
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss / max(n, 1), n
