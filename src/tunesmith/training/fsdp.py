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
- Checkpoints: the trained parameters and optimizer state are gathered to whole tensors and rank 0
  writes the usual safetensors checkpoint; on resume every rank reads it and keeps its shard, so a
  checkpoint resumes with any number of processes. torch.distributed.checkpoint's own sharded
  files are pickles, which tunesmith does not load (tests/unit/test_no_pickle.py); the price is
  that saving holds the whole trained state (x3 with AdamW) on rank 0 for a moment.
"""

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import ConfigError
from ..methods.base import base_parameter_paths, rebind_base_parameters
from ..utils.modules import transformer_blocks
from .distributed import DataParallel, LossModule, collective


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
        rebind_base_parameters(model, self.base_paths)
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

    def save(self, save_fn, path, params: dict, optimizer, *rest) -> None:
        # Every rank takes part in the gathers, in the same order; rank 0 writes.
        whole = {n: _whole(p.detach()) for n, p in params.items()}
        state = optimizer.state_dict()
        state["state"] = {
            i: {k: _whole(v) for k, v in s.items()} for i, s in state["state"].items()
        }
        super().save(save_fn, path, whole, _named_like(optimizer, state), *rest)

    def load(self, path, params: dict, optimizer, scheduler, state, load_fn) -> dict:
        whole = {n: torch.empty(p.shape, dtype=p.dtype) for n, p in params.items()}
        view = _named_like(optimizer, None)
        position = load_fn(path, whole, view, scheduler, state, rank=self.rank)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(_shard_like(whole[name], p))
        live = [p for group in optimizer.param_groups for p in group["params"]]  # state's order
        opt_state = view.loaded
        for index, entries in opt_state["state"].items():
            param = live[int(index)]
            for key, value in entries.items():
                if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(param.shape):
                    entries[key] = _shard_like(value, param)
        optimizer.load_state_dict(opt_state)
        return position


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


def _whole(value):
    return value.full_tensor() if isinstance(value, DTensor) else value


def _shard_like(full: torch.Tensor, like) -> torch.Tensor:
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements)


def _named_like(optimizer, state):
    """A stand-in for `optimizer` in the checkpoint code, with whole tensors: its class name (which
    checkpoints record), its param groups, the gathered state_dict(); load_state_dict() keeps what
    the checkpoint holds for sharding afterwards."""

    class View:
        param_groups = optimizer.param_groups
        loaded = None

        def state_dict(self):
            return state

        def load_state_dict(self, loaded):
            View.loaded = loaded

    View.__name__ = type(optimizer).__name__
    return View()
