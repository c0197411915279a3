"""Save a PiSSA adapter as a plain LoRA adapter for the original base weights.

This is what PEFT's `save_pretrained(path_initial_model_for_weight_conversion=...)` writes. PiSSA
trains on W_res = W0 - s * B0 @ A0, so after training the layer computes W_res + s * B @ A,
which is W0 + s * (B @ A - B0 @ A0) = W0 + s * B' @ A' with
A' = [A; A0] (2r, in) and B' = [B, -B0] (out, 2r): a rank-2r LoRA whose alpha is doubled
(times sqrt(2) with rsLoRA) so the scaling s stays the same. It loads on the unmodified base
model, so it can be combined with or swapped for other adapters.
"""

import dataclasses
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...errors import ConfigError
from ..base import PEFT_PREFIX, adapter_configs, adapter_layers
from ..io import write_adapter_files


def save_pissa_as_lora(
    model: nn.Module, out_dir, adapter_name: str = "default", base_model: Optional[str] = None
) -> Path:
    """Write PiSSA adapter `adapter_name` to out_dir as a rank-2r LoRA adapter for the original W0.

    DoRA's magnitude vector is written unchanged (W0 + s * B' @ A' equals the trained weight, so
    the norms agree); PEFT's own conversion leaves it out. Raises ConfigError when the adapter is
    not a PiSSA LoRA adapter.
    """
    cfg = adapter_configs(model).get(adapter_name)
    if cfg is None or cfg.name != "lora" or cfg.init != "pissa":
        raise ConfigError(
            f"adapter {adapter_name!r} is not a PiSSA adapter (method.init='pissa'); "
            f"save it with save_adapter"
        )
    scale = 2**0.5 if cfg.use_rslora else 2  # keeps alpha / r (or alpha / sqrt(r)) unchanged
    lora_cfg = dataclasses.replace(cfg, r=2 * cfg.r, alpha=cfg.alpha * scale, init="default")
    return write_adapter_files(out_dir, lora_cfg, _lora_tensors(model, adapter_name), base_model)


def _lora_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for path, layer in adapter_layers(model):
        if adapter_name not in layer.adapter_names:
            continue
        init = layer.pissa_init[adapter_name]
        for key, param in layer.adapter_parameters(adapter_name).items():
            if key == "lora_A.weight":
                param = torch.cat([param, init.A0], dim=0)  # (2r, in)
            elif key == "lora_B.weight":
                param = torch.cat([param, -init.B0], dim=1)  # (out, 2r)
            tensors[f"{PEFT_PREFIX}{path}.{key}"] = param.detach()
    return tensors
