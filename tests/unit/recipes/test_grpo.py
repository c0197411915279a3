"""GRPO end to end on a tiny model with a reward function: it learns, starts at KL 0, resumes
exactly, and bad settings are one-line errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.recipes import grpo
from tunesmith.training.checkpoint import read_position

REWARDS = """
from pathlib import Path

def share_of_lowercase(prompts, completions, **fields):
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]

def interrupted_at_call_3(prompts, completions, **fields):
    calls = Path("calls.txt")
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    if n == 3:
        raise KeyboardInterrupt
    return share_of_lowercase(prompts, completions)

def length_seen(prompts, completions, topic, **fields):
    assert len(topic) == len(completions)
    return [float(len(t)) for t in topic]
"""


@pytest.fixture
def task(tmp_path, cache_dir, monkeypatch):
    rows = [{"prompt": f"say something {i}", "topic": "x" * (i % 3)} for i in range(24)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    # Larger initial weights than the default: with near-zero logits the output distribution is
    # uniform whatever LoRA does through the final norm, and a policy gradient has nothing to move.
    model = tiny_llama(initializer_range=0.3)
    return save_tiny_model(tmp_path / "tiny", model), tmp_path / "prompts.jsonl"


def _cfg(task, tmp_path, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "task.type=grpo",
        "reward.function=my_rewards:share_of_lowercase",
        "grpo.num_generations=4",
        "grpo.max_new_tokens=6",
        "method.name=lora",
        "method.r=4",
        "method.target_modules=all-linear",
        "train.max_steps=30",
        "train.batch_size=4",
        "train.lr=3e-2",
        "train.log_every=1",
        "train.eval_every=0",
        "eval.max_new_tokens=6",
        "data.split=[0.8, 0.0, 0.2]",
        f"output.dir={tmp_path / 'out'}",
    ]
    return tunesmith.load_config(None, [*base, *overrides])


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "reward" in r and "loss" in r]


def test_grpo_raises_the_reward_and_starts_at_zero_kl(task, tmp_path):
    metrics = grpo.run(_cfg(task, tmp_path))
    records = _records(tmp_path / "out")
    assert records[0]["kl"] == 0.0  # policy = reference while LoRA's B is zero
    first, last = [r["reward"] for r in records[:5]], [r["reward"] for r in records[-5:]]
    assert sum(last) / 5 > sum(first) / 5 + 0.2, (first, last)
    assert metrics["split"] == "test" and 0 <= metrics["win_rate_vs_reference"] <= 1
    assert metrics["reward"] > metrics["reward_reference"]
    assert (tmp_path / "out/adapter_config.json").is_file()
    assert (tmp_path / "out/reward_curve.png").is_file()


def test_reward_functions_get_the_records_other_fields(task, tmp_path):
    cfg = _cfg(task, tmp_path, "reward.function=my_rewards:length_seen", "train.max_steps=1")
    grpo.run(cfg)
    assert _records(tmp_path / "out")[0]["reward"] > 0


def test_rloo_with_several_iterations_resumes_exactly_after_an_interrupt(task, tmp_path):
    overrides = ["grpo.advantage=rloo", "grpo.num_iterations=2", "train.max_steps=4"]
    grpo.run(_cfg(task, tmp_path, *overrides, f"output.dir={tmp_path / 'a'}"))
    interrupted = _cfg(
        task,
        tmp_path,
        *overrides,
        f"output.dir={tmp_path / 'b'}",
        "reward.function=my_rewards:interrupted_at_call_3",  # in step 3's rollout
    )
    with pytest.raises(KeyboardInterrupt):
        grpo.run(interrupted)
    assert read_position(tmp_path / "b/checkpoints/last")["step"] == 2
    torch.manual_seed(99)  # as a new process: the RNG comes back from the checkpoint
    grpo.run(interrupted)
    a = load_file(str(tmp_path / "a/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/adapter_model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.num_generations=1", "num_generations must be >= 2"),
        ("grpo.loss_type=ppo", "loss_type must be one of"),
        ("grpo.advantage=mean", "advantage must be one of"),
        ("grpo.temperature=0", "temperature must be > 0"),
        ("reward.center_coefficient=0.01", "shapes reward-model training only"),
    ],
)
def test_bad_grpo_settings_are_one_line_errors(task, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(task, tmp_path, override)


def test_a_reward_is_required(task, tmp_path):
    cfg = _cfg(task, tmp_path)
    cfg.reward.function = None
    with pytest.raises(ConfigError, match="exactly one of reward.model"):
        grpo.run(cfg)
