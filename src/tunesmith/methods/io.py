"""Save and load adapters in Hugging Face PEFT's layout.

Files: `adapter_config.json` (PEFT's config keys, incl. `peft_type`) and
`adapter_model.safetensors` with PEFT's key names: `base_model.model.<module path>.<param>`, the
adapter name left out (e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError, TunesmithError
from ..utils.distributed import is_main_process
from ..utils.files import atomic_path, atomic_write_text
from ..utils.paths import read_text
from .base import (  # noqa: F401  (PEFT_PREFIX re-exported)
    PEFT_PREFIX,
    adapter_configs,
    adapter_layers,
    inject_adapter,
)
from .base_params import base_parameters
from .registry import check_quantized_base, get_method, spec_for_peft_type

log = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed by PEFT names (each layer's `peft_state`)."""
    state = {}
    for path, layer in adapter_layers(model):
        if adapter_name in layer.adapter_names:
            for key, tensor in layer.peft_state(adapter_name, path).items():
                state[key] = tensor.detach()
    for path, param in base_parameters(model, adapter_name).items():  # full, selected, bitfit ...
        state[f"{PEFT_PREFIX}{path}"] = param.detach()
    return state


def save_adapter(
    model: nn.Module, out_dir, adapter_name: str = "default", base_model: Optional[str] = None
) -> Path:
    """Write adapter `adapter_name` to out_dir in PEFT layout (each file atomically)."""
    cfg = adapter_configs(model).get(adapter_name)
    if cfg is None:
        raise CheckpointError(f"the model has no adapter named {adapter_name!r} to save")
    return write_adapter_files(out_dir, cfg, adapter_state_dict(model, adapter_name), base_model)


def write_adapter_files(out_dir, cfg, tensors: dict, base_model: Optional[str] = None) -> Path:
    """Write a method config and its PEFT-named tensors to out_dir in PEFT layout (each file atomically)."""
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return Path(out_dir)
    from ..models.loading import model_id_for_adapter  # "default" -> the embedded model's Hub id

    peft_cfg = {
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": model_id_for_adapter(base_model),
        "inference_mode": True,
        "revision": None,
        **get_method(cfg.name).to_peft_config(cfg),
    }
    out_dir = Path(out_dir)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(peft_cfg, indent=2))
    return out_dir


def read_adapter_config(adapter_dir) -> dict:
    """The PEFT config in adapter_dir/adapter_config.json.

    Raises CheckpointError naming the file when the directory or the file is missing, the file is
    not JSON, or its peft_type is missing or not one tunesmith supports.
    """
    path = _adapter_file(adapter_dir, CONFIG_NAME)
    try:
        peft_cfg = json.loads(read_text(path, CheckpointError))
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); fix it or save "
            f"the adapter again"
        ) from None
    if not isinstance(peft_cfg, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object of PEFT settings, got {type(peft_cfg).__name__}"
        )
    if not peft_cfg.get("peft_type"):
        raise CheckpointError(
            f'{path} has no peft_type (e.g. "LORA"): it is not a PEFT adapter config'
        )
    try:
        spec_for_peft_type(peft_cfg["peft_type"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return peft_cfg


def load_adapter(model: nn.Module, adapter_dir, adapter_name: str = "default") -> nn.Module:
    """Add the adapter saved in adapter_dir (by tunesmith or by PEFT) to model, in place.

    Raises CheckpointError naming the file, the first tensor that is missing, unexpected, of the
    wrong shape or not floating point (typically: an adapter trained on a different base model).
    """
    peft_cfg = read_adapter_config(adapter_dir)
    spec = spec_for_peft_type(peft_cfg["peft_type"])
    cfg = _method_config(spec, peft_cfg, Path(adapter_dir) / CONFIG_NAME)
    weights = _adapter_file(adapter_dir, WEIGHTS_NAME)
    saved = _read_weights(weights)
    check_quantized_base(model, spec)
    try:
        inject_adapter(model, spec, cfg, adapter_name)
    except TunesmithError as e:  # e.g. target_modules that this model does not have
        raise CheckpointError(
            f"{Path(adapter_dir) / CONFIG_NAME} does not fit this model: {e}"
        ) from None
    _copy_into(
        adapter_state_dict(model, adapter_name),
        _strip_adapter_name(saved, adapter_name),
        _Source(weights, peft_cfg, model),
    )
    log.info(
        "loaded %s adapter %r from %s (%d tensors)", cfg.name, adapter_name, adapter_dir, len(saved)
    )
    return model


def _adapter_file(adapter_dir, name: str) -> Path:
    d = Path(adapter_dir)
    if d.is_file() and d.name in (CONFIG_NAME, WEIGHTS_NAME):
        raise CheckpointError(f"adapter {adapter_dir} is a file; give its directory ({d.parent})")
    if not d.is_dir():
        raise CheckpointError(f"adapter directory {adapter_dir} does not exist: {name} is missing")
    if not (d / name).is_file():
        raise CheckpointError(
            f"{adapter_dir} is not an adapter directory: {name} is missing (give the "
            f"output.dir of a training run, or its best/)"
        )
    return d / name


def _method_config(spec, peft_cfg: dict, path: Path):
    # PEFT configs written by hand or by another version may lack a key or hold a wrong type.
    try:
        return spec.from_peft_config(peft_cfg)
    except KeyError as e:
        raise CheckpointError(
            f"{path}: {spec.peft_type} setting {e.args[0]!r} is missing"
        ) from None
    except (TunesmithError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _read_weights(weights: Path) -> dict:
    size = weights.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{weights} is empty (0 bytes): the save did not finish; save or copy the adapter again"
        )
    try:
        return load_file(str(weights))
    except SafetensorError as e:
        raise CheckpointError(
            f"{weights} is truncated or not a safetensors file ({size} bytes: "
            f"{str(e).removeprefix('Error while deserializing header: ')}); save or copy "
            f"the adapter again"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{weights}: cannot read ({e.strerror or e})") from None


@dataclass
class _Source:
    """Where the tensors came from, for messages: the weights file, its config, the target model."""

    weights: Path
    peft_cfg: dict
    model: nn.Module


def _strip_adapter_name(saved: dict, adapter_name: str) -> dict:
    # PEFT writes names without the adapter name; tolerate files that kept it.
    return {k.replace(f".{adapter_name}.", "."): v for k, v in saved.items()}


def _copy_into(expected: dict, saved: dict, src: _Source) -> None:
    for key, target in expected.items():
        if key not in saved:
            raise CheckpointError(
                f"{src.weights} has no tensor {key}: its {CONFIG_NAME} names other "
                f"target_modules than the run that saved it, or {_other_model(src)}"
            )
        _check_tensor(key, saved[key], target, src)
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise CheckpointError(
            f"{src.weights} has tensor {extra[0]} that this model has no place for "
            f"({len(extra)} such tensors): {_other_model(src)}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(saved[key].to(target.dtype))


def _check_tensor(key: str, tensor: torch.Tensor, target: torch.Tensor, src: _Source) -> None:
    if target.is_floating_point() and not tensor.is_floating_point():
        raise CheckpointError(
            f"{src.weights}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}, "
            f"adapter weights are floating point: the file was not written by an adapter save"
        )
    if tensor.shape != target.shape:
        raise CheckpointError(
            f"{src.weights}: tensor {key} has shape {tuple(tensor.shape)}, this model needs "
            f"{tuple(target.shape)}: {_shape_fix(tensor.shape, target.shape, src)}"
        )
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise CheckpointError(
            f"{src.weights}: tensor {key} holds NaN or inf values: the training that wrote "
            f"it diverged; use an earlier checkpoint or train again with a lower train.lr"
        )


def _shape_fix(got, need, src: _Source) -> str:
    # A rank that differs from the config's r: the config was edited or belongs to other weights.
    rank = src.peft_cfg.get("r")
    diff = [(g, n) for g, n in zip(got, need) if g != n] if len(got) == len(need) else []
    if rank and diff and all(n == rank for _, n in diff) and len({g for g, _ in diff}) == 1:
        return (
            f"the weights have rank {diff[0][0]} but {CONFIG_NAME} says r={rank}; set r to "
            f"{diff[0][0]} there (and lora_alpha to the value used in training)"
        )
    return _other_model(src)


def _other_model(src: _Source) -> str:
    base = src.peft_cfg.get("base_model_name_or_path")
    hidden = getattr(getattr(src.model, "config", None), "hidden_size", None)
    this = f" (this model has hidden_size {hidden})" if hidden else ""
    made_for = f"; load it on {base}" if base else ""
    return f"the adapter was made for a different base model{this}{made_for}"
