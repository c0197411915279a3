"""The sharded tensors of an FSDP checkpoint, in one process (DCP writes one shard file then): what
a load checks, and a failed write. Two ranks' shards are tested in test_distributed.py."""

import errno
import warnings

import pytest
import torch

from tests.unit.training.checkpoint_support import trained_setup, truncate
from tunesmith.errors import CheckpointError
from tunesmith.training import checkpoint_shards as shards
from tunesmith.training.checkpoint_shards import SHARDS, check_shards, read_shards, write_shards


def _written(path):
    """A checkpoint directory holding the shards of trained_setup()'s weights and AdamW state;
    (listing for state.json, params, optimizer)."""
    params, opt, _ = trained_setup()
    tensors = {n: p.detach() for n, p in params.items()}
    for index, entries in opt.state_dict()["state"].items():
        tensors.update({f"optimizer.state.{index}.{k}": v for k, v in entries.items()})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")  # one process
        listing = write_shards(path / SHARDS, tensors)
    return listing, params, opt


def test_shards_round_trip(tmp_path):
    listing, params, opt = _written(tmp_path)
    assert listing["files"] == ["shard-00001-model-00001-of-00001.safetensors"]
    read = read_shards(tmp_path, check_shards(tmp_path, listing), params, opt)
    assert torch.equal(read["w"], params["w"])
    assert torch.equal(read["optimizer.state.0.exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert read["optimizer.state.1.step"].shape == ()


DAMAGE = {
    "missing file": (lambda d, listing: d.unlink(), "is missing"),
    "truncated file": (lambda d, listing: truncate(d), "cannot be read"),
    "shape": (
        lambda d, listing: listing["tensors"]["w"].update(shape=[9, 4]),
        r"w is torch.float32 \[8, 4\], state.json says",
    ),
    "unlisted": (
        lambda d, listing: listing["tensors"].update(ghost=dict(shape=[1])),
        "lacks ghost",
    ),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_shards_raise_one_clear_line(tmp_path, kind):
    damage, fragment = DAMAGE[kind]
    listing, _, _ = _written(tmp_path)
    damage(tmp_path / SHARDS / listing["files"][0], listing)
    with pytest.raises(CheckpointError, match=fragment) as err:
        check_shards(tmp_path, listing)
    assert "\n" not in str(err.value) and f"delete {tmp_path}" in str(err.value)


def test_a_failed_write_keeps_its_errno(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.HuggingFaceStorageWriter, "write_data", full_disk)
    with pytest.raises(OSError) as err:
        _written(tmp_path)
    assert err.value.errno == errno.ENOSPC
