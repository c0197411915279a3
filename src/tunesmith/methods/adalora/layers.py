"""SvdLinear: y = base(x) + (alpha / init_r) * B diag(E) A x, AdaLoRA's SVD-form update.

Parameters follow PEFT's AdaLoRA layer: `lora_A` (r, in) and `lora_B` (out, r), the right and
left singular vectors, ~ N(0, 0.02); `lora_E` (r, 1), the singular values, zero, so the layer
starts exactly at the base. The divisor is `ranknum`, the rank the layer was built with
(init_r), plus 1e-5, as PEFT computes it; pruning a rank zeroes its entry of E, it does not
change the divisor.

Per adapter the layer also holds what the rank allocator (allocator.py) keeps: the EMAs of
the importance of A, B and E, and `keep`, the directions the last allocation kept (PEFT's
rank_pattern for this layer; saving writes only those rows).
"""

import torch
from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import PEFT_PREFIX, AdapterLayer


class SvdLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.lora_A, self.lora_B, self.lora_E = (nn.ParameterDict() for _ in range(3))
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.ranknum: dict[str, float] = {}
        self.keep: dict[str, torch.Tensor] = {}  # (r,) bool, once the allocator has masked
        self.ema: dict[str, dict[str, torch.Tensor]] = {}  # {"ipt.lora_A": ..., "unc.lora_A": ...}
        self.fixed: set[str] = set()  # adapters built at a saved rank pattern: ranks final

    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float, ranknum: int, fixed: bool
    ) -> None:
        """Add adapter `name` of rank r (E = 0). ranknum: the divisor's rank (init_r)."""
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before replacing it")
        dev = self.base_layer.weight.device
        self.lora_A[name] = nn.Parameter(torch.randn(r, self.in_features, device=dev) * 0.02)
        self.lora_B[name] = nn.Parameter(torch.randn(self.out_features, r, device=dev) * 0.02)
        self.lora_E[name] = nn.Parameter(torch.zeros(r, 1, device=dev))
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha if alpha > 0 else float(r)  # PEFT: lora_alpha, or r if 0
        self.ranknum[name] = float(ranknum)
        self.keep.pop(name, None)
        self.ema.pop(name, None)
        self.fixed.discard(name)
        if fixed:
            self.fixed.add(name)
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.lora_A.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {
            "lora_A": self.lora_A[name],
            "lora_B": self.lora_B[name],
            "lora_E": self.lora_E[name],
        }

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        # PEFT saves only the kept directions (resize_state_dict_by_rank_pattern).
        keep = self.keep.get(name)
        a, b, e = self.lora_A[name], self.lora_B[name], self.lora_E[name]
        if keep is not None:
            a, b, e = a[keep], b[:, keep], e[keep]
        prefix = f"{PEFT_PREFIX}{path}"
        return {f"{prefix}.lora_A": a, f"{prefix}.lora_B": b, f"{prefix}.lora_E": e}

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        for d in (self.lora_A, self.lora_B, self.lora_E, self.lora_dropout):
            del d[name]
        for d in (self.scaling, self.ranknum, self.keep, self.ema):
            d.pop(name, None)
        self.fixed.discard(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def set_keep(self, name: str, keep: torch.Tensor) -> None:
        """Zero the singular values outside `keep` (r,) and remember it as the rank pattern."""
        with torch.no_grad():
            self.lora_E[name].masked_fill_(~keep.view(-1, 1), 0.0)
        self.keep[name] = keep

    # --- the update -----------------------------------------------------------------------------
    def _divisor(self, name: str) -> float:
        return self.ranknum[name] + 1e-5

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update in the base weight's layout ((out, in), or (in, out) for Conv1D)."""
        a, b, e = self.lora_A[name], self.lora_B[name], self.lora_E[name]
        delta = b @ (a * e) * self.scaling[name] / self._divisor(name)  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        w = self.base_layer.weight
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                w.add_(self.delta_weight(name).to(w.dtype))
                self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w = self.base_layer.weight
        while self.merged_adapters:
            w.sub_(self.delta_weight(self.merged_adapters.pop()).to(w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged_adapters:
            return result
        for name in self.active_adapters:
            a, b, e = self.lora_A[name], self.lora_B[name], self.lora_E[name]
            h = self.lora_dropout[name](x.to(a.dtype))
            update = (h @ (a * e).T @ b.T) * self.scaling[name] / self._divisor(name)  # (..., out)
            result = result + update.to(result.dtype)
        return result

    def extra_repr(self) -> str:
        ranks = {n: int(self.lora_A[n].shape[0]) for n in self.adapter_names}
        return f"in={self.in_features}, out={self.out_features}, ranks={ranks}"
