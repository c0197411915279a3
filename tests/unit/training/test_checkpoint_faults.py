"""Checkpoints under faults: a full disk, a short write, a crash before the final rename, stray
temporary directories."""

import errno

import pytest

from tests.unit.training.checkpoint_support import fresh_setup, save_at, trained_setup, truncate
from tunesmith.errors import CheckpointError
from tunesmith.training import checkpoint as ck
from tunesmith.training.checkpoint import find_checkpoint, load_checkpoint


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["save_file", "write_synced"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    monkeypatch.setattr(ck, target, _enospc)
    with pytest.raises(CheckpointError) as err:
        save_at(root / "last", setup, 2)
    message = str(err.value)
    assert message.startswith(
        f"cannot write checkpoint {root / 'last'}: No space left on device; free space"
    )
    assert "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["last"]  # temp dir removed
    assert load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())["step"] == 1


def test_a_short_write_that_reports_no_error_is_caught(tmp_path, monkeypatch):
    real = ck.save_file

    def short(tensors, filename):
        real(tensors, filename)
        truncate(ck.Path(filename))

    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    monkeypatch.setattr(ck, "save_file", short)
    with pytest.raises(CheckpointError, match="came out short or corrupt"):
        save_at(root / "last", setup, 2)
    monkeypatch.undo()
    assert load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())["step"] == 1


def test_crash_before_the_final_rename_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    real = ck.replace_dir.__globals__["os"].replace

    def fail_on_swap_in(src, dst):
        if ck.Path(src).name.startswith(".last-"):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(ck.replace_dir.__globals__["os"], "replace", fail_on_swap_in)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save_at(root / "last", setup, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == [
        "previous"
    ]  # last/ was moved, the new one never came
    assert load_checkpoint(find_checkpoint(tmp_path), *fresh_setup())["step"] == 1


def test_stray_temp_dirs_are_ignored_then_cleaned(tmp_path):
    setup, root = trained_setup(), tmp_path / "checkpoints"
    save_at(root / "last", setup, 1)
    stray = root / ".last-killed"  # what a SIGKILL during a save leaves
    stray.mkdir()
    (stray / ck.WEIGHTS).write_bytes(b"\0" * 10)
    (root / ".previous.trash").mkdir()
    assert find_checkpoint(tmp_path) == root / "last"
    assert load_checkpoint(root / "last", *fresh_setup())["step"] == 1
    save_at(root / "last", setup, 2)
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
