"""Shared layer of the methods whose update of a linear layer is a dense weight delta:
y = base(x) + x @ dW^T, with dW (out, in) built from a few trained tensors (LoHa, LoKr, VeRA,
FourierFT). Each method subclasses `DeltaLinear` with its parameters and `delta_weight`; the
forward pass, merge/unmerge (GPT-2's Conv1D stores W transposed) and bookkeeping are here.

Like LoRA's layer, adapter tensors are float32 whatever the base weight's dtype; the base output
is computed first and each active adapter's update added to it, as PEFT does.
"""

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..utils.modules import linear_dims, replace_module
from .base import AdapterLayer, find_target_linears


class DeltaLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D. Subclasses set `param_names` (the ParameterDicts that
    hold each adapter's tensors, named as PEFT names them) and implement `delta_weight`."""

    param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # Conv1D: weight (in, out)
        for attr in self.param_names:
            setattr(self, attr, nn.ParameterDict())
        # PEFT's LyCORIS module_dropout: in training, skip the whole adapter with this probability.
        self.module_dropout: dict[str, float] = {}

    # --- for subclasses -------------------------------------------------------------------------
    @abc.abstractmethod
    def delta_weight(self, name: str) -> torch.Tensor:
        """Adapter `name`'s update of the weight, (out, in), float32."""

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """What adapter `name` adds to the base output for input x (..., in): x @ dW^T."""
        return F.linear(x, self.delta_weight(name))

    def _new_param(self, *shape: int) -> nn.Parameter:
        device = self.base_layer.weight.device
        return nn.Parameter(torch.empty(shape, device=device, dtype=torch.float32))

    def _start_adapter(self, name: str) -> None:
        """Call first in a subclass's add_adapter: refuse while merged, drop an earlier `name`."""
        if self.merged_adapters:
            raise ConfigError("unmerge adapters before adding one to a merged layer")
        if name in self.adapter_names:
            self.delete_adapter(name)

    # --- AdapterLayer hooks -----------------------------------------------------------------------
    def _adapter_names(self):
        names = [n for attr in self.param_names for n in getattr(self, attr).keys()]
        return iter(dict.fromkeys(names))

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        # PEFT's keys: `<layer>.<attr>` (no ".weight").
        return {a: getattr(self, a)[name] for a in self.param_names if name in getattr(self, a)}

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        for attr in self.param_names:
            if name in getattr(self, attr):
                del getattr(self, attr)[name]
        self.module_dropout.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    # --- merge ------------------------------------------------------------------------------------
    def _add_to_weight(self, delta: torch.Tensor) -> None:
        w = self.base_layer.weight  # (out, in), or (in, out) for Conv1D
        w.copy_((w.float() + (delta.T if self.fan_in_fan_out else delta)).to(w.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                self._add_to_weight(self.delta_weight(name))
                self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            self._add_to_weight(-self.delta_weight(self.merged_adapters.pop()))

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged_adapters:
            return result
        for name in self.active_adapters:
            skip = self.module_dropout.get(name, 0.0)
            if self.training and skip > 0 and torch.rand(1).item() <= skip:
                continue
            result = result + self.update(name, x.to(torch.float32)).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"


def kaiming_uniform_(p: torch.Tensor) -> None:
    """The init PEFT gives LyCORIS factors (nn.Linear's default: kaiming-uniform, a = sqrt(5))."""
    nn.init.kaiming_uniform_(p, a=math.sqrt(5))


def wrap_targets(model: nn.Module, targets, layer_cls: type) -> list[DeltaLinear]:
    """The `layer_cls` layers on every linear layer `targets` selects, wrapping those not yet wrapped.

    Checks every target before changing the model (a quantized base is refused earlier, by
    check_quantized_base). Raises UnsupportedModuleError when nothing matches, ConfigError when a
    target is already wrapped by another method.
    """
    names = find_target_linears(model, targets)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, AdapterLayer) and not isinstance(module, layer_cls):
            raise ConfigError(
                f"{name} already holds a {type(module).__name__} adapter; one linear-layer "
                f"method per layer: target other layers or delete that adapter first"
            )
    layers = []
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, layer_cls):
            module = layer_cls(module)
            replace_module(model, name, module)
        layers.append(module)
    return layers
