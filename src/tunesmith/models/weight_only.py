"""Int8 weight-only linear layers for decoding: one byte per weight instead of two or four.

Decoding one token reads every weight once for a few rows of activations, so on a CPU its speed
is set by the bytes of weights read; PyTorch's int8 weight-only matmul kernel
(`torch._weight_int8pack_mm`, the one gpt-fast and torchao use on CPU) reads int8 weights with one
scale per output row and multiplies in the activations' dtype. The rounding error is at most half a
step of max|row| / 127 per weight. Inference only (the kernel has no backward pass).

`quantize_for_decoding(model)` swaps every plain nn.Linear of the base model (the output head too)
for an Int8WeightLinear; adapters attached afterwards wrap these layers like any quantized base
(`is_quantized`, `dequantized_weight`).
"""

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
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

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


def quantize_for_decoding(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every plain nn.Linear of `model` by an Int8WeightLinear computing in `dtype`
    (embeddings and norms are cast to `dtype`); returns the layers replaced."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8WeightLinear(child, dtype))
    for param in model.parameters():  # what is left: embeddings, norms
        param.data = param.data.to(dtype)
    return len(targets)
