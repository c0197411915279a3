"""Size and decode speed of transformers model directories (a teacher and its distilled student).

    python bench/bench_student.py runs/teacher_merged runs/distill_student/student

For each directory: parameters, weights on disk, and greedy decode tokens/s at batch 1 with
transformers' generate: (t(N new tokens) - t(1 new token)) / (N - 1), so prefill is excluded;
median of the repeats over a few instruction prompts.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import INSTRUCTIONS  # noqa: E402


def prompt_ids(tokenizer, n: int) -> list:
    import json

    records = json.loads(INSTRUCTIONS.read_text())[:n]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["instruction"]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        for r in records
    ]


def decode_seconds(model, ids, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start


def measure(path: str, tokens: int, prompts: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    rates = []
    for ids in prompt_ids(tokenizer, prompts):
        per_token = (decode_seconds(model, ids, tokens) - decode_seconds(model, ids, 1)) / (
            tokens - 1
        )
        rates.append(1 / per_token)
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    return {
        "model": path,
        "blocks": model.config.num_hidden_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "weights_mb": size / 2**20,
        "decode_tokens_per_s": statistics.median(rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | blocks | params | weights (MiB) | decode tokens/s (batch 1) |")
    print("|---|---:|---:|---:|---:|")
    for path in args.models:
        r = measure(path, args.tokens, args.prompts)
        print(
            f"| {r['model']} | {r['blocks']} | {r['params']:,} | {r['weights_mb']:.0f} | "
            f"{r['decode_tokens_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
