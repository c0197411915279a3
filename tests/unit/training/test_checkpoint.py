"""Checkpoints without pickle: exact round trip, validation on load, last/previous rotation."""

import json
import logging
import random

import numpy as np
import pytest
import torch

from tests.unit.training.checkpoint_support import fresh_setup, save_at, trained_setup, truncate
from tunesmith.errors import CheckpointError
from tunesmith.training import checkpoint as ck
from tunesmith.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    read_position,
    save_checkpoint,
)


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_round_trip_is_exact(tmp_path, optimizer):
    setup = trained_setup(optimizer=optimizer)
    params, opt, sched = setup
    path = tmp_path / "checkpoints" / "last"
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    save_at(path, setup, 3, extra_key=[1, "two"])
    expected_draws = _draws()

    new_params, new_opt, new_sched = fresh_setup(optimizer)
    position = load_checkpoint(path, new_params, new_opt, new_sched)
    assert position == {
        "step": 3,
        "epoch": 0,
        "batch": 3,
        "best_eval_loss": None,
        "extra_key": [1, "two"],
    }
    for name, p in params.items():
        assert torch.equal(new_params[name], p)
    saved, loaded = opt.state_dict(), new_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]  # betas is a tuple again
    for index, entries in saved["state"].items():
        assert entries.keys() == loaded["state"][index].keys()
        for key, value in entries.items():
            assert value.dtype == loaded["state"][index][key].dtype, key
            assert torch.equal(value, loaded["state"][index][key]), key
    if optimizer == "adamw8bit":
        assert loaded["state"][0]["exp_avg_codes"].dtype == torch.int8
        assert loaded["state"][0]["exp_avg_sq_codes"].dtype == torch.uint8
    assert new_sched.state_dict() == sched.state_dict()
    drawn = _draws()
    assert drawn[:2] == expected_draws[:2] and torch.equal(drawn[2], expected_draws[2])


def test_files_are_safetensors_and_json_only(tmp_path):
    path = tmp_path / "checkpoints" / "last"
    save_at(path, trained_setup(), 3)
    assert sorted(p.name for p in path.iterdir()) == sorted(ck.FILES)
    state = json.loads((path / ck.STATE).read_text())
    assert state["position"]["step"] == 3 and read_position(path)["step"] == 3
    assert state["tensors"]["optimizer.state.0.exp_avg"] == {
        "dtype": "torch.float32",
        "shape": [8, 4],
    }


def test_non_json_scheduler_state_is_refused_before_writing(tmp_path):
    params, opt, sched = trained_setup()
    sched.odd = object()  # LambdaLR.state_dict() keeps every attribute but the lambdas
    with pytest.raises(
        CheckpointError, match=r"state\.scheduler\.odd is a object, which only pickle"
    ):
        save_checkpoint(tmp_path / "last", params, opt, sched, {"step": 1})
    assert not (tmp_path / "last").exists()


# ---- validation on load --------------------------------------------------------------------------


def _edit_json(path, change):
    state = json.loads((path / ck.STATE).read_text())
    change(state)
    (path / ck.STATE).write_text(json.dumps(state))


DAMAGE = {
    "missing weights": (lambda p: (p / ck.WEIGHTS).unlink(), "trainable.safetensors is missing"),
    "missing tensors": (lambda p: (p / ck.TENSORS).unlink(), "state.safetensors is missing"),
    "missing json": (lambda p: (p / ck.STATE).unlink(), "state.json is missing"),
    "empty weights": (
        lambda p: (p / ck.WEIGHTS).write_bytes(b""),
        r"trainable.safetensors is empty \(0 bytes\)",
    ),
    "empty json": (lambda p: (p / ck.STATE).write_bytes(b""), r"state.json is empty"),
    "truncated weights": (
        lambda p: truncate(p / ck.WEIGHTS),
        "trainable.safetensors cannot be read",
    ),
    "truncated tensors": (lambda p: truncate(p / ck.TENSORS), "state.safetensors cannot be read"),
    "truncated json": (lambda p: truncate(p / ck.STATE), "state.json is not valid JSON"),
    "json not object": (
        lambda p: (p / ck.STATE).write_text("[1, 2]"),
        "holds a list, not an object",
    ),
    "missing key": (
        lambda p: _edit_json(p, lambda s: s.pop("scheduler")),
        "lacks the key 'scheduler'",
    ),
    "wrong format": (lambda p: _edit_json(p, lambda s: s.update(format="x/9")), "has format 'x/9'"),
    "dtype mismatch": (
        lambda p: _edit_json(
            p, lambda s: s["tensors"]["optimizer.state.0.exp_avg"].update(dtype="torch.float16")
        ),
        "optimizer.state.0.exp_avg is torch.float32 \\[8, 4\\], state.json says",
    ),
    "unlisted tensor": (
        lambda p: _edit_json(p, lambda s: s["tensors"].pop("rng.torch")),
        "holds rng.torch, which state.json does not list",
    ),
    "dangling reference": (
        lambda p: _edit_json(p, lambda s: s["optimizer"]["state"]["0"]["tensors"].append("ghost")),
        "state.json is malformed",
    ),
    "bad rng": (
        lambda p: _edit_json(p, lambda s: s["rng"].update(python=[3])),
        "state.json is malformed",
    ),
    "old pickle format": (
        lambda p: ((p / ck.STATE).unlink(), (p / "state.pt").write_bytes(b"x")),
        r"older version \(state.pt",
    ),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_raises_one_clear_line(tmp_path, kind):
    damage, fragment = DAMAGE[kind]
    path = tmp_path / "checkpoints" / "last"
    save_at(path, trained_setup(), 3)
    damage(path)
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"delete {path} or set train.resume=false" in message


def test_damaged_checkpoint_leaves_the_run_untouched(tmp_path):
    path = tmp_path / "checkpoints" / "last"
    save_at(path, trained_setup(), 3)
    _edit_json(path, lambda s: s["rng"].update(python=[3]))
    params, opt, sched = fresh_setup()
    before = (
        {k: p.detach().clone() for k, p in params.items()},
        opt.state_dict()["state"][0]["exp_avg"].clone(),
    )
    with pytest.raises(CheckpointError):
        load_checkpoint(path, params, opt, sched)
    assert all(torch.equal(params[k], v) for k, v in before[0].items())
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], before[1])


def test_checkpoint_of_another_model_or_optimizer_is_refused(tmp_path):
    path = tmp_path / "last"
    save_at(path, trained_setup(), 3)
    params, opt, sched = fresh_setup()
    with pytest.raises(
        CheckpointError,
        match="w is torch.float32 \\(8, 4\\), this run has torch.float32 \\(4, 8\\)",
    ):
        load_checkpoint(
            path, {"w": torch.nn.Parameter(torch.zeros(4, 8)), "b": params["b"]}, opt, sched
        )
    with pytest.raises(CheckpointError, match="holds b, which this run does not train"):
        load_checkpoint(path, {"w": params["w"]}, opt, sched)
    with pytest.raises(CheckpointError, match="lacks c: it belongs to a different model"):
        load_checkpoint(path, {**params, "c": torch.nn.Parameter(torch.zeros(2))}, opt, sched)
    with pytest.raises(
        CheckpointError, match="written with optimizer AdamW, this run uses AdamW8bit"
    ):
        load_checkpoint(path, *fresh_setup("adamw8bit"))


# ---- last/ and previous/ -------------------------------------------------------------------------


def test_saving_last_keeps_the_old_one_as_previous(tmp_path):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_at(root / "last", setup, step)
    assert (
        read_position(root / "last")["step"] == 3 and read_position(root / "previous")["step"] == 2
    )
    assert sorted(p.name for p in root.iterdir()) == ["last", "previous"]


def test_damaged_last_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    save_at(root / "last", setup, 2)
    truncate(root / "last" / ck.TENSORS)
    with caplog.at_level(logging.WARNING, logger="tunesmith.training.checkpoint"):
        position = load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())
    assert position["step"] == 1
    warning = caplog.records[-1].getMessage()
    assert str(root / "last") in warning and str(root / "previous") in warning


def test_damaged_last_does_not_displace_a_good_previous(tmp_path):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    save_at(root / "last", setup, 2)
    truncate(root / "last" / ck.WEIGHTS)
    save_at(root / "last", setup, 3)
    assert read_position(root / "previous")["step"] == 1


def test_both_damaged_names_both(tmp_path):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    save_at(root / "last", setup, 2)
    (root / "last" / ck.STATE).write_text("{")
    (root / "previous" / ck.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="both unusable") as err:
        load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())
    assert str(root / "last") in str(err.value) and str(root / "previous") in str(err.value)


def test_find_checkpoint(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    assert find_checkpoint(tmp_path) is None
    save_at(root / "last", trained_setup(), 1)
    assert find_checkpoint(tmp_path) == root / "last"
    (root / "last").rename(
        root / "previous"
    )  # as a crash between the two renames of a save leaves it
    with caplog.at_level(logging.WARNING, logger="tunesmith.training.checkpoint"):
        assert find_checkpoint(tmp_path) == root / "previous"
    assert "missing" in caplog.text
    assert load_checkpoint(root / "previous", *fresh_setup())["step"] == 1


# ---- disk full and crashes while saving ----------------------------------------------------------


class _Counter:
    """An objective's state (PPO's adaptive KL coefficient, say)."""

    def __init__(self, value=0.0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_objective_state_round_trips_and_is_required_when_the_objective_has_one(tmp_path):
    setup = trained_setup()
    params, opt, sched = setup
    position = {"step": 3, "epoch": 0, "batch": 3, "best_eval_loss": None}
    save_checkpoint(
        tmp_path / "with", params, opt, sched, position, objective_state={"value": 0.07}
    )
    save_at(tmp_path / "without", setup, 3)
    state = _Counter()
    load_checkpoint(tmp_path / "with", *fresh_setup(), objective_state=state)
    assert state.value == 0.07
    load_checkpoint(tmp_path / "with", *fresh_setup())  # a stateless objective ignores it
    with pytest.raises(CheckpointError, match="holds no objective state"):
        load_checkpoint(tmp_path / "without", *fresh_setup(), objective_state=_Counter())
