"""Reward model end to end on a tiny model: learning, saved scorer, the score command, bad input."""

import json
import random

import pytest

import tunesmith
from tests.tiny import save_tiny_model
from tunesmith.cli.main import main
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.recipes import reward


@pytest.fixture
def task(tmp_path, cache_dir):
    """(model dir, data file): chosen answers end in 'yes', rejected ones in 'no'."""
    rng = random.Random(1)
    rows = []
    for i in range(40):
        question = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
        rows.append(
            {"prompt": f"q {question}", "chosen": f"{question} yes", "rejected": f"{question} no"}
        )
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return save_tiny_model(tmp_path / "tiny"), tmp_path / "pairs.jsonl"


def _cfg(task, tmp_path, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.max_length=48",
        "task.type=reward",
        "method.name=lora",
        "method.r=4",
        "method.target_modules=all-linear",
        "train.epochs=4",
        "train.batch_size=4",
        "train.lr=2e-2",
        "train.log_every=2",
        "eval.batch_size=8",
        "data.split=[0.8, 0.1, 0.1]",
        f"output.dir={tmp_path / 'out'}",
    ]
    return tunesmith.load_config(None, [*base, *overrides])


def test_reward_model_learns_the_preference_and_scores_from_its_directory(task, tmp_path, capsys):
    metrics = reward.run(_cfg(task, tmp_path))
    assert metrics["accuracy"] >= 0.75 and metrics["margin"] > 0
    assert (
        json.loads((tmp_path / "out/metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    )
    model, tokenizer = reward.load_reward_model(tmp_path / "out", str(task[0]))
    good, bad = reward.score(model, tokenizer, ["q abc", "q abc"], ["abc yes", "abc no"])
    assert good > bad
    assert (
        main(
            [
                "score",
                "--model",
                str(task[0]),
                "--adapter",
                str(tmp_path / "out"),
                "q abc",
                "abc yes",
            ]
        )
        == 0
    )
    assert float(capsys.readouterr().out.strip()) == pytest.approx(good, abs=1e-3)


def test_a_directory_without_a_reward_head_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is not a reward model"):
        reward.load_reward_model(tmp_path)


def test_bad_reward_settings_are_config_errors(task, tmp_path):
    with pytest.raises(ConfigError, match="reward.center_coefficient must be >= 0"):
        _cfg(task, tmp_path, "reward.center_coefficient=-1")
