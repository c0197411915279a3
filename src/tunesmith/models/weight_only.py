"""Int8 and int4 weight-only linear layers for decoding: a byte or half a byte per weight.

Decoding one token reads every weight once for a few rows of activations, so on a CPU its speed
is set by the bytes of weights read; PyTorch's int8 weight-only matmul kernel
(`torch._weight_int8pack_mm`, the one gpt-fast and torchao use on CPU) reads int8 weights with one
scale per output row and multiplies in the activations' dtype. The rounding error is at most half a
step of max|row| / 127 per weight. Inference only (the kernel has no backward pass).

Int4 (`Int4WeightLinear`, PyTorch's `torch._weight_int4pack_mm_for_cpu`): groups of 32 weights
along a row share a step and a minimum, llama.cpp's Q4_1 layout. The embedded model's file stores
its blocks' matrices as Q4_1 (and the embedding, which is also the output head, as Q8_0), so with
bits=4 the blocks' weights come back from this rounding as the file has them, up to the scales'
bf16 storage; the output head stays int8.

`quantize_for_decoding(model)` swaps every plain nn.Linear of the base model (the output head too)
for an Int8WeightLinear (with bits=4: an Int4WeightLinear for the linear layers other than the
output head, where the shape suits the kernel); adapters attached afterwards wrap these layers like
any quantized base (`is_quantized`, `dequantized_weight`).
"""

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError


class Int8WeightLinear(nn.Module):
    """y = x (s * Q)^T + b, with Q int8 (out, in) and s one scale per output row."""

    is_quantized = True
    scheme = "int8 weight-only (serving)"

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.out_features, self.in_features = weight.shape
        self.register_buffer(
            "qweight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scale", scale.to(dtype))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.scale.dtype)
        out = torch._weight_int8pack_mm(rows, self.qweight, self.scale)
        return self._finish(out, x)

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The kernel's rows back in x's shape and dtype (the kernel may compute in another)."""
        if self.bias is not None:
            out = out + self.bias
        out = out.view(*x.shape[:-1], self.out_features)
        # Checked first: ~200 layers a decode step, and .to costs a dispatch even when a no-op.
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) fp32, what adapters that need the base weight read."""
        return self.qweight.float() * self.scale.float()[:, None]

    def set_weight(self, weight: torch.Tensor) -> None:
        raise ConfigError(
            "an int8 serving layer cannot take merged weights; merge the adapter before serving "
            "(tunesmith merge) or serve without --dtype int8"
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int4WeightLinear(Int8WeightLinear):
    """y = x W^T + b with W = q * s + m per group of GROUP weights along a row: q in 0..15, s and m
    (the group's step and minimum) in the compute dtype; packed for the CPU int4 kernel."""

    GROUP = 32
    scheme = "int4 weight-only, groups of 32 with step and minimum (serving)"

    @classmethod
    def fits(cls, linear: nn.Linear) -> bool:
        # The kernel packs 16 output rows at a time and reads whole groups along a row.
        return linear.out_features % 16 == 0 and linear.in_features % cls.GROUP == 0

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        nn.Module.__init__(self)
        weight = linear.weight.detach().float()
        self.out_features, self.in_features = weight.shape
        groups = weight.view(self.out_features, -1, self.GROUP)  # (out, in / G, G)
        low, high = groups.amin(dim=2), groups.amax(dim=2)
        step = ((high - low) / 15).clamp_min(1e-12)
        q = ((groups - low[..., None]) / step[..., None]).round().clamp(0, 15).to(torch.int32)
        self.register_buffer(
            "qweight", torch._convert_weight_to_int4pack_for_cpu(q.view_as(weight), 1)
        )
        # The kernel computes (q - 8) * scale + zero: zero = minimum + 8 * step; (in / G, out, 2).
        scales_zeros = torch.stack([step, low + 8 * step], dim=-1).transpose(0, 1)
        self.register_buffer("scale", scales_zeros.contiguous().to(dtype))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.scale.dtype)
        out = torch._weight_int4pack_mm_for_cpu(rows, self.qweight, self.GROUP, self.scale)
        return self._finish(out, x)

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) fp32: the kernel applied to the identity (the packing is the kernel's own)."""
        eye = torch.eye(self.in_features, dtype=self.scale.dtype)
        w = torch._weight_int4pack_mm_for_cpu(eye, self.qweight, self.GROUP, self.scale)
        return w.float().T.contiguous()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 weights"


def quantize_for_decoding(
    model: nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    bits: int = 8,
    kernel_dtype: Optional[torch.dtype] = None,
) -> int:
    """Replace every plain nn.Linear of `model` by an Int8WeightLinear, or with bits=4 by an
    Int4WeightLinear where it fits (not the output head: see the module's docstring), whose
    kernel takes its activations in `kernel_dtype` (default: `dtype`) and returns `dtype`;
    embeddings and norms are cast to `dtype`. Returns the layers replaced.

    bf16 kernel activations pay even where the CPU has no native bf16: with AVX2 only
    (ATEN_CPU_CAPABILITY=avx2) PyTorch's int4 kernel took 114 us with bf16 and 1,252 us with
    fp32 activations for a 576 x 576 layer, its int8 kernel 13.7 vs 29.3 ms for the 49152 x 576
    head; the casts around each layer cost a few microseconds."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent, name, child in targets:
        four = bits == 4 and child is not head and Int4WeightLinear.fits(child)
        layer = (Int4WeightLinear if four else Int8WeightLinear)(child, kernel_dtype or dtype)
        setattr(parent, name, layer)
    for param in model.parameters():  # what is left: embeddings, norms
        param.data = param.data.to(dtype)
    return len(targets)
