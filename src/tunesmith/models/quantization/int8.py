"""Symmetric absmax integer quantization (int8 and narrower), pure PyTorch.

For every group of values (the whole tensor, one output row or one block):

    scale = (2**(bits-1) - 1) / max|x|       q = round(scale * x)       x' = q / scale

so the rounding error of each element is at most 0.5 / scale of its group.

Notable:
- The three granularities share one layout: ``scales`` has one fp32 entry per group and
  a group is a run of ``group_size`` consecutive elements of the flattened tensor
  (``tensor``: all of them, ``row``: one row of ``shape[0]``, ``block``: ``block_size``).
- ``codes`` keep the input's shape (no padding is stored); the last block may be short.
- A group whose max|x| is 0 gets the scale of max|x| = 1, so it quantizes to zeros and
  dequantizes to exact zeros instead of dividing by zero. Groups with max|x| below 1e-30
  are treated as max|x| = 1e-30 so that ``scale`` stays finite in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tunesmith.errors import ConfigError

log = logging.getLogger(__name__)

GRANULARITIES = ("tensor", "row", "block")
_TINY_ABSMAX = 1e-30  # keeps qmax / absmax finite in fp32 (fp32 max is ~3.4e38)


@dataclass
class AbsmaxQuantized:
    """Integer codes and per-group fp32 scales of one tensor.

    Attributes:
        codes: int8 tensor of the original shape, values in [-qmax, qmax].
        scales: fp32 tensor (num_groups,), ``qmax / max|x|`` of each group.
        shape: the original shape.
        bits: bits per code (2..8); qmax = 2**(bits-1) - 1.
        granularity: "tensor", "row" or "block".
        group_size: consecutive flattened elements sharing one scale.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    shape: tuple[int, ...]
    bits: int
    granularity: str
    group_size: int

    @property
    def numel(self) -> int:
        """Number of elements of the original tensor."""
        return self.codes.numel()

    def nbytes(self) -> int:
        """Bytes held by the codes and the scales."""
        return _nbytes(self.codes) + _nbytes(self.scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The reconstructed tensor ``q / scale`` in ``dtype``, original shape."""
        return self.dequantize_range(0, self.numel, dtype).reshape(self.shape)

    def dequantize_range(
        self, start: int, stop: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Flattened elements [start, stop) reconstructed, without touching the others."""
        g = self.group_size
        first, last = start // g, -(-stop // g)  # groups touched: [first, last)
        bounds = torch.arange(first, last + 1, device=self.scales.device) * g
        counts = bounds[1:].clamp(max=stop) - bounds[:-1].clamp(min=start)  # (groups,)
        scales = self.scales[first:last].repeat_interleave(counts)  # (stop - start,)
        codes = self.codes.reshape(-1)[start:stop].float()
        return (codes / scales).to(dtype)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (buffers or a safetensors file)."""
        return {"codes": self.codes, "scales": self.scales}

    def meta(self) -> dict:
        """JSON-friendly description needed to rebuild from ``to_tensors()``."""
        return {
            "shape": list(self.shape),
            "bits": self.bits,
            "granularity": self.granularity,
            "group_size": self.group_size,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "AbsmaxQuantized":
        """Inverse of ``to_tensors()`` + ``meta()``."""
        return cls(
            tensors["codes"],
            tensors["scales"],
            tuple(meta["shape"]),
            int(meta["bits"]),
            meta["granularity"],
            int(meta["group_size"]),
        )


def quantize_absmax(
    x: torch.Tensor, bits: int = 8, granularity: str = "row", block_size: int = 64
) -> AbsmaxQuantized:
    """Quantize ``x`` with symmetric absmax scaling.

    Args:
        x: any floating tensor; it is read in fp32.
        bits: code width, 2..8 (codes are stored in int8 whatever the width).
        granularity: "tensor" (one scale), "row" (one per index of dim 0; a 1-D tensor is
            one row) or "block" (one per ``block_size`` consecutive flattened elements).
        block_size: group size for "block"; ignored otherwise.

    Raises:
        ConfigError: bits outside 2..8, unknown granularity, or block_size <= 0.
    """
    qmax = _check_args(bits, granularity, block_size)
    flat = x.detach().reshape(-1).float()
    group = _group_size(tuple(x.shape), granularity, block_size)
    blocks = _pad_to_multiple(flat, group).view(-1, group)  # (groups, group)
    absmax = blocks.abs().amax(dim=1)  # (groups,)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax)).clamp(min=_TINY_ABSMAX)
    scales = qmax / absmax  # (groups,)
    codes = torch.round(blocks * scales[:, None]).clamp(-qmax, qmax).to(torch.int8)
    codes = codes.reshape(-1)[: flat.numel()].reshape(x.shape).clone()
    return AbsmaxQuantized(codes, scales.float(), tuple(x.shape), bits, granularity, group)


def dequantize_absmax(q: AbsmaxQuantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reconstructed tensor ``codes / scale`` in ``dtype`` and the original shape."""
    return q.dequantize(dtype)


def check_block_size(block_size: int, what: str = "block_size") -> None:
    """Raise ConfigError unless ``block_size`` is an int >= 1."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ConfigError(f"{what} must be an integer >= 1, got {block_size!r}; use e.g. 64")


def _check_args(bits: int, granularity: str, block_size: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(
            f"bits must be an integer in 2..8 (codes are stored as int8), got {bits!r}"
        )
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    check_block_size(block_size)
    return 2 ** (bits - 1) - 1


def _group_size(shape: tuple[int, ...], granularity: str, block_size: int) -> int:
    numel = 1
    for s in shape:
        numel *= s
    if granularity == "tensor":
        return max(numel, 1)
    if granularity == "row":
        rows = shape[0] if len(shape) >= 2 else 1
        return max(numel // max(rows, 1), 1)
    return block_size


def _pad_to_multiple(flat: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a 1-D tensor to a length that is a multiple of ``multiple``."""
    pad = -flat.numel() % multiple
    return torch.nn.functional.pad(flat, (0, pad)) if pad else flat


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
