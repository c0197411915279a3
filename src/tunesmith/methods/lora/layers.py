"""LoraLinear: y = base(x) + sum over active adapters of (alpha/r) * B(A(dropout(x))).

Variants, each following Hugging Face PEFT so files and outputs match:
- DoRA: y = m / ||W0 + s*B@A||_row * (W0 + s*B@A) x + bias, with m (out,) learned and the row
  norm detached from the graph (as in the DoRA paper, section 4.3, and PEFT).
- PiSSA: A, B start from the top-r singular triplets of W0 and the base weight becomes the residual
  W0 - s*B@A, so the output is unchanged at init. The initial A0, B0 are kept (not saved) so that
  a disabled or inactive PiSSA adapter still gives the original model's output.
- A quantized base (QLoRA; models.quantization.QuantizedLinear, recognised by duck typing) is
  frozen codes: merge() dequantizes, adds s*B@A and re-quantizes (the layer keeps the error in
  `base_layer.last_requantization_error`), unmerge() puts the codes from before the merge back,
  and merge_and_unload gives a full-precision nn.Linear instead. DoRA and PiSSA need to read or
  rewrite W0 at full precision and are refused there.
"""

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...utils.modules import is_quantized_linear, linear_dims
from ..base import AdapterLayer


def check_quantized_variant(base_layer: nn.Module, use_dora: bool, init: str) -> None:
    """Raise ConfigError when DoRA or PiSSA is asked for on a quantized base layer."""
    if not is_quantized_linear(base_layer):
        return
    variant = "use_dora=true" if use_dora else "init='pissa'" if init == "pissa" else None
    if variant:
        raise ConfigError(
            f"LoRA with method.{variant} is not supported on a quantized base (model.quantize="
            f"{base_layer.scheme}): it needs the full-precision base weight. Use plain LoRA "
            f"(method.use_dora=false, method.init=default) or model.quantize=none"
        )


class PissaInit(nn.Module):
    """The PiSSA adapter's initial A0 (r, in) and B0 (out, r): W0 = W_res + s * B0 @ A0."""

    def __init__(self, a0: torch.Tensor, b0: torch.Tensor):
        super().__init__()
        # Not persistent: recomputed from W0 when the adapter is loaded, as PEFT does.
        self.register_buffer("A0", a0, persistent=False)
        self.register_buffer("B0", b0, persistent=False)


class LoraLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not (
            isinstance(base_layer, nn.Linear) or is_quantized_linear(base_layer)
        )
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()  # DoRA adapters only: m, (out,)
        self.pissa_init = nn.ModuleDict()  # PiSSA adapters only
        self.scaling: dict[str, float] = {}
        self._merged_norms: dict[
            str, torch.Tensor
        ] = {}  # DoRA row norms at merge time, for unmerge
        self._premerge: list[
            nn.Module
        ] = []  # quantized base: a copy from before merging (a list: not a submodule)

    def add_adapter(
        self,
        name: str,
        r: int,
        scaling: float,
        dropout: float,
        use_dora: bool = False,
        init: str = "default",
    ) -> None:
        """Add adapter `name`, initialised as PEFT does for init_lora_weights=True/"gaussian"/"pissa".

        Raises ConfigError when PiSSA would share this layer with another adapter (PiSSA rewrites
        the base weight, which the other adapter relies on) or when r exceeds the layer's rank.
        """
        self.check_can_add(name, init)
        check_quantized_variant(self.base_layer, use_dora, init)
        if name in self.adapter_names:  # replacing: drop its DoRA/PiSSA state (and restore W0)
            self.delete_adapter(name)
        device = next(
            itertools.chain(self.base_layer.parameters(), self.base_layer.buffers())
        ).device
        self.lora_A[name] = nn.Linear(
            self.in_features, r, bias=False, device=device, dtype=torch.float32
        )
        self.lora_B[name] = nn.Linear(
            r, self.out_features, bias=False, device=device, dtype=torch.float32
        )
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = scaling
        if init == "pissa":
            self._init_pissa(name, r)
        else:
            self._init_default(name, r, gaussian=init == "gaussian")
        if use_dora:
            # After PiSSA, W_res + s*B0@A0 = W0, so m starts at the row norms of W0 either way.
            with torch.no_grad():
                norm = self._row_norm(self._weight_out_in().float() + self._lora_weight(name))
            self.lora_magnitude_vector[name] = nn.Parameter(norm)
        self.active_adapters = [name]

    def check_can_add(self, name: str, init: str) -> None:
        """Raise ConfigError if PiSSA would share this layer with another adapter."""
        others = [n for n in self.adapter_names if n != name]
        pissa = [n for n in others if n in self.pissa_init] + ([name] if init == "pissa" else [])
        if others and pissa:
            raise ConfigError(
                f"PiSSA adapter {pissa[0]!r} cannot share a layer with other adapters (this layer "
                f"holds {', '.join(others)}): PiSSA replaces the base weight by a residual. Use "
                f"init='default' for the additional adapter, or delete the other adapter first"
            )

    def _init_default(self, name: str, r: int, gaussian: bool) -> None:
        # PEFT: A ~ kaiming-uniform(a=sqrt(5)) (or N(0, 1/r) for "gaussian"), B = 0: the update starts at 0.
        if gaussian:
            nn.init.normal_(self.lora_A[name].weight, std=1 / r)
        else:
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)

    @torch.no_grad()
    def _init_pissa(self, name: str, r: int) -> None:
        w = self.base_layer.weight
        if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(
                f"PiSSA needs float weights, got {w.dtype}; initialise it before quantising the model"
            )
        if r > min(self.in_features, self.out_features):
            raise ConfigError(
                f"PiSSA rank r={r} exceeds the rank of a {self.out_features}x{self.in_features} "
                f"layer; use r <= {min(self.in_features, self.out_features)}"
            )
        w0 = self._weight_out_in().float()  # (out, in)
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        # PEFT divides the singular values by the scaling so that s * B @ A is the top-r part of W0.
        sqrt_s = torch.sqrt(s[:r] / self.scaling[name])  # (r,)
        a0, b0 = sqrt_s[:, None] * vh[:r], u[:, :r] * sqrt_s  # (r, in), (out, r)
        self.lora_A[name].weight.copy_(a0)
        self.lora_B[name].weight.copy_(b0)
        self._set_weight_out_in(w0 - self.scaling[name] * b0 @ a0)
        self.pissa_init[name] = PissaInit(a0.clone(), b0.clone())

    def _adapter_names(self):
        return iter(self.lora_A.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        params = {
            "lora_A.weight": self.lora_A[name].weight,
            "lora_B.weight": self.lora_B[name].weight,
        }
        if name in self.lora_magnitude_vector:
            # PEFT's key: `<layer>.lora_magnitude_vector` (no ".weight").
            params["lora_magnitude_vector"] = self.lora_magnitude_vector[name]
        return params

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name`; deleting a PiSSA adapter puts the original W0 back."""
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        if name in self.pissa_init:
            init = self.pissa_init[name]
            with torch.no_grad():
                self._set_weight_out_in(
                    self._weight_out_in().float() + self.scaling[name] * init.B0 @ init.A0
                )
            del self.pissa_init[name]
        for d in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_magnitude_vector):
            if name in d:
                del d[name]
        self.scaling.pop(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    # --- weights ------------------------------------------------------------------------------
    def _weight_out_in(self) -> torch.Tensor:
        if is_quantized_linear(self.base_layer):
            return self.base_layer.dequantized_weight()  # (out, in), fp32
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w  # (out, in)

    def _set_weight_out_in(self, w: torch.Tensor) -> None:
        if is_quantized_linear(self.base_layer):
            self.base_layer.set_weight(w)  # re-quantizes and records the error introduced
            return
        base = self.base_layer.weight
        base.copy_((w.T if self.fan_in_fan_out else w).to(base.dtype))

    def _lora_weight(self, name: str) -> torch.Tensor:
        return self.lora_B[name].weight @ self.lora_A[name].weight * self.scaling[name]  # (out, in)

    @staticmethod
    def _row_norm(w: torch.Tensor) -> torch.Tensor:
        return torch.linalg.norm(w, dim=1)  # (out,)

    def delta_weight(self, name: str) -> torch.Tensor:
        """(alpha/r) * B @ A in the base weight's layout ((out, in), or (in, out) for Conv1D)."""
        delta = self._lora_weight(name)
        return delta.T if self.fan_in_fan_out else delta

    # --- merge --------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        if is_quantized_linear(self.base_layer) and not self._premerge:
            self._premerge.append(
                copy.deepcopy(self.base_layer)
            )  # re-quantizing is lossy: unmerge restores this
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            w = self._weight_out_in().float() + self._lora_weight(name)  # (out, in)
            if name in self.lora_magnitude_vector:
                # DoRA: W' = m / ||W + sBA|| * (W + sBA); keep the norm to invert this on unmerge.
                self._merged_norms[name] = self._row_norm(w)
                w = w * (self.lora_magnitude_vector[name] / self._merged_norms[name])[:, None]
            self._set_weight_out_in(w)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._premerge:  # quantized base: put the codes from before the merge back, exactly
            self.base_layer = self._premerge.pop()
            self.merged_adapters.clear()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w = self._weight_out_in().float()  # (out, in)
            if name in self.lora_magnitude_vector:
                w = w / (self.lora_magnitude_vector[name] / self._merged_norms.pop(name))[:, None]
            self._set_weight_out_in(w - self._lora_weight(name))

    def merged_module(self) -> nn.Module:
        """What replaces this layer in merge_and_unload. On a quantized base with nothing merged yet:
        a full-precision nn.Linear holding dequantize(W_q) + the active updates (nothing is
        re-quantized); otherwise the base layer with the active adapters merged in place."""
        if not is_quantized_linear(self.base_layer) or self.merged_adapters:
            return super().merged_module()
        with torch.no_grad():
            w = self._weight_out_in()  # (out, in), fp32
            for name in self.active_adapters:
                w = w + self._lora_weight(name)
        return self.base_layer.to_linear(w)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer(x)
        if getattr(self, "row_adapters", None) is not None:  # a mixed-adapter batch, see mixed.py
            return base + self.row_adapters.update(x).to(base.dtype)
        if self.merged_adapters:
            return base
        result = base + self._pissa_restore(x).to(base.dtype) if self.pissa_init else base
        if self.disabled:
            return result
        for name in self.active_adapters:
            if name in self.lora_magnitude_vector:
                dtype = self.lora_A[name].weight.dtype
                update = self._dora_update(name, x.to(dtype), base.to(dtype))
            else:
                update = self._lora_update(name, x)
            result = result + update.to(result.dtype)
        return result

    def _lora_update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """scaling * B(A(dropout(x))). Under autocast x goes to the matmuls as it comes (a cast to
        the adapter's fp32 would be cast straight back), and the scale multiplies the r-wide
        intermediate rather than the output: ~5 % of a step with LoRA on every linear layer."""
        a = self.lora_A[name]
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(a.weight.dtype)
        return self.lora_B[name](a(self.lora_dropout[name](x)) * self.scaling[name])

    def _pissa_restore(self, x: torch.Tensor) -> torch.Tensor:
        # A PiSSA adapter that does not contribute leaves W_res; add s * B0 @ A0 back to give W0 x.
        out = torch.zeros((), dtype=torch.float32, device=x.device)
        for name, init in self.pissa_init.items():
            if self.disabled or name not in self.active_adapters:
                out = (
                    out
                    + F.linear(F.linear(x.to(init.A0.dtype), init.A0), init.B0) * self.scaling[name]
                )
        return out

    def _dora_update(self, name: str, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """What DoRA adds to the base output (PEFT's DoraLinearLayer.forward). x (..., in), base (..., out)."""
        a, b, s = self.lora_A[name], self.lora_B[name], self.scaling[name]
        w = self._weight_out_in().to(x.dtype)  # (out, in)
        norm = self._row_norm(w + s * (b.weight @ a.weight).detach()).detach()  # (out,)
        mag_scale = self.lora_magnitude_vector[name] / norm  # (out,)
        dropout = self.lora_dropout[name]
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base_wx = (
                base - bias.to(base.dtype) if bias is not None else base
            )  # W x without the bias
        else:
            # With dropout, PEFT applies the magnitude to W0 dropout(x), not to W0 x.
            x = dropout(x)
            base_wx = F.linear(x, w)
        return (mag_scale - 1) * base_wx + mag_scale * b(a(x)) * s

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
