"""Held-out evaluation shared across the ranks of a torchrun run.

Each rank scores a disjoint, contiguous share of the held-out examples; the sums (loss x terms,
terms, any other weighted metric) or the per-example rows (class probabilities) are then combined
over the ranks, so every rank ends with the numbers one process computes over the whole split.
Notable:
- Shares are cut at the evaluator's batch boundaries, so every batch holds the examples it holds in
  one process: its padding is unchanged, and so is a loss that couples a batch's examples (KTO's KL
  estimate). When the batches do not divide evenly the first ranks take one more (or a rank none).
- Outside a process group (one process, or a command that never entered the training loop) a share
  is the whole split and nothing is combined.
- Each call ends with one all_gather, so every rank of the group must make the same calls in the
  same order: the loop evaluates on every rank at the same steps, and a recipe's code after train()
  runs on every rank. An evaluator called on rank 0 alone would wait for the others forever.
- The forwards between issue no collectives (evaluation calls the model, not DDP's wrapper; under
  FSDP it runs inside full_weights, whose blocks stay whole), so a rank with fewer batches, or
  none, simply reaches the gather sooner.
"""

from typing import Callable

import numpy as np
import torch.distributed as dist

from .distributed import collective
from .objective import WeightedMeans


def share_bounds(n: int, batch_size: int, rank: int, world: int) -> range:
    """Indices of rank `rank`'s share of n examples evaluated in batches of `batch_size`: whole
    consecutive batches, as many per rank as they divide into (the first ranks take one more)."""
    batches = -(-n // batch_size)  # ceil
    per_rank, extra = divmod(batches, world)
    first = rank * per_rank + min(rank, extra)
    last = first + per_rank + (1 if rank < extra else 0)
    return range(min(first * batch_size, n), min(last * batch_size, n))


def rank_share(examples: list, batch_size: int = 1) -> list:
    """This rank's share of the held-out `examples` (all of them outside a process group)."""
    if not _grouped():
        return examples
    share = share_bounds(len(examples), batch_size, dist.get_rank(), dist.get_world_size())
    return examples[share.start : share.stop]


def summed_over_ranks(means: WeightedMeans) -> WeightedMeans:
    """The sums and weights of every rank's share added up; in rank order, so that every rank
    holds the same floats."""
    if not _grouped():
        return means
    total = WeightedMeans()
    for part in _gathered(means):
        total.merge(part)
    return total


def rows_over_ranks(rows_of: Callable[[list], np.ndarray], examples: list) -> np.ndarray:
    """rows_of(examples) -> one row per example (N, ...), each rank computing the rows of its share
    and every rank receiving all of them in example order. For per-example outputs whose metrics
    need the whole split (a confusion matrix, calibration)."""
    if not _grouped() or not examples:
        return rows_of(examples)
    share = rank_share(examples)
    parts = _gathered(rows_of(share) if share else None)  # a rank with no share sends None
    return np.concatenate([p for p in parts if p is not None])


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gathered(obj) -> list:
    parts = [None] * dist.get_world_size()
    collective(dist.all_gather_object, parts, obj)
    return parts
