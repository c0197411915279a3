"""Small helpers on nn.Module trees."""

import torch
from torch import nn

from ..errors import UnsupportedModuleError


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return (parent module, attribute name) for a dotted module name."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = get_submodule_parent(model, name)
    setattr(parent, child, new)


def named_transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, list) of the model's transformer blocks (decoder or encoder layers): the first
    ModuleList with config.num_hidden_layers entries, e.g. ("model.layers", ...) for Llama,
    ("transformer.h", ...) for GPT-2. Works on a causal LM and on its backbone alike.

    Raises UnsupportedModuleError when there is no such list.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len(module) == n_layers:
            return name, module
    raise UnsupportedModuleError(
        f"cannot find the transformer blocks of this {type(model).__name__} "
        f"(no module list of config.num_hidden_layers={n_layers} entries)"
    )


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks; `named_transformer_blocks` also gives their path."""
    return named_transformer_blocks(model)[1]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once. The weights of
    quantized linear layers (stored as buffers) count in the total, as the values they stand for."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    for m in model.modules():
        if is_quantized_linear(m):
            total += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return trainable, total


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def is_quantized_linear(module: nn.Module) -> bool:
    """A frozen linear layer whose weight is stored quantized (models.quantization.QuantizedLinear).

    Recognised by its `is_quantized` attribute so that utils (and methods) need not import models.
    """
    return getattr(type(module), "is_quantized", False) is True


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, GPT-2's Conv1D (a linear layer with a transposed weight) or a quantized linear."""
    return (
        isinstance(module, nn.Linear)
        or type(module).__name__ == "Conv1D"
        or is_quantized_linear(module)
    )


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear, a quantized linear or a Conv1D (weight (in, out))."""
    if isinstance(module, nn.Linear) or is_quantized_linear(module):
        return module.in_features, module.out_features
    w: torch.Tensor = module.weight
    return w.shape[0], w.shape[1]


def quantization_schemes(model: nn.Module) -> dict[str, int]:
    """{scheme: number of quantized linear layers} of model; empty when nothing is quantized."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if is_quantized_linear(m):
            counts[m.scheme] = counts.get(m.scheme, 0) + 1
    return counts


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weights of model: its parameters and the codes, scales and biases of its
    quantized linear layers (tied tensors counted once; other buffers such as rotary tables not)."""
    quantized = [
        b for m in model.modules() if is_quantized_linear(m) for b in m.buffers(recurse=False)
    ]
    seen, total = set(), 0
    for t in list(model.parameters()) + quantized:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Turn on transformers' per-block activation checkpointing (non-reentrant, so frozen inputs
    need no grad) in every transformers model inside `model` (the model itself, or the LM inside
    a wrapper such as SequenceClassifier). Returns how many were switched on.

    Raises UnsupportedModuleError when no submodule supports it.
    """
    done = 0
    for module in model.modules():
        # transformers >= 5.x: activation_checkpointing_enable; before: gradient_checkpointing_enable
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None
        )
        if getattr(module, "supports_gradient_checkpointing", False) and enable is not None:
            enable({"use_reentrant": False})
            done += 1
            break  # the outermost one covers its blocks
    if not done:
        raise UnsupportedModuleError(
            f"train.activation_checkpointing: {type(model).__name__} holds no transformers model "
            f"that supports gradient checkpointing; set train.activation_checkpointing=false"
        )
    return done
