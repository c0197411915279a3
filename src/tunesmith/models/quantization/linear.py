"""QuantizedLinear: a frozen nn.Linear whose weight lives as NF4 or int8 codes.

Notable:
- Codes, scales and the bias are buffers, not Parameters: ``parameters()`` is empty and
  nothing here is trainable. Gradients still flow to the input, so LoRA (or any adapter)
  placed before, after or beside this layer trains normally.
- The forward never materialises the whole weight: it dequantizes ``chunk_rows`` output
  rows at a time (default: at most ~16 MB of fp32 weight) and computes ``x @ W_chunk^T``.
  A custom autograd function repeats that chunk loop in backward instead of keeping the
  chunks alive for it, so training memory stays bounded too.
- Under ``torch.autocast`` the chunks are dequantized straight to the autocast dtype
  (e.g. bfloat16), otherwise to the input's dtype.
- There is deliberately no ``.weight`` attribute (code that reads ``linear.weight`` would
  silently get a dequantized copy); call ``dequantized_weight()`` instead.
- Schemes: "nf4" (bitsandbytes-style NF4, double quant on by default) and "int8"
  (symmetric absmax, one fp32 scale per ``block_size`` weights, no double quant).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tunesmith.errors import ConfigError, UnsupportedModuleError

from .int8 import AbsmaxQuantized, check_block_size, quantize_absmax
from .nf4 import NF4Quantized, quantize_nf4

log = logging.getLogger(__name__)

SCHEMES = ("nf4", "int8")
_CHUNK_BYTES = 16 * 2**20  # fp32 weight materialised at once by default


def check_scheme(scheme: str, double_quant: bool | None) -> bool:
    """Validate a scheme name and resolve ``double_quant`` (None = the scheme's default).

    Raises:
        ConfigError: unknown scheme, or double_quant=True with "int8".
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"quantization scheme must be one of {SCHEMES}, got {scheme!r}")
    if double_quant is None:
        return scheme == "nf4"
    if double_quant and scheme == "int8":
        raise ConfigError(
            "double_quant=True is only supported for scheme 'nf4'; "
            "pass double_quant=False (or None) with scheme 'int8'"
        )
    return bool(double_quant)


def quantize_weight(
    weight: torch.Tensor, scheme: str, double_quant: bool | None = None, block_size: int = 64
) -> AbsmaxQuantized | NF4Quantized:
    """Quantize a weight tensor with a named scheme (see ``SCHEMES``)."""
    double_quant = check_scheme(scheme, double_quant)
    check_block_size(block_size)
    if scheme == "nf4":
        return quantize_nf4(weight, block_size=block_size, double_quant=double_quant)
    return quantize_absmax(weight, bits=8, granularity="block", block_size=block_size)


class _ChunkedMatmul(torch.autograd.Function):
    """y = x @ W^T with W dequantized chunk by chunk; grad only for x (W is frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantizedLinear") -> torch.Tensor:
        ctx.layer = layer
        with torch.autocast(x.device.type, enabled=False):
            if layer.chunk_rows >= layer.out_features:  # one chunk: no output buffer to fill
                return x @ next(layer._weight_chunks(x.dtype))[1].T
            out = x.new_empty(*x.shape[:-1], layer.out_features)  # (..., out)
            for r0, w in layer._weight_chunks(x.dtype):  # w: (rows, in)
                out[..., r0 : r0 + w.shape[0]] = x @ w.T
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer = ctx.layer
        grad_x = None
        with torch.autocast(grad_out.device.type, enabled=False):
            for r0, w in layer._weight_chunks(grad_out.dtype):
                part = grad_out[..., r0 : r0 + w.shape[0]] @ w  # (..., in)
                grad_x = part if grad_x is None else grad_x + part
        return grad_x, None


class QuantizedLinear(nn.Module):
    """A frozen linear layer storing its weight quantized; see the module docstring."""

    is_quantized = (
        True  # how utils.modules.is_quantized_linear recognises it without importing models
    )

    def __init__(
        self,
        qweight: AbsmaxQuantized | NF4Quantized,
        scheme: str,
        bias: torch.Tensor | None = None,
        chunk_rows: int | None = None,
    ):
        super().__init__()
        check_scheme(scheme, None)
        if len(qweight.shape) != 2:
            raise UnsupportedModuleError(
                f"QuantizedLinear needs a 2-D weight, got shape {tuple(qweight.shape)}"
            )
        self.scheme = scheme
        self.out_features, self.in_features = qweight.shape
        self._meta = qweight.meta()
        for name, tensor in qweight.to_tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if chunk_rows is not None:
            check_block_size(chunk_rows, "chunk_rows")
        self.chunk_rows = chunk_rows or max(1, _CHUNK_BYTES // (4 * max(self.in_features, 1)))

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scheme: str = "nf4",
        double_quant: bool | None = None,
        block_size: int = 64,
        chunk_rows: int | None = None,
    ) -> "QuantizedLinear":
        """Quantize an ``nn.Linear`` (its weight is read in fp32; the module is not modified).

        Args:
            linear: the layer to quantize.
            scheme: "nf4" or "int8".
            double_quant: quantize NF4 absmax constants; None = True for nf4, False for int8.
            block_size: weights per absmax/scale block (nf4 needs an even number).
            chunk_rows: output rows dequantized at once; None = ~16 MB of fp32 weight.

        Raises:
            UnsupportedModuleError: ``linear`` is not an ``nn.Linear``.
            ConfigError: bad scheme, block size, chunk_rows or double_quant combination.
        """
        if not isinstance(linear, nn.Linear):
            raise UnsupportedModuleError(
                f"QuantizedLinear.from_linear needs an nn.Linear, got {type(linear).__name__}"
            )
        qweight = quantize_weight(linear.weight, scheme, double_quant, block_size)
        return cls(qweight, scheme, linear.bias, chunk_rows)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "QuantizedLinear":
        """Rebuild from buffers (``state_dict`` without prefix) and ``spec()`` metadata."""
        qcls = NF4Quantized if meta["scheme"] == "nf4" else AbsmaxQuantized
        check_scheme(meta["scheme"], None)
        qweight = qcls.from_tensors(tensors, meta["weight"])
        return cls(qweight, meta["scheme"], tensors.get("bias"), meta.get("chunk_rows"))

    def spec(self) -> dict:
        """JSON-friendly metadata that, with the buffers, rebuilds this layer."""
        return {
            "scheme": self.scheme,
            "weight": self._meta,
            "chunk_rows": self.chunk_rows,
            "has_bias": self.bias is not None,
        }

    def qweight(self) -> AbsmaxQuantized | NF4Quantized:
        """The quantized weight as a dataclass view of the current buffers."""
        tensors = {n: b for n, b in self.named_buffers(recurse=False) if n != "bias"}
        qcls = NF4Quantized if self.scheme == "nf4" else AbsmaxQuantized
        return qcls.from_tensors(tensors, self._meta)

    def dequantized_weight(self) -> torch.Tensor:
        """The full weight (out_features, in_features) in fp32 (a new tensor)."""
        return self.qweight().dequantize(torch.float32)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> dict:
        """Re-quantize ``weight`` (out, in) with this layer's scheme and block sizes, in place.

        Returns the error this introduced, {"max_abs", "err_sq", "ref_sq"} (sums of squares,
        so errors of several layers combine), also kept as ``last_requantization_error``.
        """
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise UnsupportedModuleError(
                f"set_weight needs shape {(self.out_features, self.in_features)}, "
                f"got {tuple(weight.shape)}"
            )
        meta = self._meta
        double_quant = meta.get("double_quant", False) if self.scheme == "nf4" else None
        block = meta["block_size"] if self.scheme == "nf4" else meta["group_size"]
        qweight = quantize_weight(weight.float(), self.scheme, double_quant, block)
        self._meta = qweight.meta()
        for name, tensor in qweight.to_tensors().items():
            setattr(self, name, tensor)  # replaces the registered buffer
        diff = qweight.dequantize(torch.float32) - weight.float()
        self.last_requantization_error = {
            "max_abs": diff.abs().max().item(),
            "err_sq": diff.pow(2).sum().item(),
            "ref_sq": weight.float().pow(2).sum().item(),
        }
        return self.last_requantization_error

    def to_linear(self, weight: torch.Tensor | None = None) -> nn.Linear:
        """A full-precision fp32 nn.Linear holding ``weight`` (default: the dequantized weight)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.bias.device if self.bias is not None else None,
        )
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight() if weight is None else weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def weight_bytes(self) -> int:
        """Bytes held by the codes, every scale/absmax tensor and the bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def _weight_chunks(self, dtype: torch.dtype):
        """Yield (first_row, W[first_row:first_row + chunk_rows]) dequantized to ``dtype``."""
        q, cols = self.qweight(), self.in_features
        for r0 in range(0, self.out_features, self.chunk_rows):
            r1 = min(r0 + self.chunk_rows, self.out_features)
            yield r0, q.dequantize_range(r0 * cols, r1 * cols, dtype).view(r1 - r0, cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T + bias`` for x of shape (..., in_features) -> (..., out_features)."""
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        out = _ChunkedMatmul.apply(x.to(dtype), self)
        return out if self.bias is None else out + self.bias.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scheme={self.scheme}, bias={self.bias is not None}, "
            f"chunk_rows={self.chunk_rows}"
        )
