"""Build a model whose parameters are on the meta device, to be filled from its safetensors files
later, part by part (under FSDP each rank reads only its shards: training/sharded_load.py).

Notable:
- Only the parameters are meta: buffers are built for real, because the non-persistent ones
  (rotary inv_freq) are computed in the modules' constructors and are in no weights file.
- Building draws no random numbers (meta tensors have no values), so the seeded draws that follow
  (a method's initialisation) are those of a normal load.
- A method applied to such a model asks for its new parameters on the base's device, meta;
  `real_new_parameters` creates them on the CPU instead, so they are initialised (and draw random
  numbers) exactly as on a normally loaded model. Copies of base weights (the originals `full`
  keeps) stay meta until the base is filled.
"""

import contextlib
import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..utils.distributed import is_main_process

log = logging.getLogger(__name__)
WEIGHT_FILES_ATTR = "tunesmith_weight_files"  # {tensor name: safetensors file}, on a meta model
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def has_safetensors(path: Path) -> bool:
    return (path / SINGLE).is_file() or (path / INDEX).is_file()


def weight_files(path: Path) -> dict[str, Path]:
    """{tensor name: the safetensors file that holds it} of the model directory `path`."""
    if (path / INDEX).is_file():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    from safetensors import safe_open

    with safe_open(str(path / SINGLE), "pt") as f:
        return {name: path / SINGLE for name in f.keys()}


def deferred_weight_files(model: nn.Module) -> dict[str, Path]:
    """The files a meta model's parameters are to be read from ({} for a loaded model)."""
    return getattr(model, WEIGHT_FILES_ATTR, {})


def load_on_meta(path: Path, torch_dtype):
    """The transformers causal LM in directory `path`, its parameters on the meta device (as
    from_pretrained would build it: same dtype, eval mode, tied weights, generation config); None
    when the files do not name every parameter as the model does (older checkpoints, whose names
    from_pretrained converts while loading)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.random.fork_rng(devices=[]), parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    files = weight_files(path)
    if any(name not in files for name, _ in model.named_parameters()):
        return None
    model.eval()
    model.config.name_or_path = str(path)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    setattr(model, WEIGHT_FILES_ATTR, files)
    if is_main_process():
        log.info("built %s on the meta device: each rank reads its own shards of it", path)
    return model


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside register their parameters on the meta device, buffers as built."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and not param.is_meta:  # an already meta one may be a tied weight
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class _RealNewTensors(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "meta":
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


def real_new_parameters():
    """Context in which tensors asked for on the meta device are created on the CPU: wrap a
    method's application to a meta model, so the method's new parameters get their values."""
    return _RealNewTensors()
