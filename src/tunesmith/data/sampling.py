"""Epoch orders: a seeded permutation, optionally grouped by length so batches carry less padding."""

from typing import Optional

import torch

MEGA = 32  # batches per sorting window: larger = less padding, less randomness


def epoch_order(
    n: int, batch_size: int, seed: int, lengths: Optional[list[int]] = None
) -> list[int]:
    """Every index in range(n) once; consecutive batch_size slices are the batches.

    With `lengths`, a seeded permutation is cut into windows of MEGA batches, each window is sorted
    by length and cut into batches, and the batches are shuffled (seeded), as HF's
    LengthGroupedSampler does; the final short batch, if any, stays last.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen).tolist()
    if lengths is None:
        return order
    window = MEGA * batch_size
    batches = []
    for start in range(0, n, window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + tail
    return [i for batch in shuffled for i in batch]
