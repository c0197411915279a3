"""DPO end to end on a tiny model: identity at the start, learning, the reference cache, resume."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tests.tiny import save_tiny_model
from tunesmith.errors import ConfigError
from tunesmith.recipes import dpo


@pytest.fixture
def task(tmp_path, cache_dir):
    """(model dir, data file): chosen answers end in 'yes', rejected ones in 'no'."""
    rng = random.Random(0)
    rows = []
    for i in range(40):
        question = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
        rows.append(
            {
                "instruction": f"q {question}",
                "chosen": f"{question} yes",
                "rejected": f"{question} no",
            }
        )
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return save_tiny_model(tmp_path / "tiny"), tmp_path / "pairs.jsonl"


def _cfg(task, tmp_path, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.max_length=48",
        "task.type=dpo",
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


def test_at_initialisation_the_loss_is_log2_and_margins_zero(task, tmp_path):
    cfg = _cfg(task, tmp_path, "train.max_steps=1", "train.lr=1e-12")
    from tunesmith.recipes.common import build_model
    from tunesmith.recipes.preference_common import load_preference_splits

    model, tokenizer = build_model(cfg)
    pairs = load_preference_splits(cfg.data, tokenizer, cfg.train.seed).train
    metrics = dpo.held_out_metrics(model, pairs, cfg, tokenizer.pad_token_id)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_training_raises_the_preference_accuracy_and_writes_trl_metrics(task, tmp_path):
    metrics = dpo.run(_cfg(task, tmp_path))
    assert metrics["rewards/accuracies"] >= 0.75 and metrics["rewards/margins"] > 0
    assert metrics["loss"] < math.log(2)
    saved = json.loads((tmp_path / "out/metrics.json").read_text())
    assert {"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"} <= set(
        saved
    )
    log = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies" in r for r in log)
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / dpo.REFERENCE_FILE).is_file()
    again = dpo.evaluate(_cfg(task, tmp_path))  # a new model, the reference scored per batch
    assert again["rewards/accuracies"] == metrics["rewards/accuracies"]
    assert again["loss"] == pytest.approx(metrics["loss"], abs=1e-5)


def test_precomputed_reference_equals_the_per_step_reference(task, tmp_path):
    a = dpo.run(_cfg(task, tmp_path / "a", "train.max_steps=3"))
    b = dpo.run(_cfg(task, tmp_path / "b", "train.max_steps=3", "dpo.precompute_reference=false"))
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    wa, wb = (load_file(str(tmp_path / p / "out/adapter_model.safetensors")) for p in ("a", "b"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_after_interrupt_ends_with_identical_weights(task, tmp_path, monkeypatch):
    straight = dpo.run(_cfg(task, tmp_path / "a", "train.max_steps=6", "train.save_every=1"))
    calls = {"n": 0}
    original = dpo.pair_loss

    def dies_on_step_4(model, batch, cfg):
        calls["n"] += 1
        if calls["n"] == 4 and model.training:
            raise KeyboardInterrupt
        return original(model, batch, cfg)

    monkeypatch.setattr(dpo, "pair_loss", dies_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        dpo.run(
            _cfg(
                task,
                tmp_path / "b",
                "train.max_steps=6",
                "train.save_every=1",
                "train.eval_every=0",
            )
        )
    monkeypatch.setattr(dpo, "pair_loss", original)
    resumed = dpo.run(_cfg(task, tmp_path / "b", "train.max_steps=6", "train.save_every=1"))
    wa, wb = (load_file(str(tmp_path / p / "out/adapter_model.safetensors")) for p in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["rewards/accuracies"] == straight["rewards/accuracies"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("dpo.loss=kl", "dpo.loss must be one of"),
        ("dpo.beta=0", "dpo.beta must be > 0"),
        ("dpo.label_smoothing=0.5", "dpo.label_smoothing must be in"),
    ],
)
def test_bad_dpo_settings_are_config_errors(task, tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _cfg(task, tmp_path, override)
