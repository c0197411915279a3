"""Ia3Linear: a learned vector l rescales a linear layer's output, y = l * base(x) (keys, values),
or, for a feedforward layer, its input, y = base(l * x) (the FFN inner activation).

Parameters follow PEFT's IA3 layer: `ia3_l` of shape (out, 1), or (1, in) for a feedforward
layer, initialised to ones so the model starts unchanged.
"""

import torch
from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import AdapterLayer


class Ia3Linear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module, is_feedforward: bool):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.is_feedforward = is_feedforward
        self.ia3_l = nn.ParameterDict()
        # Original weight and bias of adapters merged with a zero entry (division cannot undo those).
        self._unmerge_backup: dict[str, tuple] = {}

    def add_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before replacing it")
        w = self.base_layer.weight
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        self.ia3_l[name] = nn.Parameter(torch.ones(shape, device=w.device, dtype=torch.float32))
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.ia3_l.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {"ia3_l": self.ia3_l[name]}  # PEFT's key: `<layer>.ia3_l`

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        del self.ia3_l[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    # --- merge --------------------------------------------------------------------------------
    def _weight_scale(self, l: torch.Tensor) -> torch.Tensor:
        """l shaped to broadcast over the base weight: ff scales input columns, else output rows."""
        l = l.flatten()  # (in,) or (out,)
        scales_stored_rows = self.is_feedforward == self.fan_in_fan_out  # Conv1D stores (in, out)
        return l[:, None] if scales_stored_rows else l[None, :]

    @torch.no_grad()
    def merge(self) -> None:
        w, bias = self.base_layer.weight, self.base_layer.bias
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            l = self.ia3_l[name]
            if (l == 0).any():
                self._unmerge_backup[name] = (w.clone(), None if bias is None else bias.clone())
            w.copy_((w.float() * self._weight_scale(l)).to(w.dtype))
            if bias is not None and not self.is_feedforward:
                bias.copy_(
                    (bias.float() * l.flatten()).to(bias.dtype)
                )  # the bias is part of the output
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w, bias = self.base_layer.weight, self.base_layer.bias
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self._unmerge_backup:
                saved_w, saved_b = self._unmerge_backup.pop(name)
                w.copy_(saved_w)
                if saved_b is not None:
                    bias.copy_(saved_b)
                continue
            l = self.ia3_l[name]
            w.copy_((w.float() / self._weight_scale(l)).to(w.dtype))
            if bias is not None and not self.is_feedforward:
                bias.copy_((bias.float() / l.flatten()).to(bias.dtype))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged_adapters or not self.active_adapters:
            return self.base_layer(x)
        scale = self.ia3_l[self.active_adapters[0]].flatten()  # (in,) or (out,)
        for name in self.active_adapters[1:]:
            scale = scale * self.ia3_l[name].flatten()
        if self.is_feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype))
        out = self.base_layer(x)
        return (out * scale).to(out.dtype)

    def extra_repr(self) -> str:
        kind = "input (feedforward)" if self.is_feedforward else "output"
        return f"in={self.in_features}, out={self.out_features}, scales={kind}, adapters={self.adapter_names}"
