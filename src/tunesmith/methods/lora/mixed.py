"""Mixed-adapter batches: each row of a batch through its own LoRA adapter, in one forward.

For inference (no dropout). On entering `mixed_adapters`, every LoraLinear gathers, for each row,
its adapter's A (r, in) and scaled B (out, r), zero-padded to the largest rank (zeros for a row
that asks for no adapter, or for an adapter this layer does not hold). A forward then adds the
rows' updates with two batched matmuls, whatever the number of adapters, instead of one pass per
adapter over a masked sub-batch (PEFT's `adapter_names` path).
"""

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from ...errors import ConfigError
from .layers import LoraLinear


class RowAdapters:
    """One layer's per-row LoRA factors: A (B, r, in) and s*B (B, out, r)."""

    def __init__(self, layer: LoraLinear, rows: list[Optional[str]]):
        _check_layer(layer, rows)
        present = [n for n in rows if n is not None and n in layer.lora_A]
        r = max((layer.lora_A[n].weight.shape[0] for n in present), default=1)
        w = next(iter(layer.lora_A.values())).weight
        self.a = w.new_zeros((len(rows), r, layer.in_features))
        self.b = w.new_zeros((len(rows), layer.out_features, r))
        with torch.no_grad():
            for i, name in enumerate(rows):
                if name in present:
                    a = layer.lora_A[name].weight  # (r_i, in)
                    self.a[i, : a.shape[0]] = a
                    self.b[i, :, : a.shape[0]] = layer.lora_B[name].weight * layer.scaling[name]

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) -> the rows' LoRA updates (B, T, out)."""
        if x.dim() != 3 or x.shape[0] != self.a.shape[0]:
            raise ConfigError(
                f"mixed_adapters was given {self.a.shape[0]} row adapters but the layer got input of "
                f"shape {tuple(x.shape)}; give one adapter name per batch row"
            )
        h = torch.bmm(x.to(self.a.dtype), self.a.transpose(1, 2))  # (B, T, r)
        return torch.bmm(h, self.b.transpose(1, 2))  # (B, T, out)


@contextmanager
def mixed_adapters(model, rows: list[Optional[str]]) -> Iterator:
    """Within the block, row i of every batch uses adapter rows[i] (None: the base model alone).

    Raises ConfigError for an unknown adapter name, a merged layer, or DoRA/PiSSA adapters (their
    update is not a plain B @ A).
    """
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    known = {n for layer in layers for n in layer.adapter_names}
    unknown = sorted({n for n in rows if n is not None} - known)
    if unknown:
        raise ConfigError(
            f"mixed_adapters: no adapter named {', '.join(unknown)}; the model has "
            f"{', '.join(sorted(known)) or 'no LoRA adapter'}"
        )
    try:
        for layer in layers:
            layer.row_adapters = RowAdapters(layer, rows)
        yield model
    finally:
        for layer in layers:
            layer.row_adapters = None


def _check_layer(layer: LoraLinear, rows: list) -> None:
    if layer.merged_adapters:
        raise ConfigError("mixed_adapters needs unmerged adapters: unmerge them first")
    odd = sorted(
        {n for n in rows if n in layer.lora_magnitude_vector} | set(layer.pissa_init.keys())
    )
    if odd:
        raise ConfigError(
            f"mixed_adapters supports plain LoRA adapters; {', '.join(odd)} use DoRA or PiSSA"
        )
