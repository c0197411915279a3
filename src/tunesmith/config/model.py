"""The `model:` section of a run config."""

from dataclasses import dataclass
from typing import Union

from ..errors import ConfigError
from .fields import check_choice, opt, warn_if_bf16_is_emulated


@dataclass
class ModelConfig:
    name: str = opt(
        "default",
        "base model: 'default' (embedded SmolLM2-135M-Instruct), a local directory, a .gguf file or a cached HF id",
    )
    dtype: str = opt(
        "auto",
        "weights dtype: auto (float32, with the frozen linear weights stored in bfloat16 while "
        "training runs under bf16 autocast: the same matmuls, half the memory), float32 or bfloat16",
    )
    quantize: str = opt(
        "none",
        "store the frozen linear weights quantized (QLoRA): none, nf4 (4-bit NormalFloat + double quant) or int8",
    )
    quant_block_size: int = opt(
        64, "weights sharing one absmax scale when model.quantize is set; 64 is the QLoRA value"
    )
    attention: str = opt(
        "auto",
        "attention implementation: auto (matmul attention for short rows, SDPA for long ones, "
        "where the architecture allows), sdpa, eager, or another transformers implementation",
    )
    fused_ops: str = opt(
        "auto",
        "auto: RMSNorm and SwiGLU MLPs whose backward keeps only their inputs (same forward "
        "arithmetic; about a third less activation memory), where the module matches; none",
    )
    keep_layers: Union[str, list, None] = opt(
        None,
        "cut the model to a subset of its transformer blocks, initialised from its weights (a "
        "distillation student): every_other (blocks 0, 2, 4, ...) or a list of block indices",
    )

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.dtype == "bfloat16":
            warn_if_bf16_is_emulated("model.dtype=bfloat16")
        if isinstance(self.keep_layers, str) and self.keep_layers != "every_other":
            raise ConfigError(
                f"model.keep_layers must be every_other or a list of block indices, got "
                f"{self.keep_layers!r}"
            )
        check_choice("model.fused_ops", self.fused_ops, ("auto", "none"))
        if self.quantize not in ("none", "nf4", "int8"):
            raise ConfigError(f"model.quantize must be none, nf4 or int8, got {self.quantize!r}")
        if self.quant_block_size < 2 or self.quant_block_size % 2:
            raise ConfigError(
                f"model.quant_block_size must be an even number >= 2 (two 4-bit codes share a "
                f"byte), got {self.quant_block_size}; use 64"
            )
