"""Pure-PyTorch weight quantization (CPU-friendly): int8/absmax, NF4 and QuantizedLinear."""

from .int8 import AbsmaxQuantized, dequantize_absmax, quantize_absmax
from .linear import SCHEMES, QuantizedLinear, quantize_weight
from .model import (
    QuantizationReport,
    dequantize_model,
    load_quantized,
    quantization_specs,
    quantize_model,
    requantization_error,
    save_quantized,
)
from .nf4 import (
    NF4_TABLE,
    DoubleQuantized,
    NF4Quantized,
    dequantize_double,
    dequantize_nf4,
    double_quantize,
    nf4_table_from_quantiles,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)
from .pretrained import is_quantized_dir, load_pretrained_quantized, save_pretrained_quantized

__all__ = [
    "AbsmaxQuantized",
    "DoubleQuantized",
    "NF4Quantized",
    "NF4_TABLE",
    "QuantizationReport",
    "QuantizedLinear",
    "SCHEMES",
    "dequantize_absmax",
    "dequantize_double",
    "dequantize_model",
    "dequantize_nf4",
    "double_quantize",
    "is_quantized_dir",
    "load_pretrained_quantized",
    "load_quantized",
    "nf4_table_from_quantiles",
    "pack_nibbles",
    "quantization_specs",
    "quantize_absmax",
    "quantize_model",
    "quantize_nf4",
    "quantize_weight",
    "requantization_error",
    "save_pretrained_quantized",
    "save_quantized",
    "unpack_nibbles",
]
