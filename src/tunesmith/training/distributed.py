"""Data-parallel training on torch.distributed, launched by torchrun: DDP, and FSDP2 in fsdp.py.

Every rank runs the same program: it builds the same model from the same seed, trains on its slice
of each global micro-batch, and only rank 0 writes files. Notable:
- The objective's loss runs inside one module (`LossModule`) that DistributedDataParallel wraps:
  the objectives call submodules (model.base_model, the output head), not model(...), and the
  wrapper's forward is where DDP prepares the gradient reduction of the backward that follows.
- Gradients become the sum over all ranks' micro-batches of (loss x terms); the loop then divides
  by the global term count, so N ranks x batch B equal one process x batch N*B. DDP averages over
  ranks, hence `grad_sum_factor` = world size.
- Inner micro-batches of an update run under DDP's no_sync: one all-reduce per optimizer update.
- Collectives time out after train.distributed.timeout seconds with a TrainingError that says a
  rank failed or stalled; torchrun then stops the other ranks.
"""

import contextlib
import datetime
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..config.schema import DistributedConfig, TrainConfig
from ..errors import ConfigError, TrainingError
from ..utils import distributed as env
from ..utils.seeding import rng_state, seed_everything

log = logging.getLogger(__name__)


def resolve_backend(name: str, device: str) -> str:
    """train.distributed.backend for a model on `device` ("cpu", "cuda"): auto is nccl on GPUs,
    gloo on the CPU."""
    if name == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if name == "nccl" and device != "cuda":
        raise ConfigError(
            f"train.distributed.backend=nccl moves GPU tensors only, and the model is on {device}; "
            f"use train.distributed.backend=gloo or auto"
        )
    return name


def init_process_group(cfg: DistributedConfig, device: str = "cpu") -> bool:
    """Join torchrun's process group (once) with the backend for a model on `device`, and set this
    rank's torch threads; False when the run has one process."""
    if env.world_size() == 1:
        return False
    _set_threads(cfg.threads)
    if dist.is_initialized():
        return True
    backend = resolve_backend(cfg.backend, device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout))
    log.info(
        "rank %d of %d joined (%s backend, %d threads)",
        env.rank(),
        env.world_size(),
        backend,
        torch.get_num_threads(),
    )
    return True


def _set_threads(threads: int) -> None:
    # torchrun sets OMP_NUM_THREADS=1 for every rank; the cores are better shared out evenly.
    n = threads or max(1, env.cpu_cores() // env.local_world_size())
    torch.set_num_threads(n)


@contextlib.contextmanager
def distributed_run(cfg: DistributedConfig):
    """Context of a whole run under torchrun: sets the threads before the model loads; at the end,
    leaves the process group that training joined (parallel_for)."""
    if env.world_size() > 1:
        _set_threads(cfg.threads)
    try:
        yield
        if dist.is_initialized():
            # Leave together: a rank tearing gloo down while another still holds its connections
            # can abort the process ("terminate called without an active exception").
            collective(dist.barrier)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class LossModule(nn.Module):
    """The objective's loss as a module's forward, so a DDP/FSDP wrapper sees the whole step."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict):
        return self.loss_fn(self.model, batch)


class SingleProcess:
    """One process: the loss as the objective computes it, nothing to reduce."""

    world, rank, grad_sum_factor = 1, 0, 1.0

    def __init__(self, model: nn.Module, objective):
        self.model, self.objective = model, objective

    def loss(self, batch: dict):
        return self.objective.loss(self.model, batch)

    def accumulating(self, last: bool):
        """Context for one micro-batch's forward and backward; `last` of its update."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def sum(self, values: list[float]) -> list[float]:
        return values

    def gather(self, obj) -> list:
        return [obj]

    def check_same(self, value: int, what: str) -> None:
        pass

    def full_weights(self):
        """Context in which the model's parameters are whole tensors (for evaluation, saving)."""
        return contextlib.nullcontext()

    def norm(self, norm: torch.Tensor) -> torch.Tensor:
        return norm

    def barrier(self) -> None:
        pass

    def save(self, save_fn, path, params: dict, optimizer, scheduler, position, rng, state):
        """Write the checkpoint: rank 0 alone (the ranks' replicas are equal), with every rank's
        RNG state unless `rng` is given (a save on interrupt, when the others may be gone)."""
        rngs = rng if rng is not None or self.world == 1 else self.gather(rng_state())
        if self.rank == 0:
            save_fn(path, params, optimizer, scheduler, position, rngs, state)

    def load(self, path, params: dict, optimizer, scheduler, state, load_fn) -> dict:
        """Restore the checkpoint at `path` on this rank; returns the loop position."""
        return load_fn(path, params, optimizer, scheduler, state, rank=self.rank)

    def finish(self) -> None:
        """Leave the model usable as a plain model after training."""


class DataParallel(SingleProcess):
    """DDP: a replica per rank, gradients all-reduced once per optimizer update."""

    def __init__(self, model: nn.Module, objective):
        super().__init__(model, objective)
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.grad_sum_factor = float(self.world)  # DDP averages; the loop wants the sum
        # find_unused_parameters: a micro-batch without loss terms (0 labelled tokens) leaves the
        # head out of its graph; DDP must then not wait for that gradient.
        self.wrapper = nn.parallel.DistributedDataParallel(
            LossModule(model, objective.loss), find_unused_parameters=True
        )

    def loss(self, batch: dict):
        self.wrapper.train(self.model.training)
        return collective(self.wrapper, batch)

    def backward(self, loss: torch.Tensor) -> None:
        collective(loss.backward)  # DDP reduces the gradients during the backward

    def accumulating(self, last: bool):
        return contextlib.nullcontext() if last else self.wrapper.no_sync()

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        collective(dist.all_reduce, t)
        return t.tolist()

    def gather(self, obj) -> list:
        out = [None] * self.world
        collective(dist.all_gather_object, out, obj)
        return out

    def check_same(self, value: int, what: str) -> None:
        low, high = self.sum_extremes(value)
        if low != high:
            raise TrainingError(
                f"the ranks disagree on {what} ({int(low)} to {int(high)}): every rank must run "
                f"the same number of micro-batches per update"
            )

    def sum_extremes(self, value: int) -> tuple[float, float]:
        t = torch.tensor([value, -value], dtype=torch.float64)
        collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return -t[1].item(), t[0].item()

    def barrier(self) -> None:
        collective(dist.barrier)


def collective(fn, *args, **kwargs):
    """fn(*args, **kwargs), where a collective that times out or loses its peers becomes a
    TrainingError saying so (gloo reports both as RuntimeError)."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        if not _is_comm_failure(e):
            raise
        raise TrainingError(
            f"rank {env.rank()}: waiting for the other ranks failed ({' '.join(str(e).split())[:300]}"
            f"); another rank failed or stalled (see its error above), or took longer than "
            f"train.distributed.timeout seconds"
        ) from None


def _is_comm_failure(e: RuntimeError) -> bool:
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(
        word in text for word in ("timed out", "timeout", "connection closed", "connection reset")
    )


def shards_parameters(cfg: TrainConfig) -> bool:
    """Whether this run's parameters will be sharded (FSDP on several processes)."""
    return env.world_size() > 1 and cfg.distributed.strategy == "fsdp"


def parallel_for(model: nn.Module, objective, cfg: TrainConfig) -> SingleProcess:
    """The data-parallel strategy of this run (SingleProcess when it has one process)."""
    device = _device_of(model)
    if not init_process_group(cfg.distributed, device):
        return SingleProcess(model, objective)
    if env.rank() > 0:  # dropout and sampling draw other numbers on each rank (rank 0's as alone)
        seed_everything(cfg.seed + env.rank())
    if cfg.distributed.strategy == "fsdp":
        from .fsdp import FullyShardedParallel, check_fsdp_settings

        check_fsdp_settings(cfg.optimizer)
        return FullyShardedParallel(model, objective, device)
    return DataParallel(model, objective)


def _device_of(model: nn.Module) -> str:
    device = next(model.parameters()).device.type
    # A model built on the meta device (models/meta_init.py) gets its shards in CPU memory.
    return "cpu" if device == "meta" else device


def global_slice(indices: list[int], rank: int, world: int) -> Optional[list[int]]:
    """Rank `rank`'s part of a global micro-batch: consecutive equal slices."""
    per_rank = len(indices) // world
    return indices[rank * per_rank : (rank + 1) * per_rank]
