"""BottleneckAdapter: a base module plus adapters A(h) = up(act(down(h))), h -> h/reduction -> h.

Three ways to combine A with the wrapped module, chosen by where the adapter sits:
  serial    (Houlsby, Pfeiffer; wraps an output projection):  y = base(x); y + s * A(y)
  parallel  (He et al. 2021; wraps the FFN block):            base(x) + s * A(x)
  residual  (parallel, for BERT's FFN output block, which adds the residual x itself and then
             applies LayerNorm: base(h, x) = LN(dense(h) + x)):  base(h, x + s * A(x))
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, UnsupportedModuleError
from ..base import AdapterLayer

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}
MODES = ("serial", "parallel", "residual")


@dataclass(frozen=True)
class Family:
    """Full-name regexes of the modules an adapter wraps in one model family."""

    attn_out: str  # attention output projection (serial adapter after attention)
    ffn_out: str  # FFN output projection (serial adapter after the FFN)
    ffn: str  # FFN block a parallel adapter runs beside
    ffn_mode: str  # how a parallel adapter joins that block: "parallel" or "residual"


FAMILIES = {
    "llama": Family(
        r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj", r".*\.mlp", "parallel"
    ),  # also Mistral, Qwen2
    "gpt2": Family(r".*\.attn\.c_proj", r".*\.mlp\.c_proj", r".*\.mlp", "parallel"),
    "bert": Family(
        r".*\.attention\.output\.dense",
        r".*\.layer\.\d+\.output\.dense",
        r".*\.layer\.\d+\.output",
        "residual",
    ),  # also RoBERTa
}


def model_family(model: nn.Module) -> Family:
    """The first family whose FFN output projection the model has. Raises UnsupportedModuleError."""
    names = [n for n, _ in model.named_modules()]
    for family in FAMILIES.values():
        if any(re.fullmatch(family.ffn_out, n) for n in names):
            return family
    raise UnsupportedModuleError(
        f"bottleneck adapters know Llama-style (self_attn.o_proj, mlp.down_proj), GPT-2 (attn.c_proj, mlp.c_proj) "
        f"and BERT-style (attention.output.dense, output.dense) models; this {type(model).__name__} has none of them"
    )


def placement_targets(model: nn.Module, placement: str) -> list[tuple[str, str]]:
    """(module name, mode) of every module to wrap for `placement` (houlsby, pfeiffer or parallel)."""
    family = model_family(model)
    patterns = {
        "houlsby": [(family.attn_out, "serial"), (family.ffn_out, "serial")],
        "pfeiffer": [(family.ffn_out, "serial")],
        "parallel": [(family.ffn, family.ffn_mode)],
    }[placement]
    names = [n for n, _ in model.named_modules()]
    return [(n, mode) for pattern, mode in patterns for n in names if re.fullmatch(pattern, n)]


class BottleneckAdapter(AdapterLayer):
    """Wraps a module (see the module docstring for the modes); adapters are kept in float32."""

    def __init__(self, base_layer: nn.Module, mode: str):
        super().__init__(base_layer)
        assert mode in MODES, mode
        self.mode = mode
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.non_linearity: dict[str, str] = {}
        self.scaling: dict[str, float] = {}

    def add_adapter(
        self,
        name: str,
        hidden: int,
        bottleneck: int,
        non_linearity: str,
        scaling: float,
        init_std: float,
    ) -> None:
        """Near-identity init (Houlsby): down ~ truncated normal(0, init_std), up = 0 and zero biases,
        so A(h) = 0 and the wrapped module's output is unchanged until training moves `up`."""
        device = next(self.base_layer.parameters()).device
        down = nn.Linear(hidden, bottleneck, device=device, dtype=torch.float32)
        up = nn.Linear(bottleneck, hidden, device=device, dtype=torch.float32)
        nn.init.trunc_normal_(down.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        for tensor in (down.bias, up.weight, up.bias):
            nn.init.zeros_(tensor)
        self.adapter_down[name], self.adapter_up[name] = down, up
        self.non_linearity[name], self.scaling[name] = non_linearity, scaling
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.adapter_down.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        down, up = self.adapter_down[name], self.adapter_up[name]
        return {
            "adapter_down.weight": down.weight,
            "adapter_down.bias": down.bias,
            "adapter_up.weight": up.weight,
            "adapter_up.bias": up.bias,
        }

    def delete_adapter(self, name: str) -> None:
        for d in (self.adapter_down, self.adapter_up):
            del d[name]
        self.non_linearity.pop(name)
        self.scaling.pop(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def merge(self) -> None:
        raise ConfigError(
            "bottleneck adapters have a nonlinearity and cannot be merged into the base weights; "
            "keep the adapter loaded for inference"
        )

    def unmerge(self) -> None:
        pass  # never merged

    def _adapt(self, h: torch.Tensor) -> torch.Tensor:
        """Sum over active adapters of s * up(act(down(h))); (..., hidden) -> (..., hidden)."""
        out = torch.zeros_like(h)
        for name in self.active_adapters:
            down, up = self.adapter_down[name], self.adapter_up[name]
            z = ACTIVATIONS[self.non_linearity[name]](
                down(h.to(down.weight.dtype))
            )  # (..., bottleneck)
            out = out + (up(z) * self.scaling[name]).to(h.dtype)
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.disabled or not self.active_adapters:
            return self.base_layer(x, *args, **kwargs)
        if self.mode == "serial":
            y = self.base_layer(x, *args, **kwargs)
            return y + self._adapt(y)
        if self.mode == "parallel":
            return self.base_layer(x, *args, **kwargs) + self._adapt(x)
        residual = (
            args[0] if args else kwargs.pop("input_tensor")
        )  # BertOutput.forward(hidden, input_tensor)
        return self.base_layer(x, residual + self._adapt(residual), *args[1:], **kwargs)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, adapters={self.adapter_names}"
