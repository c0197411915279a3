"""LnTuningLayer: a normalisation layer whose adapters are trained copies of it.

As PEFT's LNTuningLayer: each adapter is a deep copy of the base norm (`ln_tuning_layers`), and
the active copy runs instead of the base, so the model starts unchanged and the copy's weight (and
bias) train. One adapter at a time. Merging copies the trained values into the base norm (the
originals are kept for unmerge).
"""

import copy
import re

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedModuleError
from ..base import AdapterLayer


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm (any class named *Norm*) with parameters of its own."""
    if isinstance(module, AdapterLayer):
        return isinstance(module, LnTuningLayer)
    named_norm = "norm" in type(module).__name__.lower()
    return named_norm and any(True for _ in module.parameters(recurse=False))


class LnTuningLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ln_tuning_layers = nn.ModuleDict()
        self._originals: list[torch.Tensor] = []  # the base norm's values while merged

    def add_adapter(self, name: str) -> None:
        if self.merged_adapters:
            raise ConfigError("unmerge adapters before adding one to a merged layer")
        self.ln_tuning_layers[name] = copy.deepcopy(self.base_layer)
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.ln_tuning_layers.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        # PEFT's keys: `<norm>.ln_tuning_layers.weight` (and `.bias`).
        layer = self.ln_tuning_layers[name]
        return {f"ln_tuning_layers.{n}": p for n, p in layer.named_parameters()}

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        del self.ln_tuning_layers[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _active(self) -> str:
        if len(self.active_adapters) > 1:
            raise ConfigError(
                f"LN tuning runs one adapter at a time; active: {', '.join(self.active_adapters)}"
            )
        return self.active_adapters[0]

    def check_mergeable(self) -> None:
        if self.active_adapters:
            self._active()

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged_adapters or not self.active_adapters:
            return
        name = self._active()
        trained = dict(self.ln_tuning_layers[name].named_parameters())
        params = dict(self.base_layer.named_parameters())
        self._originals = [p.detach().clone() for p in params.values()]
        for key, p in params.items():
            p.copy_(trained[key])
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged_adapters:
            return
        for p, original in zip(self.base_layer.parameters(), self._originals):
            p.copy_(original)
        self._originals = []
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled or self.merged_adapters or not self.active_adapters:
            return self.base_layer(x, *args, **kwargs)
        return self.ln_tuning_layers[self._active()](x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"


def find_norms(model: nn.Module, targets) -> list[str]:
    """Names of the normalisation layers `targets` selects (None: all of them).

    targets: a regex that must match the full module name, or a list of names matched against
    the name's tail (PEFT's rules). Raises UnsupportedModuleError when nothing matches or when a
    match is not a normalisation layer.
    """
    modules = dict(model.named_modules())
    inside = tuple(f"{n}." for n, m in modules.items() if isinstance(m, AdapterLayer))
    own = {n: m for n, m in modules.items() if n and not n.startswith(inside)}
    norms = [n for n, m in own.items() if is_norm(m)]
    if targets is None:
        matched = norms
    elif isinstance(targets, str):
        matched = [n for n in own if re.fullmatch(targets, n)]
    else:
        matched = [n for n in own if any(n == t or n.endswith("." + t) for t in targets)]
    others = [n for n in matched if n not in norms]
    if others:
        raise UnsupportedModuleError(
            f"method.target_modules={targets!r} matches {others[0]} "
            f"({type(own[others[0]]).__name__}), which is not a normalisation layer: LN tuning "
            f"trains LayerNorm/RMSNorm layers only"
        )
    if not matched:
        kinds = sorted({n.split(".")[-1] for n in norms})
        raise UnsupportedModuleError(
            f"method.target_modules={targets!r} matches no normalisation layer of this model; "
            f"its normalisation layers are named: {', '.join(kinds) or 'none'}"
        )
    return matched
