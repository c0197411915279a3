"""LoraLinear: y = base(x) + sum over active adapters of (alpha/r) * B(A(dropout(x)))."""
import math

import torch
from torch import nn

from ...config.errors import ConfigError
from ...utils.modules import linear_dims
from ..base import AdapterLayer


class LoraLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    def add_adapter(self, name: str, r: int, scaling: float, dropout: float) -> None:
        """PEFT's initialisation: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the update starts at 0."""
        w = self.base_layer.weight
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=torch.float32)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = scaling
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.lora_A.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {"lora_A.weight": self.lora_A[name].weight, "lora_B.weight": self.lora_B[name].weight}

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        for d in (self.lora_A, self.lora_B, self.lora_dropout):
            del d[name]
        self.scaling.pop(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def delta_weight(self, name: str) -> torch.Tensor:
        """(alpha/r) * B @ A in the base weight's layout ((out, in), or (in, out) for Conv1D)."""
        delta = self.lora_B[name].weight @ self.lora_A[name].weight * self.scaling[name]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def merge(self) -> None:
        with torch.no_grad():
            for name in self.active_adapters:
                if name not in self.merged_adapters:
                    w = self.base_layer.weight
                    w.add_(self.delta_weight(name).to(w.dtype))
                    self.merged_adapters.append(name)

    def unmerge(self) -> None:
        with torch.no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                w = self.base_layer.weight
                w.sub_(self.delta_weight(name).to(w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged_adapters:
            return result
        for name in self.active_adapters:
            a, b = self.lora_A[name], self.lora_B[name]
            update = b(a(self.lora_dropout[name](x.to(a.weight.dtype)))) * self.scaling[name]
            result = result + update.to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
