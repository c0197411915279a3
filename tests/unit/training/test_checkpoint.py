"""Checkpoints without pickle: exact round trip, validation on load, last/previous rotation, disk full."""

import errno
import json
import logging
import random

import numpy as np
import pytest
import torch

from tunesmith.errors import CheckpointError
from tunesmith.training import checkpoint as ck
from tunesmith.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    read_position,
    save_checkpoint,
)
from tunesmith.training.optim8bit import AdamW8bit


def _setup(seed=0, optimizer="adamw"):
    """Trainable params (one 2-D, one 1-D), optimizer with two groups, LambdaLR, a few steps taken."""
    torch.manual_seed(seed)
    params = {"w": torch.nn.Parameter(torch.randn(8, 4)), "b": torch.nn.Parameter(torch.randn(4))}
    groups = [
        {"params": [params["w"]], "weight_decay": 0.1},
        {"params": [params["b"]], "weight_decay": 0.0},
    ]
    if optimizer == "adamw8bit":
        opt = AdamW8bit(groups, lr=1e-2, min_8bit_size=16)  # w (32 values) in 8 bits, b (4) in fp32
    else:
        opt = torch.optim.AdamW(groups, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        (params["w"].sum() ** 2 + params["b"].pow(3).sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return params, opt, sched


def _save(path, setup, step, **extra):
    params, opt, sched = setup
    save_checkpoint(
        path,
        params,
        opt,
        sched,
        {"step": step, "epoch": 0, "batch": step, "best_eval_loss": None, **extra},
    )


def _fresh(optimizer="adamw"):
    return _setup(seed=99, optimizer=optimizer)


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_round_trip_is_exact(tmp_path, optimizer):
    setup = _setup(optimizer=optimizer)
    params, opt, sched = setup
    path = tmp_path / "checkpoints" / "last"
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _save(path, setup, 3, extra_key=[1, "two"])
    expected_draws = _draws()

    new_params, new_opt, new_sched = _fresh(optimizer)
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
    _save(path, _setup(), 3)
    assert sorted(p.name for p in path.iterdir()) == sorted(ck.FILES)
    state = json.loads((path / ck.STATE).read_text())
    assert state["position"]["step"] == 3 and read_position(path)["step"] == 3
    assert state["tensors"]["optimizer.state.0.exp_avg"] == {
        "dtype": "torch.float32",
        "shape": [8, 4],
    }


def test_non_json_scheduler_state_is_refused_before_writing(tmp_path):
    params, opt, sched = _setup()
    sched.odd = object()  # LambdaLR.state_dict() keeps every attribute but the lambdas
    with pytest.raises(
        CheckpointError, match=r"state\.scheduler\.odd is a object, which only pickle"
    ):
        save_checkpoint(tmp_path / "last", params, opt, sched, {"step": 1})
    assert not (tmp_path / "last").exists()


# ---- validation on load --------------------------------------------------------------------------


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


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
        lambda p: _truncate(p / ck.WEIGHTS),
        "trainable.safetensors cannot be read",
    ),
    "truncated tensors": (lambda p: _truncate(p / ck.TENSORS), "state.safetensors cannot be read"),
    "truncated json": (lambda p: _truncate(p / ck.STATE), "state.json is not valid JSON"),
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
    _save(path, _setup(), 3)
    damage(path)
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_checkpoint(find_checkpoint(tmp_path), *_fresh())
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"delete {path} or set train.resume=false" in message


def test_damaged_checkpoint_leaves_the_run_untouched(tmp_path):
    path = tmp_path / "checkpoints" / "last"
    _save(path, _setup(), 3)
    _edit_json(path, lambda s: s["rng"].update(python=[3]))
    params, opt, sched = _fresh()
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
    _save(path, _setup(), 3)
    params, opt, sched = _fresh()
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
        load_checkpoint(path, *_fresh("adamw8bit"))


# ---- last/ and previous/ -------------------------------------------------------------------------


def test_saving_last_keeps_the_old_one_as_previous(tmp_path):
    setup, root = _setup(), tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(root / "last", setup, step)
    assert (
        read_position(root / "last")["step"] == 3 and read_position(root / "previous")["step"] == 2
    )
    assert sorted(p.name for p in root.iterdir()) == ["last", "previous"]


def test_damaged_last_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    _save(root / "last", setup, 2)
    _truncate(root / "last" / ck.TENSORS)
    with caplog.at_level(logging.WARNING, logger="tunesmith.training.checkpoint"):
        position = load_checkpoint(find_checkpoint(tmp_path), *_fresh())
    assert position["step"] == 1
    warning = caplog.records[-1].getMessage()
    assert str(root / "last") in warning and str(root / "previous") in warning


def test_damaged_last_does_not_displace_a_good_previous(tmp_path):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    _save(root / "last", setup, 2)
    _truncate(root / "last" / ck.WEIGHTS)
    _save(root / "last", setup, 3)
    assert read_position(root / "previous")["step"] == 1


def test_both_damaged_names_both(tmp_path):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    _save(root / "last", setup, 2)
    (root / "last" / ck.STATE).write_text("{")
    (root / "previous" / ck.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="both unusable") as err:
        load_checkpoint(find_checkpoint(tmp_path), *_fresh())
    assert str(root / "last") in str(err.value) and str(root / "previous") in str(err.value)


def test_find_checkpoint(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    assert find_checkpoint(tmp_path) is None
    _save(root / "last", _setup(), 1)
    assert find_checkpoint(tmp_path) == root / "last"
    (root / "last").rename(
        root / "previous"
    )  # as a crash between the two renames of a save leaves it
    with caplog.at_level(logging.WARNING, logger="tunesmith.training.checkpoint"):
        assert find_checkpoint(tmp_path) == root / "previous"
    assert "missing" in caplog.text
    assert load_checkpoint(root / "previous", *_fresh())["step"] == 1


# ---- disk full and crashes while saving ----------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["save_file", "write_synced"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    monkeypatch.setattr(ck, target, _enospc)
    with pytest.raises(CheckpointError) as err:
        _save(root / "last", setup, 2)
    message = str(err.value)
    assert message.startswith(
        f"cannot write checkpoint {root / 'last'}: No space left on device; free space"
    )
    assert "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["last"]  # temp dir removed
    assert load_checkpoint(find_checkpoint(tmp_path), *_fresh())["step"] == 1


def test_a_short_write_that_reports_no_error_is_caught(tmp_path, monkeypatch):
    real = ck.save_file

    def short(tensors, filename):
        real(tensors, filename)
        _truncate(ck.Path(filename))

    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    monkeypatch.setattr(ck, "save_file", short)
    with pytest.raises(CheckpointError, match="came out short or corrupt"):
        _save(root / "last", setup, 2)
    monkeypatch.undo()
    assert load_checkpoint(find_checkpoint(tmp_path), *_fresh())["step"] == 1


def test_crash_before_the_final_rename_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    real = ck.replace_dir.__globals__["os"].replace

    def fail_on_swap_in(src, dst):
        if ck.Path(src).name.startswith(".last-"):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(ck.replace_dir.__globals__["os"], "replace", fail_on_swap_in)
    with pytest.raises(CheckpointError, match="Input/output error"):
        _save(root / "last", setup, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == [
        "previous"
    ]  # last/ was moved, the new one never came
    assert load_checkpoint(find_checkpoint(tmp_path), *_fresh())["step"] == 1


def test_stray_temp_dirs_are_ignored_then_cleaned(tmp_path):
    setup, root = _setup(), tmp_path / "checkpoints"
    _save(root / "last", setup, 1)
    stray = root / ".last-killed"  # what a SIGKILL during a save leaves
    stray.mkdir()
    (stray / ck.WEIGHTS).write_bytes(b"\0" * 10)
    (root / ".previous.trash").mkdir()
    assert find_checkpoint(tmp_path) == root / "last"
    assert load_checkpoint(root / "last", *_fresh())["step"] == 1
    _save(root / "last", setup, 2)
    assert sorted(p.name for p in root.iterdir()) == ["last", "previous"]


def test_replace_dir_without_keep_removes_the_old_directory(tmp_path):
    from tunesmith.utils.files import replace_dir

    target, tmp = tmp_path / "model", tmp_path / ".convert-1"
    for d, text in ((target, "old"), (tmp, "new")):
        d.mkdir()
        (d / "f").write_text(text)
    replace_dir(tmp, target)
    assert (target / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model"
    ]


class _Counter:
    """An objective's state (PPO's adaptive KL coefficient, say)."""

    def __init__(self, value=0.0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_objective_state_round_trips_and_is_required_when_the_objective_has_one(tmp_path):
    setup = _setup()
    params, opt, sched = setup
    position = {"step": 3, "epoch": 0, "batch": 3, "best_eval_loss": None}
    save_checkpoint(
        tmp_path / "with", params, opt, sched, position, objective_state={"value": 0.07}
    )
    _save(tmp_path / "without", setup, 3)
    state = _Counter()
    load_checkpoint(tmp_path / "with", *_fresh(), objective_state=state)
    assert state.value == 0.07
    load_checkpoint(tmp_path / "with", *_fresh())  # a stateless objective ignores it
    with pytest.raises(CheckpointError, match="holds no objective state"):
        load_checkpoint(tmp_path / "without", *_fresh(), objective_state=_Counter())
