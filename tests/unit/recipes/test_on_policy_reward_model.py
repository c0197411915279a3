"""PPO and GRPO scored by a reward *model*: with a sequence-classification directory (as TRL's
reward trainer writes) as reward.model, a run trains and its held-out reward is that model's mean
score of the trained policy's answers."""

import json

import pytest

import tunesmith
from tests.tiny import save_tiny_model, tiny_llama, tiny_reward_classifier, tiny_tokenizer
from tunesmith.evaluation import generate
from tunesmith.methods.io import load_adapter
from tunesmith.models import load_base_model
from tunesmith.recipes.on_policy import load_prompt_splits
from tunesmith.recipes.reward import load_reward_scorer
from tunesmith.tasks import get_task


def _classifier(path):
    tiny_reward_classifier().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("task_type", ["grpo", "ppo"])
def test_a_reward_model_directory_scores_the_rollouts(tmp_path, cache_dir, task_type):
    rows = [{"prompt": f"say {i}"} for i in range(8)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = save_tiny_model(tmp_path / "tiny", tiny_llama(initializer_range=0.3))
    reward_dir = _classifier(tmp_path / "rm")
    settings = {"grpo": ["grpo.max_new_tokens=5"], "ppo": ["ppo.max_new_tokens=5"]}[task_type]
    cfg = tunesmith.load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.train={tmp_path / 'p.jsonl'}",
            f"task.type={task_type}",
            f"reward.model={reward_dir}",
            *settings,
            "method.name=lora",
            "method.r=2",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.log_every=1",
            "eval.max_new_tokens=5",
            "data.split=[0.75, 0.0, 0.25]",
            f"output.dir={tmp_path / 'out'}",
        ],
    )
    metrics = get_task(task_type).train(cfg, False)
    logged = [
        json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()
    ]
    assert len([r for r in logged if "loss" in r]) == 2
    # The held-out reward is the reward model's mean over the trained policy's greedy answers.
    model, tokenizer = load_base_model(str(model_dir))
    load_adapter(model, str(tmp_path / "out"))
    test = load_prompt_splits(cfg.data, tokenizer, cfg.train.seed).test
    records = [e["record"] for e in test]
    answers = generate(model, tokenizer, [r.messages for r in records], 5)
    expected = load_reward_scorer(reward_dir)([r.text for r in records], answers)
    assert metrics["reward"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
