"""The exported GGUF file in llama.cpp itself (llama-cpp-python): it loads, and at f16 its greedy
tokens for 32 steps are tunesmith's on the merged model; at q8_0 its next-token choice along
that text (teacher-forced) is ours at 90 % of the positions or more."""

import pytest

from tests.integration.test_gguf_export import PROMPT, _adapter, _greedy
from tunesmith.cli.main import main
from tunesmith.methods import merge_and_unload
from tunesmith.models import load_base_model

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp")  # in the test extra; a clear skip if removed


def _llama_cpp_greedy(path, prompt_ids: list, n: int = 32) -> list:
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False)

    def no_end(_, scores):  # as min_new_tokens in _greedy: the end of turn is not a choice
        scores[llm.token_eos()] = -float("inf")
        return scores

    tokens, keep_going = [], llama_cpp.LogitsProcessorList([no_end])
    steps = llm.generate(
        prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0, logits_processor=keep_going
    )
    for token in steps:
        tokens.append(token)
        if len(tokens) == n:
            break
    return tokens


def _prompt_ids(tokenizer) -> list:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    return ids["input_ids"] if hasattr(ids, "keys") else list(ids)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    merged = merge_and_unload(_adapter(tmp / "adapter")).eval()
    for kind in ("f16", "q8_0"):
        args = ["export", "--adapter", str(tmp / "adapter"), "--gguf", str(tmp / f"{kind}.gguf")]
        assert main([*args, "--type", kind]) == 0
    _, tokenizer = load_base_model("default")
    return tmp, _greedy(merged, tokenizer), _prompt_ids(tokenizer)


def test_llama_cpp_decodes_the_f16_export_as_tunesmith_does(exported):
    tmp, ours, prompt = exported
    assert _llama_cpp_greedy(tmp / "f16.gguf", prompt) == ours


def _llama_cpp_agreement(path, prompt_ids: list, ours: list) -> float:
    """Share of positions where llama.cpp's next-token argmax, fed our tokens so far
    (teacher-forced, so one difference does not carry over), is our token."""
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False, logits_all=True)
    llm.eval(prompt_ids + ours)
    start = len(prompt_ids) - 1  # the row that predicts our first token
    scores = llm.scores[start : start + len(ours)].copy()
    scores[:, llm.token_eos()] = -float("inf")  # as min_new_tokens did for ours
    picks = scores.argmax(axis=1).tolist()
    return sum(a == b for a, b in zip(picks, ours)) / len(ours)


def test_llama_cpp_on_the_q8_0_export_agrees_on_most_tokens(exported):
    tmp, ours, prompt = exported
    assert _llama_cpp_agreement(tmp / "f16.gguf", prompt, ours) == 1.0
    agreement = _llama_cpp_agreement(tmp / "q8_0.gguf", prompt, ours)
    print(f"q8_0: llama.cpp's next token is tunesmith's (f32 merged) at {agreement:.0%} of 32")
    assert agreement >= 0.9
