"""SparseDeltaLinear: y = base(x) + x @ (M * D)^T, a sparse update of a linear layer's weight.

D (out, in) is the trainable update, M (out, in) a boolean mask of the entries allowed to change.
M starts all True (sparsity 0) and only shrinks: pruning keeps the entries of largest |D| and
sends the others back to their pretrained value for good. Gradients at pruned entries are zero
because the forward multiplies D by M.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import PEFT_PREFIX, AdapterLayer


class _Mask(nn.Module):
    # A module only to hold the buffer, so the mask follows model.to(device) and appears in state_dict.
    def __init__(self, shape: tuple[int, int], device):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))


class SparseDeltaLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.sparse_delta = nn.ParameterDict()
        self.sparse_mask = nn.ModuleDict()

    def add_adapter(self, name: str) -> None:
        """D = 0 and M = all ones: the layer starts exactly at the base weight, every entry trainable."""
        w = self.base_layer.weight
        shape = (self.out_features, self.in_features)
        self.sparse_delta[name] = nn.Parameter(
            torch.zeros(shape, device=w.device, dtype=torch.float32)
        )
        self.sparse_mask[name] = _Mask(shape, w.device)
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.sparse_delta.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {"sparse_delta": self.sparse_delta[name]}

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        # The mask is saved too: it is not trained, but it decides which entries may change later.
        return {
            f"{PEFT_PREFIX}{path}.sparse_delta": self.sparse_delta[name],
            f"{PEFT_PREFIX}{path}.sparse_mask": self.mask(name),
        }

    def mask(self, name: str) -> torch.Tensor:
        return self.sparse_mask[name].mask  # (out, in) bool

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        del self.sparse_delta[name], self.sparse_mask[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def prune_to(self, name: str, sparsity: float) -> None:
        """Keep the round((1 - sparsity) * numel) entries of largest |D| among those still kept.

        A no-op when the mask is already at least that sparse, so calling it again is harmless.
        """
        delta, mask = self.sparse_delta[name], self.mask(name)
        n_keep = round((1 - sparsity) * mask.numel())
        if n_keep >= int(mask.sum()):
            return
        with torch.no_grad():
            score = delta.abs().masked_fill(~mask, -1.0).flatten()  # pruned entries never come back
            keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
            keep[score.topk(n_keep).indices] = True
            mask.copy_(keep.view_as(mask))
            delta.mul_(mask)

    def zero_pruned(self, name: str) -> None:
        """Reset D at pruned entries: Adam's momentum moves them after pruning (the forward ignores them)."""
        with torch.no_grad():
            self.sparse_delta[name].mul_(self.mask(name))

    def delta_weight(self, name: str) -> torch.Tensor:
        """M * D in the base weight's layout ((out, in), or (in, out) for Conv1D)."""
        delta = self.sparse_delta[name] * self.mask(name)  # (out, in)
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
            delta = self.sparse_delta[name] * self.mask(
                name
            )  # (out, in); zero gradient where pruned
            result = result + F.linear(x.to(delta.dtype), delta).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
