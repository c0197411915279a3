"""Shared machinery of the prompt-based methods (prompt tuning, p-tuning, prefix tuning).

They add n virtual tokens in front of the real ones. The model is not wrapped: a VirtualTokenLayer
sits on the backbone (`model.base_model`, e.g. LlamaModel) and hooks its forward, so `model(...)`,
`model.base_model(...)` and `generate` keep their signatures and return outputs for the real
tokens only.
"""

import dataclasses
import inspect
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModuleError
from ..models.compat import CACHE_NAMES, move_cache_kwarg
from .base import PROMPT_LAYER_ATTR, AdapterLayer, adapter_configs, record_adapter

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

    max_active = 1  # one set of virtual tokens in front of the sequence

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
        pass; return the number of positions put in front of the sequence. A cache in kwargs is
        under the backbone's own name (models.compat.cache_kwarg)."""
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
            raise ConfigError(
                "prompt-based adapters add virtual tokens and cannot be merged into the weights; "
                "keep them as adapters (load_adapter) or deactivate them first"
            )

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
        cache_name = move_cache_kwarg(backbone, kwargs)  # "cache" from transformers 5.24 on
        n = self.num_virtual_tokens(name)
        _extend_attention_mask(kwargs, n)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n
        cache = kwargs.get(cache_name)
        if cache is None or cache.get_seq_length() == 0:
            self._prepended = self.inject(backbone, kwargs, name)
        use_cache = kwargs.get("use_cache")
        use_cache = getattr(backbone.config, "use_cache", True) if use_cache is None else use_cache
        # else generate(use_cache=False) would pass the cache back in and take it for past tokens
        self._drop_cache = cache is None and kwargs.get(cache_name) is not None and not use_cache
        return (), kwargs

    def after_forward(self, backbone: nn.Module, args: tuple, kwargs: dict, output):
        k, drop = self._prepended, self._drop_cache
        self._prepended, self._drop_cache = 0, False
        if k:
            output = _drop_front(output, k)
        if drop and not isinstance(output, tuple):
            output = type(output)(**{key: v for key, v in output.items() if key not in CACHE_NAMES})
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
        raise ConfigError(
            f"this model already holds a prompt-based adapter of another method ({held}); one model "
            f"holds the virtual tokens of one prompt-based method. Load it into a fresh model"
        )
    return layer


def fold_virtual_tokens(model: nn.Module, adapter_name: str = "default") -> None:
    """Fold adapter `adapter_name`'s prompt encoder (MLP, LSTM ...) into the plain table it
    computes, as its saved file holds it; the recorded config gets folded=True."""
    layer = getattr(getattr(model, "base_model", model), PROMPT_LAYER_ATTR, None)
    if layer is None or adapter_name not in layer.adapter_names:
        raise ConfigError(f"the model has no prompt-based adapter named {adapter_name!r} to fold")
    layer.fold(adapter_name)
    cfg = adapter_configs(model)[adapter_name]
    if any(
        f.name == "folded" for f in dataclasses.fields(cfg)
    ):  # prompt tuning's table is folded already
        record_adapter(model, adapter_name, dataclasses.replace(cfg, folded=True))


def prepend_embeddings(backbone: nn.Module, kwargs: dict, prompts: torch.Tensor) -> int:
    """First-pass injection of embedding-level prompts: put `prompts` (n, H), or one row's each
    (B, n, H), in front of the input embeddings in the backbone's kwargs; returns n."""
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = backbone.get_input_embeddings()(kwargs["input_ids"])  # (B, T, H)
    kwargs["input_ids"] = None
    batch, n = embeds.shape[0], prompts.shape[-2]
    kwargs["inputs_embeds"] = torch.cat(
        [prompts.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1
    )
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
            "generate with the default dynamic cache)"
        )
    kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _drop_front(output, k: int):
    if isinstance(output, tuple):
        return (output[0][:, k:], *output[1:])
    output.last_hidden_state = output.last_hidden_state[:, k:]
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(h[:, k:] for h in output.hidden_states)
    return output
