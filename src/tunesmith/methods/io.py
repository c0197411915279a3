"""Save and load adapters in Hugging Face PEFT's layout.

Files: `adapter_config.json` (PEFT's config keys, incl. `peft_type`) and
`adapter_model.safetensors` with PEFT's key names: `base_model.model.<module path>.<param>`, the
adapter name left out (e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
"""
import json
import logging
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..utils.files import atomic_path, atomic_write_text
from .base import PEFT_PREFIX, adapter_configs, adapter_layers, base_parameters  # noqa: F401  (PEFT_PREFIX re-exported)
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


def save_adapter(model: nn.Module, out_dir, adapter_name: str = "default",
                 base_model: Optional[str] = None) -> Path:
    """Write adapter `adapter_name` to out_dir in PEFT layout (each file atomically)."""
    cfg = adapter_configs(model).get(adapter_name)
    if cfg is None:
        raise CheckpointError(f"the model has no adapter named {adapter_name!r} to save")
    return write_adapter_files(out_dir, cfg, adapter_state_dict(model, adapter_name), base_model)


def write_adapter_files(out_dir, cfg, tensors: dict, base_model: Optional[str] = None) -> Path:
    """Write a method config and its PEFT-named tensors to out_dir in PEFT layout (each file atomically)."""
    from ..models.loading import model_id_for_adapter  # "default" -> the embedded model's Hub id

    peft_cfg = {"task_type": "CAUSAL_LM", "base_model_name_or_path": model_id_for_adapter(base_model),
                "inference_mode": True, "revision": None, **get_method(cfg.name).to_peft_config(cfg)}
    out_dir = Path(out_dir)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(peft_cfg, indent=2))
    return out_dir


def read_adapter_config(adapter_dir) -> dict:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{adapter_dir} is not an adapter directory: {CONFIG_NAME} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_adapter(model: nn.Module, adapter_dir, adapter_name: str = "default") -> nn.Module:
    """Add the adapter saved in adapter_dir (by tunesmith or by PEFT) to model, in place.

    Raises CheckpointError naming the first tensor that is missing or of the wrong shape
    (typically: an adapter trained on a different base model).
    """
    peft_cfg = read_adapter_config(adapter_dir)
    spec = spec_for_peft_type(peft_cfg.get("peft_type", ""))
    cfg = spec.from_peft_config(peft_cfg)
    weights = Path(adapter_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{adapter_dir}: {WEIGHTS_NAME} is missing")
    try:
        saved = load_file(str(weights))
    except SafetensorError as e:
        raise CheckpointError(f"{weights}: cannot read ({e})") from None
    check_quantized_base(model, spec)
    spec.apply(model, cfg, adapter_name)
    _copy_into(adapter_state_dict(model, adapter_name), _strip_adapter_name(saved, adapter_name), adapter_dir)
    log.info("loaded %s adapter %r from %s (%d tensors)", cfg.name, adapter_name, adapter_dir, len(saved))
    return model


def _strip_adapter_name(saved: dict, adapter_name: str) -> dict:
    # PEFT writes names without the adapter name; tolerate files that kept it.
    return {k.replace(f".{adapter_name}.", "."): v for k, v in saved.items()}


def _copy_into(expected: dict, saved: dict, source) -> None:
    for key, target in expected.items():
        if key not in saved:
            raise CheckpointError(f"adapter {source} has no tensor {key}: it was made for a different model "
                                  f"or different target modules")
        if saved[key].shape != target.shape:
            raise CheckpointError(f"adapter {source}: tensor {key} has shape {tuple(saved[key].shape)}, this model "
                                  f"needs {tuple(target.shape)}: the adapter was trained on a different base model")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise CheckpointError(f"adapter {source} has tensor {extra[0]} that this model has no place for "
                              f"({len(extra)} such tensors): it was made for a different base model")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(saved[key].to(target.dtype))
