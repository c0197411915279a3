"""Fill a meta-initialised model's FSDP shards from its safetensors files (models/meta_init.py).

Each rank reads only the slices it holds (safetensors' get_slice reads those bytes of the file and
no others), so no rank ever holds the whole model; nothing is sent between the ranks. (Rank 0
reading everything and broadcasting, set_model_state_dict's broadcast_from_rank0, would put the
whole model in rank 0's memory, the peak this avoids.) Values are converted to the parameter's
dtype as from_pretrained converts them, so the shards equal those of a normal load, sharded.
"""

import contextlib
import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ..errors import ModelLoadError
from ..methods.base_params import BASE_PARAMS_ATTR
from ..models.meta_init import WEIGHT_FILES_ATTR, deferred_weight_files


def fill_meta_shards(model: nn.Module) -> None:
    """Replace every meta parameter of `model` (already fully_shard-ed: DTensors) by this rank's
    shard read from the model's files; nothing to do for a model that was loaded normally.
    Raises ModelLoadError when a file lacks a parameter or holds another shape."""
    files = deferred_weight_files(model)
    if not files:
        return
    paths = {id(p): n for n, p in model.named_parameters()}  # tied weights: the first name
    filled: dict[int, nn.Parameter] = {}
    with contextlib.ExitStack() as stack:
        reader = _Reader(files, stack)
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None or not param.is_meta:
                    continue
                if id(param) not in filled:
                    filled[id(param)] = _read_shard(param, _file_key(paths[id(param)]), reader)
                module._parameters[name] = filled[id(param)]  # the same object for tied weights
    delattr(model, WEIGHT_FILES_ATTR)


def _file_key(path: str) -> str:
    # A method's wrapper holds the base module as `base_layer`; the file names it without.
    return re.sub(r"\.base_layer(?=\.)", "", path)


class _Reader:
    """Open safetensors files, one handle per file for the whole fill."""

    def __init__(self, files: dict[str, Path], stack: contextlib.ExitStack):
        self.files, self.stack, self.handles = files, stack, {}

    def slice_of(self, key: str):
        from safetensors import safe_open

        if key not in self.files:
            raise ModelLoadError(
                f"the model's weights files ({_folder(self.files)}) have no tensor {key!r}; "
                f"load the model from a complete transformers directory"
            )
        file = self.files[key]
        if file not in self.handles:
            self.handles[file] = self.stack.enter_context(safe_open(str(file), "pt"))
        return self.handles[file].get_slice(key)


def _folder(files: dict[str, Path]) -> str:
    return str(next(iter(files.values())).parent)


def _read_shard(param: DTensor, key: str, reader: _Reader) -> nn.Parameter:
    stored = reader.slice_of(key)
    if list(stored.get_shape()) != list(param.shape):
        raise ModelLoadError(
            f"{key} is {stored.get_shape()} in {_folder(reader.files)}, the model wants "
            f"{list(param.shape)}; the config and the weights do not match"
        )
    shape, offset = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    if math.prod(shape):
        local = stored[tuple(slice(o, o + n) for o, n in zip(offset, shape))].to(param.dtype)
    else:  # a rank past the last rows of a small tensor holds none
        local = torch.empty(shape, dtype=param.dtype)
    whole = DTensor.from_local(
        local, param.device_mesh, param.placements, shape=param.shape, stride=param.stride()
    )
    return nn.Parameter(whole, requires_grad=param.requires_grad)


def copy_meta_originals(model: nn.Module) -> None:
    """Methods that train base weights in place keep a copy of each, meta when the weight was;
    each becomes a copy of the rank's filled shard. Call after rebind_base_parameters."""
    for pairs in getattr(model, BASE_PARAMS_ATTR, {}).values():
        for pair in pairs:
            if pair[1] is not None and pair[1].is_meta:
                pair[1] = pair[0].detach().clone()
