"""Small helpers on nn.Module trees."""
import torch
from torch import nn


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return (parent module, attribute name) for a dotted module name."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = get_submodule_parent(model, name)
    setattr(parent, child, new)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear or GPT-2's Conv1D (a linear layer with a transposed weight)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a Conv1D (weight stored as (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w: torch.Tensor = module.weight
    return w.shape[0], w.shape[1]
