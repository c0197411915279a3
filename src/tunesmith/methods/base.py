"""The contract every method follows, and the model-level operations built on it.

A method wraps base modules in `AdapterLayer`s. Each layer keeps its parameters per adapter name
(so one model can hold several adapters) and implements merge/unmerge/activation. Everything here
works on any method through that interface: nothing branches on a method's name. Methods that
train base weights in place (full, selected, bitfit) register them with
`base_params.train_base_parameters`.

Adding an adapter (`inject_adapter`, as PEFT's BaseTuner.inject_adapter) has one shape for every
method; a method registers only the parts that are its own:

  1. `MethodSpec.resolve(model, cfg) -> cfg` (optional): fill in what depends on the model (an
     architecture's default target modules, the tokenizer a text init used). The result is what
     step 2 gets and what is recorded and saved.
  2. `MethodSpec.apply(model, cfg, adapter_name)` as registered: the method's own part. It wraps or
     creates modules and adds the adapter's parameters; it checks everything it can before
     changing the model. Its return value is ignored.
  3. Shared: the new adapter becomes the active one on every layer that holds it, its config is
     recorded on the model (`adapter_configs`), and its parameters, and only those, train.

Every caller that adds an adapter (`methods.apply_method`, `io.load_adapter`) goes through
`inject_adapter(model, spec, cfg, adapter_name)`, so all get the same result. A method may still
call `record_adapter`/`mark_trainable` itself (some do): both are idempotent.
"""

import abc
import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..config.schema import MethodConfig
from ..errors import ConfigError, UnsupportedModuleError
from ..utils.modules import is_linear_like
from .base_params import (
    BASE_PARAMS_ATTR,
    base_parameters,
    check_starting_weights_kept,
    swap_base_parameters,
)

__all__ = [
    "AdapterLayer",
    "MethodConfig",
    "MethodSpec",
    "inject_adapter",
    "mark_trainable",
    "record_adapter",
]
ADAPTERS_ATTR = "tunesmith_adapters"  # {adapter name: MethodConfig}, stored on the model
PROMPT_LAYER_ATTR = (
    "prompt_encoder"  # backbone attribute holding a prompt method's VirtualTokenLayer
)
PEFT_PREFIX = "base_model.model."  # PEFT names saved tensors base_model.model.<module path>.<param>


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method."""

    name: str
    config_cls: type
    apply: Callable  # apply(model, cfg, adapter_name): the method's own part (see inject_adapter)
    can_merge: bool = False
    supports_4bit: bool = False
    is_prompt_based: bool = False
    peft_type: Optional[str] = None  # the PEFT `peft_type` written to adapter_config.json
    to_peft_config: Optional[Callable] = None  # cfg -> dict of PEFT config keys
    from_peft_config: Optional[Callable] = None  # dict -> cfg
    on_step: Optional[Callable] = (
        None  # on_step(model, adapter_name, step) after each optimizer step
    )
    report: Optional[Callable] = (
        None  # report(model, adapter_name) -> dict of method-specific metrics
    )
    resolve: Optional[Callable] = (
        None  # resolve(model, cfg) -> cfg: model-dependent defaults (step 1)
    )
    # Training hooks (registry.py runs them for every loaded adapter; the loop calls those):
    on_train_begin: Optional[Callable] = None  # (model, adapter_name, total_updates) before step 1
    # (model, adapter_name, update): after each optimizer update (from 1), gradients still set
    on_update: Optional[Callable] = None
    regularizer: Optional[Callable] = None  # (model, adapter_name) -> tensor added to the loss
    # Method state a resume needs (e.g. importance averages): (model, adapter_name) -> {key:
    # tensor}, and load_state(model, adapter_name, {key: tensor}); saved in each checkpoint.
    state_dict: Optional[Callable] = None
    load_state: Optional[Callable] = None
    # combine(model, adapters, weights, new_name, options) -> cfg of the new adapter (combine.py)
    combine: Optional[Callable] = None
    combinations: tuple = ()  # the combination names `combine` accepts (methods/combine.py)
    # cfg -> bool: apply() reads no base weight values, so it works on a model whose parameters
    # are on the meta device (loaded later, shard by shard, under FSDP); None: it may read them
    applies_on_meta: Optional[Callable] = None


def inject_adapter(
    model: nn.Module, spec: MethodSpec, cfg: MethodConfig, adapter_name: str = "default"
) -> nn.Module:
    """Add adapter `adapter_name` to model in place: resolve cfg, run the method's own part, then
    activate, record and mark trainable the new adapter (the module docstring has the steps)."""
    if spec.resolve is not None:
        cfg = spec.resolve(model, cfg)
    spec.apply(model, cfg, adapter_name)
    # Layers wrapped by an earlier adapter but not targeted now keep their own active adapters.
    for _, layer in adapter_layers(model):
        if adapter_name in layer.adapter_names:
            layer.set_active([adapter_name])
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


class AdapterLayer(nn.Module, abc.ABC):
    """A base module plus per-adapter parameters.

    Subclasses implement the abstract hooks (adapter_parameters, merge, unmerge, delete_adapter,
    _adapter_names); one that misses any fails at construction with a TypeError naming it.
    """

    # how many of this layer's adapters can be active at once (None: any number, applied in turn)
    max_active: Optional[int] = None

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False

    # --- hooks for subclasses -------------------------------------------------------------
    @abc.abstractmethod
    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Parameters of one adapter, keyed by their PEFT names relative to this layer."""

    @abc.abstractmethod
    def merge(self) -> None:
        """Fold the active adapters into the base weights (ConfigError if the method cannot)."""

    @abc.abstractmethod
    def unmerge(self) -> None:
        """Undo merge(); nothing when nothing is merged."""

    @abc.abstractmethod
    def delete_adapter(self, name: str) -> None:
        """Drop adapter `name`'s parameters and state from this layer."""

    def check_mergeable(self) -> None:
        """Raise ConfigError if merge() cannot fold the active adapters into the base weights.
        merge_adapters/merge_and_unload ask every layer first, so nothing is half-merged."""

    def merged_module(self) -> nn.Module:
        """The module that replaces this layer in merge_and_unload: by default the base module
        with the active adapters merged in place. Layers override it to return another module
        (e.g. a full-precision linear layer instead of a quantized base)."""
        self.merge()
        return self.base_layer

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        """The tensors of adapter `name` as PEFT's file holds them, keyed by full PEFT names.

        path is this layer's module path. load_adapter copies the saved tensors into the returned
        ones, so for a freshly loaded adapter they must be its parameters. The default suits
        layers whose parameters are what is saved: base_model.model.<path>.<parameter name>, the
        `.base_layer` of other methods' wrappers left out of path (so that two methods on one
        model, e.g. LoRA inside a wrapped attention, save the same names in any order).
        """
        path = re.sub(r"\.base_layer(?=\.)", "", path)
        return {f"{PEFT_PREFIX}{path}.{key}": p for key, p in self.adapter_parameters(name).items()}

    # --- shared -----------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names())

    @abc.abstractmethod
    def _adapter_names(self) -> Iterator[str]:
        """The names of the adapters this layer holds."""

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
    """Store cfg as adapter `name`'s config on model (replacing an earlier one)."""
    if not hasattr(model, ADAPTERS_ATTR):
        setattr(model, ADAPTERS_ATTR, {})
    getattr(model, ADAPTERS_ATTR)[name] = cfg


def set_active_adapter(model: nn.Module, name: str) -> None:
    """Make one adapter the active one (the others stay loaded but unused)."""
    if name not in adapter_configs(model):
        raise ConfigError(
            f"no adapter named {name!r}; loaded: {', '.join(adapter_configs(model)) or 'none'}"
        )
    for _, layer in adapter_layers(model):
        layer.set_active([name])


def set_active_adapters(model: nn.Module, names: list[str]) -> None:
    """Make several adapters active at once (stacking, e.g. prompt tuning + LoRA): each layer runs
    those of `names` it holds. Raises ConfigError for an unknown name, or when one layer would run
    more adapters than it can (two prompt-based adapters share one prompt layer)."""
    loaded = adapter_configs(model)
    unknown = [n for n in names if n not in loaded]
    if unknown:
        raise ConfigError(
            f"no adapter named {', '.join(unknown)}; loaded: {', '.join(loaded) or 'none'}"
        )
    layers = list(adapter_layers(model))
    for path, layer in layers:  # check all before changing any
        held = [n for n in names if n in layer.adapter_names]
        if layer.max_active is not None and len(held) > layer.max_active:
            raise ConfigError(
                f"adapters {', '.join(held)} all act on {path or 'the model'} ({type(layer).__name__}), "
                f"which runs {layer.max_active} at a time: stack adapters that act on different "
                f"layers (e.g. one prompt-based method with LoRA), see docs/methods/composition.md"
            )
    for _, layer in layers:
        layer.set_active(names)


@contextlib.contextmanager
def disabled_adapters(model: nn.Module):
    """Run the base model: every adapter layer passes its input straight to the base module, and
    base weights trained in place (`train_base_parameters`) hold their originals meanwhile."""
    layers = [layer for _, layer in adapter_layers(model)]
    if any(layer.merged_adapters for layer in layers):
        raise ConfigError("adapters are merged into the weights; unmerge before disabling them")
    check_starting_weights_kept(model)
    for layer in layers:
        layer.disabled = True
    swap_base_parameters(model)
    try:
        yield model
    finally:
        swap_base_parameters(model)
        for layer in layers:
            layer.disabled = False


def merge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.check_mergeable()
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights and put the plain base modules back
    (each layer's `merged_module`: for LoRA on a quantized base, a full-precision nn.Linear)."""
    from ..utils.modules import replace_module

    for _, layer in adapter_layers(model):
        layer.check_mergeable()
    for name, layer in list(adapter_layers(model)):
        replace_module(model, name, layer.merged_module())
    if hasattr(model, ADAPTERS_ATTR):
        delattr(model, ADAPTERS_ATTR)
    if hasattr(model, BASE_PARAMS_ATTR):  # base weights trained in place are already "merged"
        delattr(model, BASE_PARAMS_ATTR)
    return model


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    """Freeze everything, then unfreeze the parameters of one adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapter_layers(model):
        if adapter_name in layer.adapter_names:
            for p in layer.adapter_parameters(adapter_name).values():
                p.requires_grad_(True)
    for p in base_parameters(model, adapter_name).values():
        p.requires_grad_(True)


def find_target_linears(model: nn.Module, targets, exclude=("lm_head",)) -> list[str]:
    """Names of linear layers matched by `targets`.

    targets: "all-linear" (every linear layer except the output head), a regex string that must
    match the full module name (PEFT's rule), or a list of names matched against the name's tail.
    Raises UnsupportedModuleError listing the available linear layers when nothing matches.
    """
    modules = dict(model.named_modules())
    # An adapter's own parts (lora_A, its base_layer, ...) are not the model's layers.
    inside_adapters = tuple(f"{n}." for n, m in modules.items() if isinstance(m, AdapterLayer))
    linears = [
        n
        for n, m in modules.items()
        if not n.startswith(inside_adapters)
        and f".{PROMPT_LAYER_ATTR}." not in f".{n}"  # a prompt method's encoder is not the model's
        and is_linear_like(m.base_layer if isinstance(m, AdapterLayer) else m)
    ]
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
            f"its linear layers are named: {', '.join(kinds)} (or use 'all-linear')"
        )
    return matched


def in_layers(names: list[str], layers, pattern=None) -> list[str]:
    """The names in the transformer blocks `layers` (an index or a list; PEFT's layers_to_transform
    rule): a name's block index is its first numbered segment, the one after `pattern` (a block
    list's name such as "layers", or a list of them) when given, else after any name."""
    wanted = {layers} if isinstance(layers, int) else set(layers)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    regexes = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in patterns] or [
        r".*?\.[^.]*\.(?P<idx>\d+)\."
    ]
    kept = []
    for name in names:
        match = next((m for r in regexes if (m := re.match(r, name))), None)
        if match and int(match["idx"]) in wanted:
            kept.append(name)
    return kept
