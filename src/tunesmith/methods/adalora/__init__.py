"""AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"):
LoRA in SVD form, W0 + (alpha / init_r) * P diag(lambda) Q, whose ranks are pruned during training
by an importance score, so the rank budget goes where it matters. Mergeable.

Training hooks (the loop runs them for any method that has them):
- on_train_begin: total_step, when unset, becomes the run's number of optimizer updates;
- regularizer: orth_reg_weight * the orthogonality penalty on P and Q, added to the loss;
- on_update: the rank allocator (allocator.py), after each optimizer update, gradients still set;
- state_dict / load_state: the allocator's EMAs and masks, saved with every checkpoint so that a
  resumed run allocates exactly as an uninterrupted one.
The rank pattern of the last allocation is recorded in the adapter's config (PEFT's
`rank_pattern`) and saving writes the kept directions only, as PEFT does.
"""

import dataclasses

import torch
from torch import nn

from ...errors import ConfigError
from ...utils.modules import replace_module
from ..base import MethodSpec, adapter_configs, find_target_linears, record_adapter
from ..registry import register_method
from .allocator import orth_regularizer, rank_pattern, svd_layers, update_and_allocate
from .config import PEFT_TYPE, AdaloraConfig, from_peft_config, to_peft_config
from .layers import SvdLinear

__all__ = ["AdaloraConfig", "SvdLinear", "apply_adalora"]


def apply_adalora(model: nn.Module, cfg: AdaloraConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in an SvdLinear and add adapter `adapter_name` at rank
    init_r, or at the ranks of cfg.rank_pattern (a saved adapter), which then stay fixed.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when
    cfg.rank_pattern lacks a targeted layer or has the wrong length.
    """
    names = find_target_linears(model, cfg.target_modules)
    ranks = {name: _rank(cfg, name) for name in names}  # checked before anything changes
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, SvdLinear):
            module = SvdLinear(module)
            replace_module(model, name, module)
        fixed = cfg.rank_pattern is not None
        module.add_adapter(adapter_name, ranks[name], cfg.alpha, cfg.dropout, cfg.init_r, fixed)


def _rank(cfg: AdaloraConfig, name: str) -> int:
    if cfg.rank_pattern is None:
        return cfg.init_r
    bits = cfg.rank_pattern.get(f"{name}.lora_E")
    if bits is None or len(bits) != cfg.init_r:
        raise ConfigError(
            f"method.rank_pattern has {'no entry' if bits is None else f'{len(bits)} entries'} "
            f"for {name}.lora_E; it needs init_r={cfg.init_r} booleans for every targeted layer"
        )
    return sum(bool(b) for b in bits)


def _training(model, adapter_name: str) -> bool:
    # Hooks act on the adapter being trained only (another loaded adapter stays as it is).
    layers = svd_layers(model, adapter_name).values()
    return any(layer.lora_E[adapter_name].requires_grad for layer in layers)


def on_train_begin(model: nn.Module, adapter_name: str, total_updates: int) -> None:
    cfg = adapter_configs(model)[adapter_name]
    if cfg.total_step is None:
        cfg.check_schedule(total_updates, "the run's number of optimizer updates")
        record_adapter(model, adapter_name, dataclasses.replace(cfg, total_step=total_updates))


def on_update(model: nn.Module, adapter_name: str, update: int) -> None:
    cfg = adapter_configs(model)[adapter_name]
    if not _training(model, adapter_name):
        return
    if cfg.total_step is None:
        raise ConfigError(
            "adalora's schedule needs method.total_step: set it, or train with tunesmith's loop, "
            "which sets it to the run's number of updates (registry.run_train_begin_hooks)"
        )
    if update_and_allocate(model, adapter_name, cfg, update):
        _record_pattern(model, adapter_name)


def _record_pattern(model: nn.Module, adapter_name: str) -> None:
    cfg = adapter_configs(model)[adapter_name]
    pattern = rank_pattern(svd_layers(model, adapter_name), adapter_name)
    record_adapter(model, adapter_name, dataclasses.replace(cfg, rank_pattern=pattern))


def regularizer(model: nn.Module, adapter_name: str):
    cfg = adapter_configs(model)[adapter_name]
    if cfg.orth_reg_weight == 0 or not _training(model, adapter_name):
        return None
    return orth_regularizer(model, adapter_name, cfg.orth_reg_weight)


def state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """{<layer path>.keep: (r,) bool, <layer path>.<ipt|unc>.<param>: EMA} of the allocator."""
    out = {}
    for path, layer in svd_layers(model, adapter_name).items():
        if adapter_name in layer.keep:
            out[f"{path}.keep"] = layer.keep[adapter_name]
        out.update({f"{path}.{k}": t for k, t in layer.ema.get(adapter_name, {}).items()})
    return out


def load_state(model: nn.Module, adapter_name: str, tensors: dict) -> None:
    """Restore state_dict()'s tensors; ConfigError (nothing changed) for a layer not held."""
    layers = svd_layers(model, adapter_name)
    grouped: dict[str, dict] = {path: {} for path in layers}
    for key, tensor in tensors.items():
        path = next((p for p in layers if key.startswith(f"{p}.")), None)
        if path is None:
            raise ConfigError(f"adalora state {key!r} names no layer of adapter {adapter_name!r}")
        grouped[path][key[len(path) + 1 :]] = tensor
    for path, layer in layers.items():
        state = grouped[path]
        dev = layer.lora_E[adapter_name].device
        if "keep" in state:
            layer.keep[adapter_name] = state.pop("keep").to(dev, torch.bool)
        else:
            layer.keep.pop(adapter_name, None)
        layer.ema[adapter_name] = {k: t.to(dev) for k, t in state.items()}
    _record_pattern(model, adapter_name)


def report(model: nn.Module, adapter_name: str) -> dict:
    layers = svd_layers(model, adapter_name)
    kept = sum(
        int(layer.keep[adapter_name].sum())
        if adapter_name in layer.keep
        else layer.lora_A[adapter_name].shape[0]
        for layer in layers.values()
    )
    return {"adalora_kept_ranks": kept, "adalora_layers": len(layers)}


register_method(
    MethodSpec(
        name="adalora",
        config_cls=AdaloraConfig,
        apply=apply_adalora,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
        on_train_begin=on_train_begin,
        on_update=on_update,
        regularizer=regularizer,
        state_dict=state_dict,
        load_state=load_state,
        report=report,
    )
)
