"""The contract every method follows, and the model-level operations built on it.

A method wraps base modules in `AdapterLayer`s. Each layer keeps its parameters per adapter name
(so one model can hold several adapters) and implements merge/unmerge/activation. Everything here
works on any method through that interface: nothing branches on a method's name.
"""
import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from torch import nn

from ..config.errors import ConfigError, UnsupportedModuleError
from ..config.schema import MethodConfig
from ..utils.modules import is_linear_like

__all__ = ["MethodConfig", "MethodSpec", "AdapterLayer"]
ADAPTERS_ATTR = "tunesmith_adapters"  # {adapter name: MethodConfig}, stored on the model


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method."""

    name: str
    config_cls: type
    apply: Callable  # apply(model, cfg, adapter_name) -> model, wraps modules in place
    can_merge: bool = False
    supports_4bit: bool = False
    is_prompt_based: bool = False
    peft_type: Optional[str] = None  # the PEFT `peft_type` written to adapter_config.json
    to_peft_config: Optional[Callable] = None  # cfg -> dict of PEFT config keys
    from_peft_config: Optional[Callable] = None  # dict -> cfg


class AdapterLayer(nn.Module):
    """A base module plus per-adapter parameters. Subclasses implement the four hooks below."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False

    # --- hooks for subclasses -------------------------------------------------------------
    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Parameters of one adapter, keyed by their PEFT names relative to this layer."""
        raise NotImplementedError

    def merge(self) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError

    def delete_adapter(self, name: str) -> None:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names())

    def _adapter_names(self) -> Iterator[str]:
        raise NotImplementedError

    def set_active(self, names: list[str]) -> None:
        if self.merged_adapters:
            raise ConfigError("unmerge adapters before switching the active adapter")
        self.active_adapters = [n for n in names if n in self.adapter_names]


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_configs(model: nn.Module) -> dict[str, MethodConfig]:
    return getattr(model, ADAPTERS_ATTR, {})


def record_adapter(model: nn.Module, name: str, cfg: MethodConfig) -> None:
    if not hasattr(model, ADAPTERS_ATTR):
        setattr(model, ADAPTERS_ATTR, {})
    getattr(model, ADAPTERS_ATTR)[name] = cfg


def set_active_adapter(model: nn.Module, name: str) -> None:
    """Make one adapter the active one (the others stay loaded but unused)."""
    if name not in adapter_configs(model):
        raise ConfigError(f"no adapter named {name!r}; loaded: {', '.join(adapter_configs(model)) or 'none'}")
    for _, layer in adapter_layers(model):
        layer.set_active([name])


@contextlib.contextmanager
def disabled_adapters(model: nn.Module):
    """Run the base model: every adapter layer passes its input straight to the base module."""
    layers = [layer for _, layer in adapter_layers(model)]
    if any(layer.merged_adapters for layer in layers):
        raise ConfigError("adapters are merged into the weights; unmerge before disabling them")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def merge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights and put the plain base modules back."""
    from ..utils.modules import replace_module

    for name, layer in list(adapter_layers(model)):
        layer.merge()
        replace_module(model, name, layer.base_layer)
    if hasattr(model, ADAPTERS_ATTR):
        delattr(model, ADAPTERS_ATTR)
    return model


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    """Freeze everything, then unfreeze the parameters of one adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapter_layers(model):
        if adapter_name in layer.adapter_names:
            for p in layer.adapter_parameters(adapter_name).values():
                p.requires_grad_(True)


def find_target_linears(model: nn.Module, targets, exclude=("lm_head",)) -> list[str]:
    """Names of linear layers matched by `targets`.

    targets: "all-linear" (every linear layer except the output head), a regex string that must
    match the full module name (PEFT's rule), or a list of names matched against the name's tail.
    Raises UnsupportedModuleError listing the available linear layers when nothing matches.
    """
    linears = [n for n, m in model.named_modules()
               if not n.endswith(".base_layer")
               and is_linear_like(m.base_layer if isinstance(m, AdapterLayer) else m)]
    candidates = [n for n in linears if n.split(".")[-1] not in exclude]
    if targets == "all-linear":
        matched = candidates
    elif isinstance(targets, str):
        matched = [n for n in candidates if re.fullmatch(targets, n)]
    else:
        matched = [n for n in candidates if any(n == t or n.endswith("." + t) for t in targets)]
    if not matched:
        kinds = sorted({n.split(".")[-1] for n in linears})
        raise UnsupportedModuleError(
            f"method.target_modules={targets!r} matches no linear layer of this model; "
            f"its linear layers are named: {', '.join(kinds)} (or use 'all-linear')")
    return matched
