"""PyTorch's int8/int4 weight-only kernels with fp32 vs bf16 activations, and what that does to
batch-1 decoding of the embedded model kept in fp32 (how serving runs on CPUs without native bf16).

To see what a CPU without avx512_bf16 gets on one that has it, limit PyTorch to AVX2 kernels:
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 BENCH_THREADS=1 python bench/bench_int_kernels.py
"""

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import engine_rate  # noqa: E402
from common import machine, set_threads  # noqa: E402

# The embedded model's layer shapes (out, in): q/o, k/v, gate/up, down; and the output head.
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
HEAD = (49152, 576)


def microseconds(fn, n: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def kernel_rows() -> list[str]:
    from tunesmith.models.weight_only import Int4WeightLinear, Int8WeightLinear

    rows = []
    for kind, shapes in ((Int4WeightLinear, SHAPES), (Int8WeightLinear, SHAPES + [HEAD])):
        for out, inp in shapes:
            linear = nn.Linear(inp, out, bias=False)
            times = []
            for dtype in (torch.float32, torch.bfloat16):
                layer, x = kind(linear, dtype), torch.randn(1, 1, inp, dtype=dtype)
                times.append(microseconds(lambda: layer(x), 20 if out == HEAD[0] else 200))
            name = kind.__name__
            rows.append(
                f"| {name} {out}x{inp} | {times[0]:.1f} | {times[1]:.1f} | {times[0] / times[1]:.1f} |"
            )
    return rows


def decode_rows(tokens: int) -> list[str]:
    from tunesmith.models import load_base_model
    from tunesmith.models.weight_only import quantize_for_decoding

    model, tokenizer = load_base_model("default", "float32")
    rows = [f"| fp32 weights | {engine_rate(model, tokenizer, tokens, 1):.1f} |"]
    for bits in (8, 4):
        for kernel in (torch.float32, torch.bfloat16):
            model, tokenizer = load_base_model("default", "float32")
            quantize_for_decoding(model, torch.float32, bits, kernel)
            engine_rate(model, tokenizer, 4, 1)  # warm-up and the lean step's probe
            rate = engine_rate(model, tokenizer, tokens, 1)
            rows.append(f"| int{bits}, kernel activations {str(kernel)[6:]} | {rate:.1f} |")
    return rows


def main() -> None:
    set_threads()
    print(machine())
    print(f"PyTorch kernels: {torch.backends.cpu.get_cpu_capability()}")
    print(
        "\n| layer | fp32 activations us | bf16 activations us | fp32 / bf16 |\n|---|---:|---:|---:|"
    )
    print("\n".join(kernel_rows()))
    print("\n| fp32 model, batch-1 decode (engine, eager) | tok/s |\n|---|---:|")
    print("\n".join(decode_rows(32)))


if __name__ == "__main__":
    main()
