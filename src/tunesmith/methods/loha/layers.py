"""LohaLinear: y = base(x) + x @ dW^T with dW = (alpha / r) * (W1a @ W1b) * (W2a @ W2b).

Parameters follow PEFT's LoHa layer for linear layers: hada_w1_a, hada_w2_a (out, r) and
hada_w1_b, hada_w2_b (r, in). PEFT's init (FedPara's He init): all kaiming-uniform except
hada_w2_b = 0, so the update starts at zero.
"""

import torch
from torch import nn

from ..delta_linear import DeltaLinear, kaiming_uniform_


class LohaLinear(DeltaLinear):
    param_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, float] = {}

    def add_adapter(self, name: str, cfg) -> None:
        """Add adapter `name` from a LohaConfig, initialised as PEFT does."""
        self._start_adapter(name)
        out, inp, r = self.out_features, self.in_features, cfg.r
        self.hada_w1_a[name], self.hada_w2_a[name] = (
            self._new_param(out, r),
            self._new_param(out, r),
        )
        self.hada_w1_b[name], self.hada_w2_b[name] = (
            self._new_param(r, inp),
            self._new_param(r, inp),
        )
        with torch.no_grad():
            for attr in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                kaiming_uniform_(getattr(self, attr)[name])
            if cfg.init_weights:
                nn.init.zeros_(self.hada_w2_b[name])
        self.scaling[name] = cfg.scaling
        self.rank_dropout[name] = cfg.rank_dropout
        self.module_dropout[name] = cfg.module_dropout
        self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)
        self.rank_dropout.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        w1 = self.hada_w1_a[name] @ self.hada_w1_b[name]  # (out, in)
        w2 = self.hada_w2_a[name] @ self.hada_w2_b[name]  # (out, in)
        return w1 * w2 * self.scaling[name]

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight(name)
        p = self.rank_dropout[name]
        if self.training and p > 0:
            # PEFT (after LyCORIS): drop output rows of dW, rescaled by the kept share.
            keep = (torch.rand(delta.shape[0], device=delta.device) > p).to(delta.dtype)
            delta = delta * (keep / keep.mean().clamp_min(1e-12))[:, None]
        return nn.functional.linear(x, delta)
