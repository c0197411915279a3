"""Token-weighted mean loss and perplexity over encoded examples."""

import math

import torch

from ..data.collate import collate
from ..objectives.sft import causal_lm_loss


@torch.no_grad()
def mean_loss(model, examples: list, pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every labelled token of `examples`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        loss, n = causal_lm_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / max(count, 1)


def perplexity(model, examples: list, pad_id: int, batch_size: int = 8) -> float:
    return math.exp(min(mean_loss(model, examples, pad_id, batch_size), 50.0))
