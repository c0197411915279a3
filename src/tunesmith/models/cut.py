"""A student cut from its teacher: keep a subset of the transformer blocks (the DistilBERT recipe).

The kept blocks keep the teacher's weights, as do the embeddings, the final norm and the output
head; the model's config then says how many blocks remain, so `save_pretrained` writes a plain
transformers directory that `AutoModelForCausalLM.from_pretrained` loads as is.

`model.keep_layers` picks the blocks: `every_other` (0, 2, 4, ...: 15 of SmolLM2's 30) or a list
of block indices in increasing order.
"""

import logging
from typing import Union

from torch import nn

from ..errors import ConfigError, UnsupportedModuleError

log = logging.getLogger(__name__)

# Config fields that count blocks, or hold one entry per block, by architecture family.
_COUNT_FIELDS = ("num_hidden_layers", "n_layer")
_PER_LAYER_FIELDS = ("layer_types",)


def block_list(model) -> nn.ModuleList:
    """The ModuleList of transformer blocks (Llama family: model.layers, GPT-2: transformer.h)."""
    base = getattr(model, "base_model", model)
    for name in ("layers", "h", "blocks"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise UnsupportedModuleError(
        f"{type(model).__name__}: no list of transformer blocks found (looked for layers, h, "
        f"blocks), so model.keep_layers cannot cut it"
    )


def resolve_keep_layers(keep: Union[str, list], n_blocks: int) -> list[int]:
    """Block indices for model.keep_layers; raises ConfigError for a bad value."""
    if keep == "every_other":
        return list(range(0, n_blocks, 2))
    if isinstance(keep, str) or not keep:
        raise ConfigError(
            f"model.keep_layers must be every_other or a list of block indices, got {keep!r}"
        )
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in keep):
        raise ConfigError(f"model.keep_layers: block indices must be integers, got {keep}")
    if any(i < 0 or i >= n_blocks for i in keep):
        raise ConfigError(f"model.keep_layers: the model has blocks 0..{n_blocks - 1}, got {keep}")
    if list(keep) != sorted(set(keep)):
        raise ConfigError(f"model.keep_layers: indices must be distinct and increasing, got {keep}")
    return list(keep)


def cut_layers(model, keep: Union[str, list]) -> list[int]:
    """Keep only the blocks named by `keep` (in place); returns the kept teacher indices."""
    blocks = block_list(model)
    indices = resolve_keep_layers(keep, len(blocks))
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModuleError(
            "model.keep_layers: this GPT-2 scales attention by its block index, which a cut "
            "would change; use a model without scale_attn_by_inverse_layer_idx"
        )
    kept = nn.ModuleList([blocks[i] for i in indices])
    for new_index, block in enumerate(kept):
        _renumber(block, new_index)  # the KV cache is indexed by layer_idx
    _replace_blocks(model, blocks, kept)
    _update_config(model.config, indices, len(blocks))
    log.info("student: kept blocks %s of %d", indices, len(blocks))
    return indices


def _renumber(block: nn.Module, index: int) -> None:
    for module in block.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index


def _replace_blocks(model, old: nn.ModuleList, new: nn.ModuleList) -> None:
    base = getattr(model, "base_model", model)
    for name, child in base.named_children():
        if child is old:
            setattr(base, name, new)
            return
    raise AssertionError("block list not found on the base model")  # block_list found it there


def _update_config(config, indices: list[int], n_before: int) -> None:
    for name in _COUNT_FIELDS:
        if getattr(config, name, None) == n_before:
            setattr(config, name, len(indices))
    for name in _PER_LAYER_FIELDS:
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == n_before:
            setattr(config, name, [values[i] for i in indices])
