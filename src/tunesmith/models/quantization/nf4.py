"""NF4 (4-bit NormalFloat) blockwise quantization as in QLoRA / bitsandbytes, pure PyTorch.

Notable:
- ``NF4_TABLE`` is bitsandbytes' published 16-level table (``backends/utils.py``
  ``_NF4_QUANT_TABLE``, the same values as ``get_4bit_type("nf4")``);
  ``nf4_table_from_quantiles()`` recomputes it the way ``create_normal_map(offset=0.9677083,
  use_extra_value=True)`` does, with ``torch.distributions.Normal.icdf`` instead of scipy.
- Each block of ``block_size`` (default 64) flattened elements is scaled by its absmax into
  [-1, 1] and every value gets the index of the nearest level (ties go to the lower level).
- Two codes per uint8 byte, the FIRST element in the HIGH nibble (bitsandbytes' layout:
  ``packed = q[0::2] << 4 | q[1::2]``). ``block_size`` must be even so no byte straddles
  two blocks.
- The tensor is zero-padded to a whole number of blocks; ``dequantize`` crops the padding.
- Double quantization (QLoRA section 3): the fp32 absmax constants minus their mean are
  quantized in blocks of 256. DEVIATION: bitsandbytes uses its 8-bit dynamic (non-linear)
  map for these; here they use symmetric absmax int8 (``int8.quantize_absmax``), which
  keeps one code path and bounds the error of every constant by 0.5 / scale of its block.
  The storage cost is identical: 1 byte per constant, one fp32 scale per 256, one fp32 mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tunesmith.errors import ConfigError

from .int8 import AbsmaxQuantized, check_block_size, quantize_absmax

log = logging.getLogger(__name__)

NF4_TABLE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)
# Decision thresholds between neighbouring levels: (15,)
_MIDPOINTS = (NF4_TABLE[:-1] + NF4_TABLE[1:]) / 2
_DQ_BLOCK = 256  # absmax constants per double-quant block, as in bitsandbytes
# The two levels of every packed byte (high nibble first): decoding is one gather per byte
# instead of unpack + per-code gather, which keeps the transient memory of a forward small.
_PAIR_TABLE = torch.stack(
    [NF4_TABLE.repeat_interleave(16), NF4_TABLE.repeat(16)], dim=1
)  # (256, 2)


def nf4_table_from_quantiles(offset: float = 0.9677083) -> torch.Tensor:
    """Recompute the 16 NF4 levels from standard-normal quantiles (bitsandbytes' recipe).

    8 positive quantiles at probabilities linspace(offset, 0.5, 9)[:-1], 7 negative ones at
    linspace(offset, 0.5, 8)[:-1], plus an exact zero; sorted and divided by the largest.
    The probabilities are taken in fp32 and the quantiles in fp64, as bitsandbytes does.
    """
    normal = torch.distributions.Normal(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    )
    pos = normal.icdf(torch.linspace(offset, 0.5, 9)[:-1].double())  # (8,)
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8)[:-1].double())  # (7,)
    levels = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).float().sort().values
    return levels / levels.max()


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (values 0..15, even count) two per byte, first one in the high nibble."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        raise ConfigError(f"pack_nibbles needs an even number of codes, got {flat.numel()}")
    return (flat[0::2] << 4) | flat[1::2]  # (n/2,)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: (n/2,) uint8 bytes -> (n,) uint8 codes."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)


@dataclass
class DoubleQuantized:
    """Absmax constants stored as int8 codes of (absmax - mean) plus the fp32 mean."""

    codes: AbsmaxQuantized
    offset: torch.Tensor  # 0-d fp32, the mean that was subtracted

    def dequantize_range(self, start: int, stop: int) -> torch.Tensor:
        """Constants [start, stop) in fp32."""
        return self.codes.dequantize_range(start, stop) + self.offset

    def nbytes(self) -> int:
        """Bytes of the codes, their scales and the mean."""
        return self.codes.nbytes() + self.offset.numel() * self.offset.element_size()


def double_quantize(absmax: torch.Tensor, block_size: int = _DQ_BLOCK) -> DoubleQuantized:
    """Quantize fp32 absmax constants: subtract their mean, then blockwise int8 absmax."""
    offset = absmax.float().mean()  # 0-d
    codes = quantize_absmax(
        absmax.float() - offset, bits=8, granularity="block", block_size=block_size
    )
    return DoubleQuantized(codes, offset)


def dequantize_double(dq: DoubleQuantized) -> torch.Tensor:
    """All absmax constants restored in fp32: (num_blocks,)."""
    return dq.dequantize_range(0, dq.codes.numel)


@dataclass
class NF4Quantized:
    """Packed NF4 codes and the absmax of every block of one tensor.

    Attributes:
        packed: uint8 (num_blocks * block_size / 2,), padding included.
        absmax: fp32 (num_blocks,) or ``DoubleQuantized`` constants.
        shape: the original shape.
        block_size: elements per absmax block.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | DoubleQuantized
    shape: tuple[int, ...]
    block_size: int

    @property
    def numel(self) -> int:
        """Number of elements of the original tensor (padding excluded)."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def double_quant(self) -> bool:
        """Whether the absmax constants are themselves quantized."""
        return isinstance(self.absmax, DoubleQuantized)

    def absmax_range(self, start: int, stop: int) -> torch.Tensor:
        """fp32 absmax of blocks [start, stop)."""
        if self.double_quant:
            return self.absmax.dequantize_range(start, stop)
        return self.absmax[start:stop].float()

    def nbytes(self) -> int:
        """Bytes of the packed codes and of all absmax data."""
        packed = self.packed.numel() * self.packed.element_size()
        if self.double_quant:
            return packed + self.absmax.nbytes()
        return packed + self.absmax.numel() * self.absmax.element_size()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The reconstructed tensor in ``dtype`` and the original shape."""
        return self.dequantize_range(0, self.numel, dtype).reshape(self.shape)

    def dequantize_range(
        self, start: int, stop: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Flattened elements [start, stop) reconstructed, decoding only the blocks they touch."""
        bs = self.block_size
        first, last = start // bs, -(-stop // bs)  # blocks touched: [first, last)
        packed = self.packed[first * bs // 2 : last * bs // 2]  # (nb * bs / 2,)
        # index_select: ~3x faster than advanced indexing on CPU
        values = torch.index_select(_PAIR_TABLE.to(packed.device), 0, packed.int()).view(
            -1, bs
        )  # (nb, bs)
        values.mul_(self.absmax_range(first, last)[:, None])
        return values.view(-1)[start - first * bs : stop - first * bs].to(dtype)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (buffers or a safetensors file)."""
        if not self.double_quant:
            return {"codes": self.packed, "absmax": self.absmax}
        return {
            "codes": self.packed,
            "absmax_codes": self.absmax.codes.codes,
            "absmax_scales": self.absmax.codes.scales,
            "absmax_offset": self.absmax.offset,
        }

    def meta(self) -> dict:
        """JSON-friendly description needed to rebuild from ``to_tensors()``."""
        meta = {
            "shape": list(self.shape),
            "block_size": self.block_size,
            "double_quant": self.double_quant,
        }
        if self.double_quant:
            meta["absmax_meta"] = self.absmax.codes.meta()
        return meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "NF4Quantized":
        """Inverse of ``to_tensors()`` + ``meta()``."""
        absmax = tensors.get("absmax")
        if meta["double_quant"]:
            codes = AbsmaxQuantized.from_tensors(
                {"codes": tensors["absmax_codes"], "scales": tensors["absmax_scales"]},
                meta["absmax_meta"],
            )
            absmax = DoubleQuantized(codes, tensors["absmax_offset"])
        return cls(tensors["codes"], absmax, tuple(meta["shape"]), int(meta["block_size"]))


def quantize_nf4(x: torch.Tensor, block_size: int = 64, double_quant: bool = True) -> NF4Quantized:
    """Quantize ``x`` to NF4 codes with blockwise absmax (optionally double-quantized).

    Args:
        x: any floating tensor; read in fp32 and flattened.
        block_size: elements per absmax block; a positive even integer (bitsandbytes: 64).
        double_quant: quantize the absmax constants to int8 in blocks of 256.

    Raises:
        ConfigError: block_size is not a positive even integer.
    """
    check_block_size(block_size)
    if block_size % 2:
        raise ConfigError(
            f"NF4 block_size must be even (two 4-bit codes share a byte), "
            f"got {block_size}; use e.g. 64"
        )
    flat = x.detach().reshape(-1).float()
    pad = -flat.numel() % block_size
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size)  # (nb, bs)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # zero block -> codes of 0.0
    scaled = (blocks / safe[:, None]).clamp(-1.0, 1.0)
    codes = torch.bucketize(scaled, _MIDPOINTS.to(x.device))  # nearest level, (nb, bs)
    absmax_state = double_quantize(absmax) if double_quant else absmax
    return NF4Quantized(pack_nibbles(codes), absmax_state, tuple(x.shape), block_size)


def dequantize_nf4(q: NF4Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reconstructed tensor ``table[code] * absmax`` in ``dtype`` and the original shape."""
    return q.dequantize(dtype)
