"""The contract every method follows, and the model-level operations built on it.

A method wraps base modules in `AdapterLayer`s. Each layer keeps its parameters per adapter name
(so one model can hold several adapters) and implements merge/unmerge/activation. Everything here
works on any method through that interface: nothing branches on a method's name. Methods that
train base weights in place (full, selected, bitfit) register them with `train_base_parameters`.
"""
import contextlib
import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..config.errors import ConfigError, UnsupportedModuleError
from ..config.schema import MethodConfig
from ..utils.modules import is_linear_like

__all__ = ["MethodConfig", "MethodSpec", "AdapterLayer", "VirtualTokenLayer", "PromptTable"]
ADAPTERS_ATTR = "tunesmith_adapters"  # {adapter name: MethodConfig}, stored on the model
# {adapter name: [[parameter, its original tensor], ...]} for methods that train base weights in place
BASE_PARAMS_ATTR = "tunesmith_base_params"
PEFT_PREFIX = "base_model.model."  # PEFT names saved tensors base_model.model.<module path>.<param>


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
    on_step: Optional[Callable] = None  # on_step(model, adapter_name, step) after each optimizer step


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
    """Run the base model: every adapter layer passes its input straight to the base module, and
    base weights trained in place (`train_base_parameters`) hold their originals meanwhile."""
    layers = [layer for _, layer in adapter_layers(model)]
    if any(layer.merged_adapters for layer in layers):
        raise ConfigError("adapters are merged into the weights; unmerge before disabling them")
    for layer in layers:
        layer.disabled = True
    _swap_base_parameters(model)
    try:
        yield model
    finally:
        _swap_base_parameters(model)
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


def train_base_parameters(model: nn.Module, adapter_name: str, params) -> None:
    """Make base parameters `params` adapter `adapter_name`: they train in place (full, bitfit ...).

    A copy of each original is kept so `disabled_adapters` can still run the base model; io saves
    the parameters themselves as base_model.model.<parameter path>. Raises ConfigError when another
    adapter already trains one of them.
    """
    held = getattr(model, BASE_PARAMS_ATTR, {})
    taken = {id(p) for other, pairs in held.items() if other != adapter_name for p, _ in pairs}
    unique = list({id(p): p for p in params}.values())  # tied weights count once
    if any(id(p) in taken for p in unique):
        raise ConfigError(f"adapter {adapter_name!r} would train base weights that adapter(s) "
                          f"{', '.join(n for n in held if n != adapter_name)} already train; load one of them only")
    held[adapter_name] = [[p, p.detach().clone()] for p in unique]
    setattr(model, BASE_PARAMS_ATTR, held)


def base_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The base parameters adapter `adapter_name` trains in place, by their current paths."""
    pairs = getattr(model, BASE_PARAMS_ATTR, {}).get(adapter_name, [])
    paths = {id(p): n for n, p in model.named_parameters()}  # first name of tied weights
    return {paths[id(p)]: p for p, _ in pairs}


def _swap_base_parameters(model: nn.Module) -> None:
    # Swap storage, not values: no copy, and autograd's version counters stay untouched, so a
    # reference forward pass inside disabled_adapters cannot break a pending backward pass.
    for pairs in getattr(model, BASE_PARAMS_ATTR, {}).values():
        for pair in pairs:
            p, other = pair
            pair[1], p.data = p.data, other.to(p.device, p.dtype)


def find_target_linears(model: nn.Module, targets, exclude=("lm_head",)) -> list[str]:
    """Names of linear layers matched by `targets`.

    targets: "all-linear" (every linear layer except the output head), a regex string that must
    match the full module name (PEFT's rule), or a list of names matched against the name's tail.
    Raises UnsupportedModuleError listing the available linear layers when nothing matches.
    """
    linears = [n for n, m in model.named_modules()
               if not n.endswith(".base_layer")
               and f".{PROMPT_LAYER_ATTR}." not in f".{n}"  # a prompt method's encoder is not the model's
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


# --- prompt-based methods ---------------------------------------------------------------------
# Prompt tuning, p-tuning and prefix tuning add n virtual tokens in front of the real ones. The
# model is not wrapped: a VirtualTokenLayer sits on the backbone (`model.base_model`, e.g.
# LlamaModel) and hooks its forward, so `model(...)`, `model.base_model(...)` and `generate`
# keep their signatures and return outputs for the real tokens only.
PROMPT_LAYER_ATTR = "prompt_encoder"  # the VirtualTokenLayer's attribute on the backbone
PROMPT_EMBEDDINGS = "prompt_embeddings"  # PEFT's one saved tensor for prompt-learning methods


class PromptTable(nn.Module):
    """A plain table of virtual-token vectors: the simplest prompt encoder, and the folded form
    of the others (what the saved file holds)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (n, D)

    def forward(self) -> torch.Tensor:
        return self.weight


class VirtualTokenLayer(AdapterLayer):
    """Base of prompt-based methods; one per backbone, holding one encoder per adapter.

    An encoder is a module whose forward() takes no input and returns the adapter's table
    (rows, D). Hooks on the backbone do, for the active adapter with n virtual tokens:
      before the forward: put n ones in front of a 2D attention mask and add n to given
        position_ids (the virtual tokens take positions 0..n-1); on the first pass (no KV cache
        or an empty one) call `inject`, which adds the virtual tokens (to the input embeddings, or
        to the cache as keys/values) and returns how many positions it put in front of the
        sequence;
      after the forward: cut those positions from the hidden states, and drop a KV cache the
        injection made when the caller asked for none (use_cache=False).
    Later cached steps get only the mask and position shift, so cached and uncached generation
    see the same sequence. Subclasses implement `num_virtual_tokens` and `inject`.
    """

    def __init__(self):
        super().__init__(nn.Identity())  # no base module: the layer acts through the hooks
        self.encoders = nn.ModuleDict()
        self._prepended = 0  # positions the running forward put in front of the sequence
        self._drop_cache = False  # the running forward carries a cache its caller did not ask for

    # --- hooks for subclasses -------------------------------------------------------------
    def num_virtual_tokens(self, name: str) -> int:
        raise NotImplementedError

    def inject(self, backbone: nn.Module, kwargs: dict, name: str) -> int:
        """Add the virtual tokens of adapter `name` to the backbone's kwargs (in place) on a first
        pass; return the number of positions put in front of the sequence."""
        raise NotImplementedError

    # --- AdapterLayer -----------------------------------------------------------------------
    def _adapter_names(self) -> Iterator[str]:
        return iter(self.encoders.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return dict(self.encoders[name].named_parameters())

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        # PEFT saves the encoder's output under one bare key, not the encoder's parameters.
        return {PROMPT_EMBEDDINGS: _eval_output(self.encoders[name])}

    def add_encoder(self, name: str, encoder: nn.Module) -> None:
        self.encoders[name] = encoder
        self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        del self.encoders[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def fold(self, name: str) -> None:
        """Replace the encoder of `name` by the table it computes (trainable if it was)."""
        encoder = self.encoders[name]
        trainable = any(p.requires_grad for p in encoder.parameters())
        with torch.no_grad():
            table = PromptTable(_eval_output(encoder).detach().clone())
        self.encoders[name] = table.requires_grad_(trainable)

    def check_mergeable(self) -> None:
        if self.active_adapters:
            raise ConfigError("prompt-based adapters add virtual tokens and cannot be merged into the weights; "
                              "keep them as adapters (load_adapter) or deactivate them first")

    def merge(self) -> None:
        self.check_mergeable()

    def unmerge(self) -> None:
        pass  # nothing is ever merged

    # --- the backbone hooks -------------------------------------------------------------------
    def before_forward(self, backbone: nn.Module, args: tuple, kwargs: dict):
        self._prepended, self._drop_cache = 0, False
        name = self.active_adapters[0] if self.active_adapters else None
        if self.disabled or name is None:
            return None
        kwargs = _as_kwargs(backbone, args, kwargs)
        n = self.num_virtual_tokens(name)
        _extend_attention_mask(kwargs, n)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            self._prepended = self.inject(backbone, kwargs, name)
        use_cache = kwargs.get("use_cache")
        use_cache = getattr(backbone.config, "use_cache", True) if use_cache is None else use_cache
        # else generate(use_cache=False) would pass the cache back in and take it for past tokens
        self._drop_cache = cache is None and kwargs.get("past_key_values") is not None and not use_cache
        return (), kwargs

    def after_forward(self, backbone: nn.Module, args: tuple, kwargs: dict, output):
        k, drop = self._prepended, self._drop_cache
        self._prepended, self._drop_cache = 0, False
        if k:
            output = _drop_front(output, k)
        if drop and not isinstance(output, tuple):
            output = type(output)(**{key: v for key, v in output.items() if key != "past_key_values"})
        return output if k or drop else None

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"


def attach_virtual_tokens(model: nn.Module, layer_cls: type, *args) -> VirtualTokenLayer:
    """The model's VirtualTokenLayer: the one already on its backbone, or a new `layer_cls(*args)`
    attached there with its hooks. Raises ConfigError when the backbone holds another method's."""
    backbone = getattr(model, "base_model", model)
    layer = getattr(backbone, PROMPT_LAYER_ATTR, None)
    if layer is None:
        layer = layer_cls(*args)
        backbone.add_module(PROMPT_LAYER_ATTR, layer)
        backbone.register_forward_pre_hook(layer.before_forward, with_kwargs=True)
        backbone.register_forward_hook(layer.after_forward, with_kwargs=True)
    elif type(layer) is not layer_cls:
        held = ", ".join(n for n, c in adapter_configs(model).items() if n in layer.adapter_names)
        raise ConfigError(f"this model already holds a prompt-based adapter of another method ({held}); one model "
                          f"holds the virtual tokens of one prompt-based method. Load it into a fresh model")
    return layer


def fold_virtual_tokens(model: nn.Module, adapter_name: str = "default") -> None:
    """Fold adapter `adapter_name`'s prompt encoder (MLP, LSTM ...) into the plain table it
    computes, as its saved file holds it; the recorded config gets folded=True."""
    layer = getattr(getattr(model, "base_model", model), PROMPT_LAYER_ATTR, None)
    if layer is None or adapter_name not in layer.adapter_names:
        raise ConfigError(f"the model has no prompt-based adapter named {adapter_name!r} to fold")
    layer.fold(adapter_name)
    cfg = adapter_configs(model)[adapter_name]
    if any(f.name == "folded" for f in dataclasses.fields(cfg)):  # prompt tuning's table is folded already
        record_adapter(model, adapter_name, dataclasses.replace(cfg, folded=True))


def prepend_embeddings(backbone: nn.Module, kwargs: dict, prompts: torch.Tensor) -> int:
    """First-pass injection of embedding-level prompts: put `prompts` (n, H) in front of the
    input embeddings in the backbone's kwargs; returns n."""
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = backbone.get_input_embeddings()(kwargs["input_ids"])  # (B, T, H)
    kwargs["input_ids"] = None
    batch, n = embeds.shape[0], prompts.shape[0]
    kwargs["inputs_embeds"] = torch.cat([prompts.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)
    if (pos := kwargs.get("position_ids")) is not None:  # already shifted by n
        front = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(*pos.shape[:-1], n)
        kwargs["position_ids"] = torch.cat([front, pos], dim=-1)
    if (types := kwargs.get("token_type_ids")) is not None:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
    return n


def _eval_output(encoder: nn.Module) -> torch.Tensor:
    # The table an encoder stands for: computed without dropout, whatever mode the model is in.
    training = encoder.training
    encoder.eval()
    try:
        return encoder()
    finally:
        encoder.train(training)


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    if not args:
        return dict(kwargs)
    names = list(inspect.signature(module.forward).parameters)
    return {**dict(zip(names, args)), **kwargs}


def _extend_attention_mask(kwargs: dict, n: int) -> None:
    mask = kwargs.get("attention_mask")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise UnsupportedModuleError(
            "prompt-based methods need a 2D attention mask (batch, tokens) or none; got "
            f"{type(mask).__name__} {getattr(mask, 'shape', '')} (static/compiled caches build 4D masks: "
            "generate with the default dynamic cache)")
    kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _drop_front(output, k: int):
    if isinstance(output, tuple):
        return (output[0][:, k:], *output[1:])
    output.last_hidden_state = output.last_hidden_state[:, k:]
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(h[:, k:] for h in output.hidden_states)
    return output
