"""Rollouts: sampled answers cut after EOS, laid out so log-probs equal the sampler's, and the
reward sources' checks."""

import pytest
import torch

from tunesmith.data.prompts import PromptRecord, collate_prompts, encode_prompt
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.objectives.logps import token_logps
from tunesmith.rl.rewards import function_scorer, import_function, reward_scorer
from tunesmith.rl.rollout import Sampling, build_rollout, sample


def _prompts(tokenizer, texts):
    records = [PromptRecord([{"role": "user", "content": t}], {"answer": t[::-1]}) for t in texts]
    return collate_prompts(
        [encode_prompt(r, tokenizer, 64) for r in records], tokenizer.pad_token_id
    )


def test_a_response_is_cut_after_its_first_eos(tokenizer):
    prompts = _prompts(tokenizer, ["ab", "abcd"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    new = torch.tensor([[a, eos, pad, pad], [a, b, a, b]])
    rollout = build_rollout(
        prompts["input_ids"], prompts["attention_mask"], new, prompts["records"], tokenizer
    )
    assert rollout.ended.tolist() == [True, False]
    assert rollout.response_lengths.tolist() == [2, 4]
    assert rollout.texts == ["a", "abab"]
    first = rollout.input_ids[0][rollout.attention_mask[0].bool()].tolist()
    real_prompt = prompts["input_ids"][0][prompts["attention_mask"][0].bool()].tolist()
    assert first == real_prompt + [a, eos]  # no left padding in the training layout


def test_rollout_log_probs_equal_the_samplers_distribution(llama, tokenizer):
    torch.manual_seed(3)
    prompts = _prompts(tokenizer, ["hello", "a longer prompt here"])
    rollout = sample(
        llama, tokenizer, prompts, Sampling(max_new_tokens=6, temperature=0.7), repeats=2
    )
    assert rollout.input_ids.shape[0] == 4 and len(rollout.records) == 4
    stats = token_logps(llama, **rollout.batch(), temperature=0.7, with_entropy=True)
    # Reference: the left-padded generation layout, one token at a time, as generate scored it.
    for row in range(4):
        p = rollout.records[row]
        enc = encode_prompt(p, tokenizer, 64)["prompt_ids"]
        response = rollout.labels[row][rollout.labels[row] != -100].tolist()
        ids = torch.tensor([enc + response])
        with torch.no_grad():
            logits = llama(ids).logits[0, len(enc) - 1 : -1].float() / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
        got = stats.logps[row][stats.mask[row]]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert (stats.entropy[row][stats.mask[row]] > 0).all()


def test_same_seed_same_samples(llama, tokenizer):
    prompts = _prompts(tokenizer, ["hello"])
    torch.manual_seed(7)
    first = sample(llama, tokenizer, prompts, Sampling(max_new_tokens=8), repeats=3)
    torch.manual_seed(7)
    second = sample(llama, tokenizer, prompts, Sampling(max_new_tokens=8), repeats=3)
    assert torch.equal(first.input_ids, second.input_ids)


def _records(texts):
    return [PromptRecord([{"role": "user", "content": t}], {"answer": t.upper()}) for t in texts]


def test_a_reward_function_gets_prompts_completions_and_fields(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def match(prompts, completions, answer, **kw):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"
        "def wrong_length(prompts, completions, **kw):\n"
        "    return [1.0]\n"
    )
    monkeypatch.chdir(tmp_path)
    score = function_scorer("my_rewards:match")
    assert score(_records(["ab", "cd"]), ["AB", "xx"]) == [1.0, 0.0]
    with pytest.raises(TrainingError, match="returned 1 rewards for 2 completions"):
        function_scorer("my_rewards:wrong_length")(_records(["ab", "cd"]), ["a", "b"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nocolon", "must be module:fn"),
        ("no_such_module_x:f", "cannot import"),
        ("os:nothing_here", "has no function"),
    ],
)
def test_bad_reward_function_specs_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        import_function(spec)


def test_exactly_one_reward_source():
    from tunesmith.tasks.reward import RewardConfig

    with pytest.raises(ConfigError, match="exactly one"):
        reward_scorer(RewardConfig())
    with pytest.raises(ConfigError, match="exactly one"):
        reward_scorer(RewardConfig(model="x", function="a:b"))
