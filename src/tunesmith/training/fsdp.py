"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded.

Each transformer block is one shard group; the rest (embeddings, final norm, output head) is the
root group, whose module is the loss (distributed.LossModule), so that every parameter is whole
during the objective's forward, however the objective calls the model. Frozen parameters (a LoRA
run's base) are sharded like the trained ones.

Notable:
- Gradients are reduce-scattered as plain sums (divide factor 1, sum-only collectives), and the
  loop divides by the global term count as for DDP. FSDP's default averaging sums without
  dividing on gloo (PyTorch issue #162338), so relying on it would scale gradients by the world
  size on CPU; the equivalence test against one process checks this.
- Between steps the parameters stay sharded; evaluation and the saves at the best validation loss
  run on whole weights (full_weights), and after train() the model is whole again (finish), so
  the tasks' own evaluation and adapter saving work unchanged.
- Checkpoints are sharded: every rank writes its shards of the trained parameters and of the
  optimizer state with torch.distributed.checkpoint's safetensors writer (checkpoint_shards.py),
  rank 0 the small rest; nothing is gathered. A resume reads each rank's parts back and reshards,
  so a checkpoint resumes with any number of processes; one written by a single process is read
  whole on every rank, which keeps its part. checkpoint.py does both; this class only has every
  rank take part in the save.
- A model built on the meta device (model loading under FSDP, models/meta_init.py) is sharded
  empty, then each rank reads its own shards from the model's safetensors files
  (sharded_load.py): no rank holds the whole model, at load time either.
"""

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..errors import ConfigError
from ..methods.base_params import base_parameter_paths, rebind_base_parameters
from ..utils.modules import transformer_blocks
from ..utils.seeding import rng_state
from .distributed import DataParallel, LossModule, collective
from .sharded_load import copy_meta_originals, fill_meta_shards


class FullyShardedParallel(DataParallel):
    def __init__(self, model: nn.Module, objective, device: str = "cpu"):
        self.model, self.objective = model, objective
        self.world, self.rank, self.grad_sum_factor = dist.get_world_size(), dist.get_rank(), 1.0
        self.root = LossModule(model, objective.loss)
        self.base_paths = base_parameter_paths(model)  # full, selected ... train these in place
        # The mesh on the model's device (FSDP's default mesh is on the GPU whenever one is visible).
        mesh = init_device_mesh(device, (self.world,))
        for block in _blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(self.root, mesh=mesh)
        fill_meta_shards(model)  # a model built on the meta device reads its shards now
        rebind_base_parameters(model, self.base_paths)
        copy_meta_originals(model)
        self.units = [m for m in self.root.modules() if isinstance(m, FSDPModule)]
        for unit in self.units:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        # FSDP sets itself up on the root's first forward. An on-policy task generates with the
        # blocks before any such forward, and each block would then set itself up as a root.
        self.root._get_fsdp_state()._lazy_init()

    def loss(self, batch: dict):
        self.root.train(self.model.training)
        return collective(self.root, batch)

    @contextlib.contextmanager
    def accumulating(self, last: bool):
        # Inner micro-batches keep their (unsharded) gradients; the last one reduce-scatters them.
        self.root.set_requires_gradient_sync(last)
        yield

    def norm(self, norm: torch.Tensor) -> torch.Tensor:
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    @contextlib.contextmanager
    def full_weights(self):
        self._unshard()
        try:
            yield
        finally:
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(True)
            rebind_base_parameters(self.model, self.base_paths)  # the shards again

    def finish(self) -> None:
        self._unshard()

    def _unshard(self) -> None:
        for unit in self.units:
            unit.unshard()
            unit.set_reshard_after_forward(False)  # stay whole through the forwards that follow
        rebind_base_parameters(self.model, self.base_paths)  # the whole parameters now

    def save(self, save_fn, path, params: dict, optimizer, scheduler, position, rng, state):
        # Every rank writes its own shards (save_checkpoint sees the DTensors); rank 0 the rest.
        rngs = rng if rng is not None else self.gather(rng_state())
        save_fn(path, params, optimizer, scheduler, position, rngs, state)


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of `model`, or of the model it wraps (a task's module around a
    transformers model, e.g. the reward task's classifier)."""
    for module in model.modules():
        if getattr(getattr(module, "config", None), "num_hidden_layers", None):
            return transformer_blocks(module)
    return transformer_blocks(model)  # raises, naming the model


def check_fsdp_settings(optimizer_name: str) -> None:
    if optimizer_name != "adamw":
        raise ConfigError(
            f"train.optimizer={optimizer_name} keeps blockwise 8-bit state that FSDP cannot shard; "
            f"use train.optimizer=adamw with train.distributed.strategy=fsdp, or strategy=ddp"
        )
