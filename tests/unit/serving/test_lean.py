"""The lean decode step: the model's forward's logits, step after step, where it is used; the
forward keeps the models it does not fit."""

import threading

import pytest
import torch
from transformers import DynamicCache

from tests.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer
from tunesmith.methods import apply_method
from tunesmith.methods.ia3 import Ia3Config
from tunesmith.methods.lora import LoraConfig
from tunesmith.methods.prompt_tuning import PromptTuningConfig
from tunesmith.models.compat import cache_kwarg
from tunesmith.models.fused_ops import fuse_modules
from tunesmith.models.weight_only import quantize_for_decoding
from tunesmith.serving.engine import Engine, GenRequest, Sampling, Target
from tunesmith.serving.lean import LeanDecoder


def forward(model):
    def run(ids, mask, cache, positions):
        kw = {cache_kwarg(model): cache}
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kw)
        return out.logits[:, -1].float()

    return run


def randomized(model):
    with torch.no_grad():  # adapters start as the identity; give them something to do
        for name, p in model.named_parameters():
            if "lora_" in name or "ia3_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def lora_model():
    return randomized(apply_method(tiny_llama(), LoraConfig(r=4, target_modules="all-linear")))


def ia3_model():
    return randomized(apply_method(tiny_llama(), Ia3Config()))


def fused_int8_model():
    model = tiny_llama()
    fuse_modules(model)
    quantize_for_decoding(model, torch.float32)
    return model


def int4_model():
    model = tiny_llama(hidden_size=32, intermediate_size=64)  # whole groups of 32: int4 layers
    quantize_for_decoding(model, torch.float32, bits=4)
    return model


@pytest.mark.parametrize("make", [tiny_llama, lora_model, ia3_model, fused_int8_model, int4_model])
def test_lean_steps_equal_the_forward_on_a_left_padded_batch(make):
    model = make()
    lean = LeanDecoder.build(model)
    assert lean is not None and lean.fits(forward(model), lean.decode)
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 11, 12, 13]])
    mask = (ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            logits = forward(model)(ids, mask, cache, positions)
        for _ in range(6):  # greedy steps, each on both paths from the same token
            step = logits.argmax(-1, keepdim=True)
            positions = mask.sum(1, keepdim=True)
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            logits = forward(model)(step, mask, caches[0], positions)
            got = lean.decode(step, mask, caches[1], positions)
            torch.testing.assert_close(got, logits, atol=1e-5, rtol=1e-5)


def test_a_bf16_model_gets_the_lean_step_and_the_forwards_greedy_tokens():
    model = tiny_llama().to(torch.bfloat16)  # the step's attention runs in fp32 here
    lean = LeanDecoder.build(model)
    assert lean.fits(forward(model), lean.decode)
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            want = got = forward(model)(ids, mask, cache, torch.arange(3)[None])
        for step in range(6):
            mask = torch.ones(1, 4 + step, dtype=torch.long)
            positions = torch.tensor([[3 + step]])
            want = forward(model)(want.argmax(-1, keepdim=True), mask, caches[0], positions)
            got = lean.decode(got.argmax(-1, keepdim=True), mask, caches[1], positions)
            assert torch.equal(want.argmax(-1), got.argmax(-1))


def test_models_it_does_not_fit_keep_their_forward():
    assert LeanDecoder.build(tiny_gpt2()) is None  # not the Llama block layout
    prompt = apply_method(tiny_llama(), PromptTuningConfig(num_virtual_tokens=3))
    lean = LeanDecoder.build(prompt)  # Llama blocks, but virtual tokens precede the cache
    assert lean is not None and not lean.fits(forward(prompt), lean.decode)


def test_a_wrong_step_fails_the_probe():
    model = tiny_llama()
    lean = LeanDecoder.build(model)

    def off_by_a_bit(*args):
        return lean.decode(*args) + 1e-2

    assert not lean.fits(forward(model), off_by_a_bit)


def test_the_engine_decodes_with_the_lean_step_where_it_fits():
    engine = Engine(tiny_tokenizer(), max_batch=4)
    llama, prompt = tiny_llama(), apply_method(tiny_llama(seed=1), PromptTuningConfig())
    finished = [threading.Event(), threading.Event()]
    engine.start()
    try:
        for model, event in zip((llama, prompt), finished):
            emit = lambda e, event=event: e[0] in ("done", "error") and event.set()  # noqa: E731
            engine.submit(GenRequest([5, 6, 7], Sampling(4, temperature=0), Target(model), emit))
        assert all(event.wait(30) for event in finished)
    finally:
        engine.stop()
    assert isinstance(engine._lean[llama], LeanDecoder)
    assert engine._lean[prompt] is None
