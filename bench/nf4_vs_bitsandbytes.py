"""Our NF4 codes and dequantized values against bitsandbytes' CPU implementation.

bitsandbytes is not a dependency; run in an environment that has it:
    pip install bitsandbytes && PYTHONPATH=src python bench/nf4_vs_bitsandbytes.py
"""

import bitsandbytes.functional as bnb
import torch

from tunesmith.models.quantization.nf4 import (
    NF4_TABLE,
    dequantize_nf4,
    quantize_nf4,
    unpack_nibbles,
)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 576)
    packed, state = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_nf4(x, block_size=64, double_quant=False)
    theirs_codes = unpack_nibbles(packed.reshape(-1))
    our_codes = unpack_nibbles(ours.packed)
    table_diff = (bnb.get_4bit_type("nf4", device="cpu").float() - NF4_TABLE).abs().max().item()
    same_codes = (theirs_codes == our_codes).float().mean().item()
    values = (bnb.dequantize_4bit(packed, state) - dequantize_nf4(ours)).abs().max().item()
    absmax = (state.absmax.float() - ours.absmax).abs().max().item()
    print(f"NF4 table max |diff|: {table_diff:.2e}")
    print(f"absmax max |diff|: {absmax:.2e}")
    print(f"codes equal: {100 * same_codes:.4f}% of {our_codes.numel():,}")
    print(f"dequantized max |diff|: {values:.2e}")


if __name__ == "__main__":
    main()
