"""LokrLinear: y = base(x) + x @ dW^T with dW = (alpha / r) * kron(W1, W2), (out, in).

PEFT's shapes: out = a * b and in = c * d are each split by `factorization` (two factors near the
square root, or one equal to decompose_factor); W1 is (a, c), W2 is (b, d). A factor is a full
matrix (`lokr_w1`, `lokr_w2`), or a rank-r product (`lokr_w1_a` @ `lokr_w1_b`, `lokr_w2_a` @
`lokr_w2_b`) when r is below half its larger side (for W1 only with decompose_both).
PEFT's init: W1 = 0 (or its `_a` half), the rest kaiming-uniform, so the update starts at zero;
"lycoris" zeroes W2 (or `lokr_w2_b`) instead.
"""

import torch
from torch import nn

from ..delta_linear import DeltaLinear, kaiming_uniform_


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m * n = dimension and m <= n, PEFT's (and LyCORIS') split: m = factor when it
    divides dimension; otherwise the divisor pair with the smallest sum whose m stays <= factor
    (factor -1: no bound, so the pair nearest the square root). factorization(128) = (8, 16)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


class LokrLinear(DeltaLinear):
    param_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, tuple[float, bool]] = {}  # (probability, rescale)

    def add_adapter(self, name: str, cfg) -> None:
        """Add adapter `name` from a LokrConfig, with PEFT's shapes and initialisation."""
        self._start_adapter(name)
        a, b = factorization(self.out_features, cfg.decompose_factor)
        c, d = factorization(self.in_features, cfg.decompose_factor)
        r = cfg.r
        if cfg.decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a[name], self.lokr_w1_b[name] = (
                self._new_param(a, r),
                self._new_param(r, c),
            )
        else:
            self.lokr_w1[name] = self._new_param(a, c)
        if r < max(b, d) / 2:
            self.lokr_w2_a[name], self.lokr_w2_b[name] = (
                self._new_param(b, r),
                self._new_param(r, d),
            )
        else:
            self.lokr_w2[name] = self._new_param(b, d)
        self._init(name, cfg.init_weights)
        self.scaling[name] = cfg.scaling
        self.rank_dropout[name] = (cfg.rank_dropout, cfg.rank_dropout_scale)
        self.module_dropout[name] = cfg.module_dropout
        self.active_adapters = [name]

    @torch.no_grad()
    def _init(self, name: str, init) -> None:
        params = self.adapter_parameters(name)
        for p in params.values():
            kaiming_uniform_(p)
        # One zero factor makes kron(W1, W2) zero: W1's (or its "a" half) by default, W2's for lycoris.
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b")}.get(init, ())
        for key in zero:
            if key in params:
                nn.init.zeros_(params[key])

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)
        self.rank_dropout.pop(name, None)

    def _factor(self, name: str, which: str) -> torch.Tensor:
        full = getattr(self, f"lokr_{which}")
        if name in full:
            return full[name]
        return getattr(self, f"lokr_{which}_a")[name] @ getattr(self, f"lokr_{which}_b")[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        w1, w2 = self._factor(name, "w1"), self._factor(name, "w2")  # (a, c), (b, d)
        return torch.kron(w1, w2.contiguous()) * self.scaling[name]  # (a * b, c * d) = (out, in)

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight(name)
        p, rescale = self.rank_dropout[name]
        if self.training and p > 0:
            # PEFT: drop output rows of dW; rescaled by the kept share only with rank_dropout_scale.
            keep = (torch.rand(delta.shape[0], device=delta.device) > p).to(delta.dtype)
            if rescale:
                keep = keep / keep.mean().clamp_min(1e-12)
            delta = delta * keep[:, None]
        return nn.functional.linear(x, delta)
