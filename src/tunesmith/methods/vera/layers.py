"""VeraLinear: y = base(x) + lambda_b * (B_s (lambda_d * (A_s dropout(x)))).

A (r, max in) and B (max out, r) are frozen random matrices shared by every layer of an adapter
(`VeraProjection`, one module registered under each layer, as PEFT shares its BufferDicts); each
layer uses the slices A_s = A[:, :in], B_s = B[:out, :]. Trained per layer: lambda_d (r,) and
lambda_b (out,), PEFT's `vera_lambda_d`, `vera_lambda_b`. PEFT's init: lambda_b = 0 (the model
starts unchanged), lambda_d = d_initial; A and B kaiming-uniform from a seeded generator.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..base import PEFT_PREFIX
from ..delta_linear import DeltaLinear


class _Buffers(nn.Module):
    """Non-persistent buffers by adapter name (the projections are saved through peft_state)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor, persistent=False)

    def __contains__(self, name: str) -> bool:
        return name in self._buffers


class VeraProjection(nn.Module):
    """The shared frozen matrices of each VeRA adapter: vera_A[name] (r, in), vera_B[name] (out, r)."""

    def __init__(self):
        super().__init__()
        self.vera_A, self.vera_B = _Buffers(), _Buffers()

    @torch.no_grad()
    def generate(self, name: str, r: int, dims: tuple[int, int], seed: int, device) -> None:
        """PEFT's projections for an adapter over layers of at most dims = (in, out) features:
        kaiming-uniform (fan-in, gain sqrt(2)) from one CPU generator seeded with `seed`, A first."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        a, b = torch.empty(r, dims[0]), torch.empty(dims[1], r)
        for t in (a, b):
            bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(t.shape[1])
            t.uniform_(-bound, bound, generator=generator)
        self.vera_A[name], self.vera_B[name] = a.to(device), b.to(device)


class VeraLinear(DeltaLinear):
    param_names = ("vera_lambda_b", "vera_lambda_d")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.vera_dropout = nn.ModuleDict()
        self.projection = None  # the VeraProjection shared with the model's other VeRA layers
        self.save_projection: dict[str, bool] = {}

    def add_adapter(self, name: str, cfg, projection: VeraProjection) -> None:
        """Add adapter `name` from a VeraConfig; `projection` must hold its A and B."""
        self._start_adapter(name)
        if self.projection is not None and self.projection is not projection:
            raise ConfigError("a VeRA layer shares one projection module; use the model's")
        a, b = projection.vera_A[name], projection.vera_B[name]
        if a.shape[1] < self.in_features or b.shape[0] < self.out_features:
            raise ConfigError(
                f"VeRA projection of adapter {name!r} is too small for a {self.in_features} -> "
                f"{self.out_features} layer"
            )
        self.projection = projection
        self.vera_lambda_b[name] = self._new_param(self.out_features)
        self.vera_lambda_d[name] = self._new_param(cfg.r)
        with torch.no_grad():
            if cfg.init_weights:
                self.vera_lambda_b[name].zero_()
                self.vera_lambda_d[name].fill_(cfg.d_initial)
            else:  # PEFT's values before its init: ones and a standard normal
                self.vera_lambda_b[name].fill_(1.0)
                self.vera_lambda_d[name].normal_()
        self.vera_dropout[name] = (
            nn.Dropout(cfg.vera_dropout) if cfg.vera_dropout else nn.Identity()
        )
        self.save_projection[name] = cfg.save_projection
        self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        if name in self.vera_dropout:
            del self.vera_dropout[name]
        self.save_projection.pop(name, None)
        # The shared A and B stay: other layers may still hold the adapter (apply_vera replaces
        # an adapter by drawing them again before the layers delete and re-add it).

    def _sliced(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.projection.vera_A[name][:, : self.in_features]  # (r, in)
        b = self.projection.vera_B[name][: self.out_features, :]  # (out, r)
        return a, b

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self._sliced(name)
        lambda_b, lambda_d = self.vera_lambda_b[name], self.vera_lambda_d[name]
        return (lambda_b[:, None] * b) @ (lambda_d[:, None] * a)  # (out, in)

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self._sliced(name)
        h = self.vera_lambda_d[name] * F.linear(self.vera_dropout[name](x), a)  # (..., r)
        return self.vera_lambda_b[name] * F.linear(h, b)  # (..., out)

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        """The lambdas, and with save_projection PEFT's model-level `base_model.vera_A` and
        `base_model.vera_B` (every layer names the same shared tensors)."""
        state = super().peft_state(name, path)
        if self.save_projection[name]:
            prefix = PEFT_PREFIX.removesuffix("model.")  # "base_model."
            state[f"{prefix}vera_A"] = self.projection.vera_A[name]
            state[f"{prefix}vera_B"] = self.projection.vera_B[name]
        return state
