"""The compiled decode blocks: the eager lean step's tokens and cache, used only on the blocks they
were compiled for. Each test compiles a 2-block tiny Llama (tens of seconds the first time)."""

import threading

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.models.weight_only import quantize_for_decoding
from tunesmith.serving.compiled import CompiledBlocks
from tunesmith.serving.engine import Engine, GenRequest, Sampling, Target
from tunesmith.serving.lean import LeanDecoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def greedy_texts(model, prompts, compile: bool, n: int = 8):
    """Greedy text per prompt from an engine decoding them together; with compile, once the
    compiled blocks are ready (asserted)."""
    engine = Engine(tiny_tokenizer(), max_batch=len(prompts), compile=compile)
    texts, done = [[] for _ in prompts], [threading.Event() for _ in prompts]
    engine.start()
    try:
        engine.prepare(model).result(60)
        if compile:
            compiled = engine._lean[model].compiled
            assert compiled is not None and compiled.wait(600), compiled.error
        for i, prompt in enumerate(prompts):

            def emit(event, i=i):
                texts[i].append(event[1] if event[0] == "delta" else "")
                if event[0] in ("done", "error"):
                    done[i].set()

            sampling = Sampling(n, temperature=0, ignore_eos=True)
            engine.submit(GenRequest(prompt, sampling, Target(model), emit))
        assert all(event.wait(60) for event in done)
    finally:
        engine.stop()
    return ["".join(parts) for parts in texts]


def test_compiled_blocks_decode_the_eager_tokens_on_a_padded_batch():
    model = tiny_llama()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]  # rows of different lengths: left padding
    eager = greedy_texts(model, prompts, compile=False)
    assert greedy_texts(model, prompts, compile=True) == eager
    assert greedy_texts(model, prompts[:1], compile=True) == eager[:1]  # batch 1's own graph


def test_compiled_int4_blocks_equal_the_eager_ones():
    model = tiny_llama(hidden_size=32, intermediate_size=64)
    quantize_for_decoding(model, torch.float32, bits=4)
    lean = LeanDecoder.build(model)
    compiled = CompiledBlocks(lean)
    assert CompiledBlocks.fits(lean) and compiled.prepare() and compiled.usable()


def test_an_adapter_loaded_after_compiling_sends_decoding_back_to_the_eager_step():
    model = tiny_llama()
    lean = LeanDecoder.build(model)
    compiled = CompiledBlocks(lean)
    assert compiled.prepare() and compiled.usable()
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj"]))
    assert not compiled.usable()
    assert not CompiledBlocks.fits(LeanDecoder.build(model))


def test_compiled_blocks_that_differ_are_not_used():
    model = tiny_llama()
    compiled = CompiledBlocks(LeanDecoder.build(model))
    real = compiled._run
    compiled._run = lambda *args: (lambda x, k, v: (x + 1.0, k, v))(*real(*args))
    assert not compiled.prepare() and not compiled.usable()
    assert "differ" in compiled.error
