"""Epoch orders: a seeded permutation, optionally grouped by length so batches carry less padding."""

from typing import Optional

import torch

MEGA = 32  # batches per sorting window: larger = less padding, less randomness


def epoch_order(
    n: int,
    batch_size: int,
    seed: int,
    lengths: Optional[list[int]] = None,
    strata: Optional[list] = None,
) -> list[int]:
    """Every index in range(n) once; consecutive batch_size slices are the batches.

    With `lengths`, a seeded permutation is cut into windows of MEGA batches, each window is sorted
    by length and cut into batches, and the batches are shuffled (seeded), as HF's
    LengthGroupedSampler does; the final short batch, if any, stays last. With `strata` too (a
    class per example), each window keeps its strata mixed in every batch (see _longest_first).
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen).tolist()
    if lengths is None:
        return order
    window = MEGA * batch_size
    batches = []
    for start in range(0, n, window):
        chunk = _longest_first(order[start : start + window], lengths, strata)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + tail
    return [i for batch in shuffled for i in batch]


def _longest_first(indices: list[int], lengths: list[int], strata: Optional[list]) -> list[int]:
    """indices sorted by length, longest first. With strata, each stratum is sorted on its own
    and the strata are interleaved by rank (a stratum's k-th longest of m goes at (k + 0.5) / m),
    so consecutive slices hold the strata in the window's proportions: when one class is longer
    than another (spam vs ham), sorting by length alone would give batches of one class."""
    if strata is None:
        return sorted(indices, key=lambda i: -lengths[i])
    members: dict = {}
    for i in indices:
        members.setdefault(strata[i], []).append(i)
    ranked = []
    for stratum in members.values():
        stratum.sort(key=lambda i: -lengths[i])
        ranked += [((k + 0.5) / len(stratum), i) for k, i in enumerate(stratum)]
    return [i for _, i in sorted(ranked)]
