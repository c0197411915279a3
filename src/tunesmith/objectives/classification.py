"""Classification objectives: (class-weighted) cross-entropy, and prompt-based label-word scores.

A prompt-based classifier scores class c by the LM's log-probability of its label word at the
answer slot: for a causal LM the next-token distribution at the token before the slot (and, for a
label word of several tokens, each following token given the ones before: the joint probability);
for a masked LM the distributions at [MASK] tokens put in the slot (one per word token, scored
independently). The loss is cross-entropy over those class scores, so no parameter is added.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .sft import supports_hidden_path


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """(sum_i w[y_i] * CE_i / B, B) for logits (B, K) and labels (B,); w = 1 without weights.
    label_smoothing: the target puts that mass uniformly over all K classes (as torch's).

    Dividing by B (not by the weight sum) keeps micro-batches additive under gradient accumulation.
    """
    w = weight.to(logits.device, torch.float32) if weight is not None else None
    loss = F.cross_entropy(
        logits.float(), labels, weight=w, reduction="sum", label_smoothing=label_smoothing
    )
    return loss / max(len(labels), 1), len(labels)


def logits_at(lm, batch: dict, positions: torch.Tensor, causal: bool, prefix=None) -> torch.Tensor:
    """Vocabulary logits (B, L, V), float32, at `positions` (B, L) of batch's sequences.

    Causal LMs run the output head on those positions only; `prefix` (a FrozenPrefix) with
    batch["hidden"] runs only the top blocks on cached hidden states.
    """
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)  # (B, 1)
    if causal and supports_hidden_path(lm):
        if prefix is not None and "hidden" in batch:
            states = prefix.top(batch["hidden"], batch["attention_mask"])
        else:
            states = lm.base_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
        return lm.get_output_embeddings()(states[rows, positions]).float()  # (B, L, V)
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[rows, positions].float()


def label_word_scores(
    lm, variants: Sequence[dict], words: Sequence[Sequence[int]], causal: bool, prefix=None
) -> torch.Tensor:
    """Class scores (B, K): the log-probability of each class's label word at the answer slot.

    variants: one batch (input_ids, attention_mask, slot (B,)) shared by all classes when every word
    is one token, else one batch per class with that class's word (causal) or masks (masked LM) at
    the slot. words[c]: token ids of class c's label word.
    """
    shift = 1 if causal else 0  # a causal LM predicts the token at p from position p - 1
    if len(variants) == 1:
        batch = variants[0]
        logp = torch.log_softmax(
            logits_at(lm, batch, (batch["slot"] - shift).unsqueeze(1), causal, prefix), -1
        )
        return logp[:, 0, [w[0] for w in words]]  # (B, K)
    scores = []
    for batch, word in zip(variants, words, strict=True):
        steps = torch.arange(len(word), device=batch["slot"].device)
        positions = batch["slot"].unsqueeze(1) + steps - shift  # (B, L)
        logp = torch.log_softmax(logits_at(lm, batch, positions, causal, prefix), -1)  # (B, L, V)
        target = (
            torch.tensor(word, device=logp.device).expand(logp.shape[0], -1).unsqueeze(-1)
        )  # (B, L, 1)
        scores.append(logp.gather(-1, target).squeeze(-1).sum(-1))  # (B,)
    return torch.stack(scores, dim=1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of probs (..., K)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)
