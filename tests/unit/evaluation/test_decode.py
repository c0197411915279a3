"""The lean greedy decoder gives HF generate's greedy tokens, token for token."""

import pytest
import torch

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.evaluation.decode import greedy_decode
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig


def _hf(model, ids, mask, n, eos):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[:, ids.shape[1] :]


def _prompts(rows=3, width=9):
    ids = torch.randint(3, 120, (rows, width), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    for r in range(1, rows):  # left padding of different widths
        mask[r, : 2 * r] = 0
        ids[r, : 2 * r] = 0
    return ids, mask


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_greedy_decode_equals_hf_generate(build):
    model = build()
    ids, mask = _prompts()
    for rows in (slice(0, 1), slice(0, 3)):  # batch 1 (no padding) and a left-padded batch
        ref = _hf(model, ids[rows], mask[rows], 20, eos=None)
        assert torch.equal(greedy_decode(model, ids[rows], mask[rows], 20), ref)


def test_greedy_decode_stops_at_eos_like_hf():
    model = tiny_llama()
    ids, mask = _prompts()
    free = greedy_decode(model, ids, mask, 12)
    eos = int(free[1, 3])  # a token row 1 emits: rows finish at different steps
    ref = _hf(model, ids, mask, 12, eos=eos)
    out = greedy_decode(model, ids, mask, 12, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref)


def test_greedy_decode_with_unmerged_lora_equals_hf_generate():
    model = apply_method(
        tiny_llama(), LoraConfig(r=4, target_modules="all-linear", init="gaussian")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    ids, mask = _prompts()
    assert torch.equal(greedy_decode(model, ids, mask, 16), _hf(model, ids, mask, 16, eos=None))
