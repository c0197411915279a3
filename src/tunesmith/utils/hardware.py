"""What this CPU does fast. bf16 matmuls are only fast with native bf16 instructions (AVX512-BF16 or
AMX); elsewhere PyTorch emulates them, measured ~400x slower than fp32 on an AVX2-only CPU."""

import contextlib
import functools
from pathlib import Path

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.lru_cache(maxsize=1)
def has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists a native bf16 instruction set (False when it cannot tell)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def autocast(precision: str):
    """The context for a forward pass at train.precision (after `auto` is resolved): bf16 autocast
    on CPU when precision == "bf16", else a null context (which leaves an enclosing autocast on)."""
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
