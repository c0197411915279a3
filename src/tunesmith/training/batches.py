"""Which examples each step takes: the number of steps of a run and the micro-batches of the
seeded epoch orders (global ones under torchrun: world x batch_size examples)."""

import math
from typing import Iterator, Optional

from ..config.schema import TrainConfig
from ..data.sampling import epoch_order


def total_steps(n_examples: int, cfg: TrainConfig, world: int = 1) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / (cfg.batch_size * world))
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def micro_batches(
    n: int,
    cfg: TrainConfig,
    epoch: int,
    skip: int,
    lengths: Optional[list[int]] = None,
    world: int = 1,
    strata: Optional[list] = None,
) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, index in epoch, example indices of the global micro-batch: world x batch_size) from
    `epoch`/`skip` on, forever (grouped by length when `lengths` is given, keeping `strata` mixed). An epoch's last, short
    micro-batch is skipped when it has fewer examples than there are ranks."""
    size = cfg.batch_size * world
    while True:
        order = epoch_order(n, size, cfg.seed + epoch, lengths, strata)
        for i in range(skip, math.ceil(n / size)):
            batch = order[i * size : (i + 1) * size]
            if len(batch) >= world:
                yield epoch, i, batch
        epoch, skip = epoch + 1, 0


def steps_per_epoch(n_examples: int, cfg: TrainConfig, world: int = 1) -> int:
    return max(1, math.ceil(math.ceil(n_examples / (cfg.batch_size * world)) / cfg.grad_accum))
