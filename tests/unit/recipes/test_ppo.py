"""PPO end to end on a tiny model with a reward function: KL 0 at the start, the score rises, the
value head trains and is saved beside a plain adapter, exact resume, guard rails, bad settings."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.recipes import ppo
from tunesmith.recipes.on_policy import evaluate_on_policy

REWARD = """
def fraction_a(prompts, completions, **fields):
    return [c.count("a") / max(len(c), 1) for c in completions]
"""


@pytest.fixture
def task(tmp_path, cache_dir, monkeypatch):
    """(model dir, prompts file); the reward module rewards.py is in the working directory."""
    rng = random.Random(0)
    rows = [
        {"prompt": "q " + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))}
        for _ in range(40)
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rewards.py").write_text(REWARD)
    monkeypatch.chdir(tmp_path)
    # Wider initial weights than the default 0.02, so that LoRA can move the output distribution.
    model = save_tiny_model(tmp_path / "tiny", tiny_llama(initializer_range=0.3))
    return model, tmp_path / "prompts.jsonl"


def _cfg(task, out, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.max_length=32",
        "data.split=[0.8, 0.1, 0.1]",
        "task.type=ppo",
        "reward.function=rewards:fraction_a",
        "method.name=lora",
        "method.r=4",
        "method.target_modules=all-linear",
        "train.batch_size=8",
        "train.lr=3e-2",
        "train.scheduler=constant",
        "train.log_every=1",
        "ppo.max_new_tokens=8",
        "ppo.temperature=1.0",
        "ppo.kl_coef=0.01",
        "ppo.epochs=2",
        "ppo.minibatches=2",
        "eval.batch_size=8",
        "eval.max_new_tokens=8",
        f"output.dir={out}",
    ]
    return tunesmith.load_config(None, [*base, *overrides])


def _log(out) -> list[dict]:
    """The training records of metrics.jsonl (not the validation ones)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "objective/kl" in r]


def test_training_raises_the_score_from_a_kl_of_exactly_zero(task, tmp_path):
    out = tmp_path / "out"
    metrics = ppo.run(_cfg(task, out, "train.max_steps=40"))
    log = _log(out)
    assert log[0]["objective/kl"] == 0.0  # policy = reference at step 0 (LoRA B = 0)
    assert log[0]["val/mean"] == 0.0 and log[0]["policy/approxkl"] == 0.0
    names = {
        "objective/kl",
        "objective/entropy",
        "objective/scores",
        "policy/clipfrac",
        "policy/approxkl",
        "val/clipfrac",
        "loss/policy",
        "loss/value",
        "kl_coef",
        "response_length",
        "eos_rate",
    }
    assert names <= set(log[0])
    scores = [r["objective/scores"] for r in log]
    first, last = sum(scores[:10]) / 10, sum(scores[-10:]) / 10
    assert last > first + 0.03, (first, last)
    assert {"reward", "reward_reference", "win_rate_vs_reference"} <= set(metrics)
    # a plain PEFT adapter, and the value head beside it (trained: no longer zero)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and not any("value_head" in k for k in adapter)
    head = load_file(str(out / ppo.VALUE_HEAD_FILE))
    assert head["weight"].shape == (1, 16) and head["weight"].abs().sum() > 0
    assert (out / "best" / ppo.VALUE_HEAD_FILE).is_file()
    assert (out / "reward_curve.png").is_file()
    trainable = load_file(str(out / "checkpoints/last/trainable.safetensors"))
    assert {"value_head.weight", "value_head.bias"} <= set(trainable)
    again = evaluate_on_policy(_cfg(task, out, "train.max_steps=40"))
    assert again["reward"] == pytest.approx(metrics["reward"])


def test_the_value_head_is_a_trainable_parameter_starting_at_zero(task, tmp_path):
    from tunesmith.recipes.common import build_model

    model, _ = build_model(_cfg(task, tmp_path / "out"))
    head = ppo.attach_value_head(model)
    params = dict(model.named_parameters())
    assert params["value_head.weight"] is head.weight and head.weight.requires_grad
    hidden = torch.randn(2, 5, 16)
    assert torch.equal(ppo.values_of(model, hidden), torch.zeros(2, 5))


def _interrupt_at(n: int, monkeypatch):
    """From the n-th call of ppo_loss on, raise KeyboardInterrupt."""
    calls, original = {"n": 0}, ppo.ppo_loss

    def dies(model, batch, cfg):
        calls["n"] += 1
        if calls["n"] >= n:
            raise KeyboardInterrupt
        return original(model, batch, cfg)

    monkeypatch.setattr(ppo, "ppo_loss", dies)
    return original


# 2 epochs x 2 minibatches of 4 rows: 4 updates of one micro-batch per step
@pytest.mark.parametrize("call", [3 * 4 + 1, 3 * 4 + 2], ids=["before-updates", "mid-updates"])
def test_resume_after_interrupt_ends_with_identical_weights(task, tmp_path, monkeypatch, call):
    settings = ("train.max_steps=6", "train.save_every=1", "ppo.adaptive_kl=true")
    settings += ("ppo.target_kl=0.1", "ppo.horizon=40")  # a coefficient that moves every step
    ppo.run(_cfg(task, tmp_path / "a", *settings))
    original = _interrupt_at(call, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(_cfg(task, tmp_path / "b", *settings))
    state = json.loads((tmp_path / "b/checkpoints/last/state.json").read_text())
    assert state["position"]["step"] == 3 and state["objective"]["steps"] == 3
    monkeypatch.setattr(ppo, "ppo_loss", original)
    ppo.run(_cfg(task, tmp_path / "b", *settings))
    for name in ("adapter_model.safetensors", ppo.VALUE_HEAD_FILE):
        a, b = (load_file(str(tmp_path / run / name)) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    coefs = [[r["kl_coef"] for r in _log(tmp_path / run)] for run in ("a", "b")]
    assert coefs[0] == coefs[1] and len(set(coefs[0])) == 6  # adapted, and replayed exactly


def test_a_run_whose_kl_explodes_stops_with_the_guard_rail(task, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(task, out, "train.max_steps=20", "train.lr=1.0", "ppo.kl_stop_above=5")
    with pytest.raises(TrainingError, match=r"above ppo.kl_stop_above=5.0: the policy ran away"):
        ppo.run(cfg)
    assert len(_log(out)) < 5  # stopped within a few steps of the jump


def test_negative_kl_beyond_noise_names_the_likely_cause(task, tmp_path):
    p = _cfg(task, tmp_path / "out").ppo
    ppo.check_kl(-0.4, p, 3)  # within the noise of the k1 estimator
    with pytest.raises(TrainingError, match=r"-0.700 nats per answer at step 3.*ppo.top_p < 1"):
        ppo.check_kl(-0.7, p, 3)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["ppo.kl_estimator=k2"], "ppo.kl_estimator must be one of k1, k3"),
        (["ppo.cliprange=0"], "ppo.cliprange must be > 0"),
        (["ppo.gamma=1.5"], r"ppo.gamma must be in \[0, 1\]"),
        (["ppo.epochs=0"], "ppo.epochs must be >= 1"),
        (["ppo.top_p=0"], r"ppo.top_p must be in \(0, 1\]"),
        (["ppo.missing_eos_penalty=-1"], "ppo.missing_eos_penalty must be >= 0"),
        (["ppo.kl_stop_below=0.1"], "ppo.kl_stop_below must be < 0"),
        (["ppo.adaptive_kl=true", "ppo.kl_coef=0"], "kl_coef, which is 0"),
        (["ppo.minibatches=9"], "ppo.minibatches=9 exceeds the 8 rollouts"),
        (["reward.model=runs/rm"], "exactly one of reward.model"),
        (["reward.function=null"], "exactly one of reward.model"),
        (["reward.center_coefficient=0.01"], "reward.center_coefficient=0.01"),
    ],
)
def test_bad_ppo_settings_are_one_line_config_errors(task, tmp_path, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        _cfg(task, tmp_path / "out", *overrides)
    assert "\n" not in str(err.value)


def test_missing_eos_penalty_and_the_updates_per_step(task, tmp_path):
    plain = ppo.run(_cfg(task, tmp_path / "a", "train.max_steps=1"))
    ppo.run(_cfg(task, tmp_path / "b", "train.max_steps=1", "ppo.missing_eos_penalty=2.0"))
    (a,), (b,) = _log(tmp_path / "a"), _log(tmp_path / "b")  # the same samples (same seed)
    assert a["eos_rate"] == b["eos_rate"] < 1
    assert b["objective/scores"] == pytest.approx(a["objective/scores"] - 2.0 * (1 - a["eos_rate"]))
    state = json.loads((tmp_path / "a/checkpoints/last/state.json").read_text())
    assert state["scheduler"]["last_epoch"] == 4 == plain["steps"] * 2 * 2  # epochs x minibatches
    ppo.run(_cfg(task, tmp_path / "c", "train.max_steps=1", "ppo.whiten_rewards=true"))
