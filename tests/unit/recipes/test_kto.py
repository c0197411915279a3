"""KTO end to end on a tiny model: zero rewards at the start, learning the labels, bad settings."""

import json
import random

import pytest

import tunesmith
from tests.tiny import save_tiny_model
from tunesmith.errors import ConfigError
from tunesmith.recipes import kto


@pytest.fixture
def task(tmp_path, cache_dir):
    """(model dir, data file): completions ending in 'yes' are desirable, in 'no' undesirable."""
    rng = random.Random(2)
    rows = []
    for i in range(48):
        question = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
        good = i % 2 == 0
        rows.append(
            {
                "prompt": f"q {question}",
                "completion": f"{question} {'yes' if good else 'no'}",
                "label": good,
            }
        )
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return save_tiny_model(tmp_path / "tiny"), tmp_path / "kto.jsonl"


def _cfg(task, tmp_path, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.max_length=48",
        "task.type=kto",
        "method.name=lora",
        "method.r=4",
        "method.target_modules=all-linear",
        "train.epochs=4",
        "train.batch_size=4",
        "train.lr=2e-2",
        "train.log_every=2",
        "eval.batch_size=8",
        "data.split=[0.75, 0.0, 0.25]",
        f"output.dir={tmp_path / 'out'}",
    ]
    return tunesmith.load_config(None, [*base, *overrides])


def test_at_initialisation_rewards_are_zero(task, tmp_path):
    from tunesmith.recipes.common import build_model
    from tunesmith.recipes.preference_common import load_kto_splits

    cfg = _cfg(task, tmp_path)
    model, tokenizer = build_model(cfg)
    examples = load_kto_splits(cfg.data, tokenizer, cfg.train.seed).test
    metrics = kto.held_out(model, examples, cfg, tokenizer.pad_token_id)
    assert (
        metrics["rewards/chosen"] == 0 and metrics["rewards/rejected"] == 0 and metrics["kl"] == 0
    )
    assert metrics["loss"] == pytest.approx(0.5)  # 1 - sigmoid(0) for every example


def test_training_separates_desirable_from_undesirable(task, tmp_path):
    metrics = kto.run(_cfg(task, tmp_path))
    assert metrics["rewards/margins"] > 0 and metrics["loss"] < 0.5
    assert metrics["rewards/chosen"] > metrics["rewards/rejected"]
    again = kto.evaluate(_cfg(task, tmp_path))
    assert again["rewards/margins"] == pytest.approx(metrics["rewards/margins"], abs=1e-5)


def test_bad_kto_settings_are_config_errors(task, tmp_path):
    with pytest.raises(ConfigError, match="kto.beta must be > 0"):
        _cfg(task, tmp_path, "kto.beta=0")
