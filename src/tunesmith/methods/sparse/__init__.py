"""Sparse fine-tuning: a weight update M * D on the targeted linear layers, made sparse by iterative
magnitude pruning of D (gradual pruning, Zhu & Gupta 2017; the update, not the weights, is pruned,
as in sparse fine-tuning by magnitude of change, Ansell et al. 2022).

D starts at zero with every entry trainable. After optimizer step k * prune_every (k = 1..rounds)
each layer keeps its largest-|D| entries so that its sparsity is cfg.sparsity_after(k); pruned
entries return to the pretrained value and stop training. Trainers drive this through the
`on_step` hook (`registry.run_step_hooks`); `prune` does one round by hand. Mergeable.

Counting: D is a dense tensor, so `count_parameters` reports in * out per layer as trainable;
`kept_count` gives the entries that can still change and `reached_sparsity` the fraction that cannot.
"""

import logging

from torch import nn

from ...utils.modules import replace_module
from ..base import MethodSpec, adapter_configs, find_target_linears
from ..registry import register_method
from .config import PEFT_TYPE, SparseConfig, from_peft_config, to_peft_config
from .layers import SparseDeltaLinear

log = logging.getLogger(__name__)
__all__ = [
    "SparseConfig",
    "SparseDeltaLinear",
    "apply_sparse",
    "kept_count",
    "prune",
    "reached_sparsity",
]


def apply_sparse(model: nn.Module, cfg: SparseConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a SparseDeltaLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing.
    """
    for name in find_target_linears(model, cfg.target_modules):
        module = model.get_submodule(name)
        if not isinstance(module, SparseDeltaLinear):
            module = SparseDeltaLinear(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name)


def _layers(model: nn.Module, adapter_name: str) -> list[SparseDeltaLinear]:
    return [
        m
        for m in model.modules()
        if isinstance(m, SparseDeltaLinear) and adapter_name in m.adapter_names
    ]


def prune(model: nn.Module, sparsity: float, adapter_name: str = "default") -> None:
    """Prune every layer of the adapter to `sparsity` by magnitude of its update (masks only shrink)."""
    for layer in _layers(model, adapter_name):
        layer.prune_to(adapter_name, sparsity)


def kept_count(model: nn.Module, adapter_name: str = "default") -> int:
    """Entries of the update that can still change: the effective trainable-parameter count."""
    return sum(int(layer.mask(adapter_name).sum()) for layer in _layers(model, adapter_name))


def reached_sparsity(model: nn.Module, adapter_name: str = "default") -> float:
    """Fraction of the targeted weights held at their pretrained value (0 before the first round)."""
    total = sum(layer.mask(adapter_name).numel() for layer in _layers(model, adapter_name))
    return 1 - kept_count(model, adapter_name) / total


def on_step(model: nn.Module, adapter_name: str, step: int) -> None:
    """After optimizer step `step`: catch up with the pruning schedule, then re-zero pruned entries."""
    cfg = adapter_configs(model)[adapter_name]
    prune(model, cfg.sparsity_after(cfg.round_at(step)), adapter_name)
    for layer in _layers(model, adapter_name):
        layer.zero_pruned(adapter_name)


def report(model: nn.Module, adapter_name: str) -> dict:
    reached, cfg = reached_sparsity(model, adapter_name), adapter_configs(model)[adapter_name]
    if reached < cfg.sparsity:
        log.warning(
            "sparse: reached sparsity %.3f of the target %.3f: training ended before the last of %d "
            "pruning rounds (one every %d steps); lower method.prune_every or train longer",
            reached,
            cfg.sparsity,
            cfg.rounds,
            cfg.prune_every,
        )
    return {
        "sparsity": round(reached, 4),
        "effective_trainable_params": kept_count(model, adapter_name),
    }


register_method(
    MethodSpec(
        name="sparse",
        config_cls=SparseConfig,
        apply=apply_sparse,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
        on_step=on_step,
        report=report,
    )
)
