"""Token-weighted mean loss and perplexity over encoded examples; under torchrun each rank scores
its share of the batches and the sums are added over the ranks (training/held_out.py)."""

import math

import torch

from ..data.collate import collate
from ..objectives.sft import causal_lm_loss
from ..training.held_out import rank_share, summed_over_ranks
from ..training.objective import WeightedMeans


@torch.no_grad()
def mean_loss(model, examples: list, pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every labelled token of `examples`.

    Under a process group every rank must call it (with the same examples); each scores its share
    and all get the mean over the whole of `examples`."""
    was_training = model.training
    model.eval()
    totals = WeightedMeans()
    share = rank_share(examples, batch_size)
    for start in range(0, len(share), batch_size):
        batch = collate(share[start : start + batch_size], pad_id)
        loss, n = causal_lm_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        totals.add({"loss": loss.item()}, n)
    model.train(was_training)
    return summed_over_ranks(totals).means().get("loss", 0.0)


def perplexity(model, examples: list, pad_id: int, batch_size: int = 8) -> float:
    return math.exp(min(mean_loss(model, examples, pad_id, batch_size), 50.0))
