"""(IA)^3's part of adapter combination (methods/combine.py), as PEFT's IA3Model.add_weighted_adapter:
the new vectors are l = sum_i w_i l_i on every layer (a layer lacking adapter i skips its term).
Only `linear` is defined: the vectors multiply activations, so rank-based combinations do not apply.
"""

import dataclasses

import torch

from ...errors import ConfigError
from ..base import adapter_configs, adapter_layers, inject_adapter
from ..registry import get_method
from .layers import Ia3Linear

COMBINATION_NAMES = ("linear",)


def combine_ia3(model, adapters: list, weights: list, new_name: str, opts):
    """Add (IA)^3 adapter `new_name` = the weighted sum of `adapters`' vectors."""
    cfgs = [adapter_configs(model)[a] for a in adapters]
    cfg = dataclasses.replace(
        cfgs[0],
        target_modules=_union([c.target_modules for c in cfgs]),
        feedforward_modules=_union([c.feedforward_modules for c in cfgs]),
    )
    inject_adapter(model, get_method(cfg.name), cfg, new_name)
    for _, layer in adapter_layers(model):
        if not isinstance(layer, Ia3Linear) or new_name not in layer.adapter_names:
            continue
        with torch.no_grad():
            target = layer.ia3_l[new_name]
            target.zero_()
            for a, w in zip(adapters, weights):
                if a in layer.adapter_names:
                    target += layer.ia3_l[a] * w
    return cfg


def _union(values: list):
    if all(isinstance(v, str) for v in values):
        return "|".join(f"({v})" for v in values)
    if any(isinstance(v, str) for v in values):
        raise ConfigError(
            "combine: some (IA)^3 adapters give their modules as a regex and others as a list of "
            "names; save them with the same kind of target_modules/feedforward_modules"
        )
    return sorted({n for v in values for n in v})
