"""The sharded part of an FSDP checkpoint: every rank's shards of the trained parameters and the
optimizer state, written and read with torch.distributed.checkpoint (DCP) in safetensors files.

<checkpoint>/shards/ holds one file per rank, shard-<rank + 1>-model-00001-of-00001.safetensors
(DCP's HuggingFaceStorageWriter with save_distributed=True): plain safetensors whose header says
where each shard lies in the whole tensor (DCP_SHARDING_INFO, JSON). Keys are those of the
unsharded format: a parameter's name, "optimizer.state.<i>.<name>". The reader rebuilds DCP's
metadata from these headers, so a load reshards to any number of processes, one included.

Notable:
- Only tensors go through DCP. Its planner pickles any other value (torch.save into a byte item),
  and the writer puts those bytes into the .safetensors file, which is then unreadable; numbers and
  param groups stay in state.json. The writer writes no .metadata file (DCP's own is a pickle).
- state.json lists the shard files and every tensor's dtype and shape, and a load checks that the
  files hold every element of every tensor before it reads: DCP would leave the part a missing
  file held uninitialised.
- Replicated plain tensors (AdamW's step counts) are written once, by one of the ranks.
"""

import errno
import math
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

from .checkpoint_checks import OPTIMIZER, STATE, _Damaged

SHARDS = "shards"  # the folder in a checkpoint directory


def manifest(tensors: dict) -> dict:
    """{key: {"dtype", "shape"}} of `tensors` (a DTensor's shape is the whole tensor's)."""
    return {k: {"dtype": str(t.dtype), "shape": list(t.shape)} for k, t in tensors.items()}


def write_shards(directory: Path, tensors: dict) -> dict:
    """Every rank at once: write this rank's shards of `tensors` into `directory`. Returns what
    state.json records of them. Raises OSError when any rank's write failed."""
    writer = HuggingFaceStorageWriter(str(directory), save_distributed=True)
    try:
        dcp.save(tensors, storage_writer=writer)
    except CheckpointException as e:  # a BaseException, raised on every rank
        raise _first_os_error(e) from None
    files = sorted(f.name for f in directory.glob("*.safetensors"))
    return {"files": files, "tensors": manifest(tensors)}


def _first_os_error(e: CheckpointException) -> OSError:
    # Keep the errno (ENOSPC ...) of the rank that failed, so the message can name the fix.
    failure = next(iter(e.failures.values()))[0]
    if isinstance(failure, OSError):
        return failure
    return OSError(errno.EIO, f"{type(failure).__name__}: {failure}")


def check_shards(path: Path, listing) -> dict:
    """The manifest of the shards of the checkpoint at `path` once checked: the files state.json
    lists are there and readable, and hold every element of every tensor it lists."""
    if not isinstance(listing, dict) or not isinstance(listing.get("tensors"), dict):
        raise _Damaged(path, f"{STATE}: 'shards' must hold 'files' and 'tensors'")
    for name in listing.get("files", []):
        _check_header(path, path / SHARDS / str(name))
    try:
        stored = _reader(path).read_metadata().state_dict_metadata
    except (OSError, SafetensorError, ValueError, KeyError) as e:
        raise _Damaged(path, f"{SHARDS}/ cannot be read ({' '.join(str(e).split())})") from None
    for key, want in listing["tensors"].items():
        _check_stored(path, key, want, stored.get(key))
    return listing["tensors"]


def _check_header(path: Path, file: Path) -> None:
    where = f"{SHARDS}/{file.name}"
    if not file.is_file():
        raise _Damaged(path, f"{where} is missing")
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (OSError, SafetensorError) as e:
        raise _Damaged(
            path, f"{where} cannot be read ({' '.join(str(e).split())}); it was probably cut short"
        ) from None


def _check_stored(path: Path, key: str, want, stored) -> None:
    if not isinstance(want, dict) or not isinstance(want.get("shape"), list):
        raise _Damaged(path, f"{STATE}: shards entry {key} must give 'dtype' and 'shape'")
    if stored is None:
        raise _Damaged(path, f"{SHARDS}/ lacks {key}, which {STATE} lists")
    if [str(stored.properties.dtype), list(stored.size)] != [want.get("dtype"), want["shape"]]:
        raise _Damaged(
            path,
            f"{SHARDS}/: {key} is {stored.properties.dtype} {list(stored.size)}, {STATE} says {want}",
        )
    held = sum(math.prod(chunk.sizes) for chunk in stored.chunks)
    if held != math.prod(want["shape"]):
        raise _Damaged(
            path,
            f"{SHARDS}/ holds {held} of the {math.prod(want['shape'])} values of {key}: a shard "
            f"file is missing or from another save",
        )


def stand_ins(shards: dict) -> dict:
    """Shape-and-dtype-only tensors (on the meta device) for the checks of the weights."""
    return {
        k: torch.empty(v["shape"], dtype=_dtype(v["dtype"]), device="meta")
        for k, v in shards.items()
    }


def read_shards(path: Path, shards: dict, named_params: dict, optimizer) -> dict:
    """The tensors `shards` (a checked manifest) lists, each laid out as this run holds it: a
    DTensor shaped like its parameter under FSDP (this rank's part only), else whole."""
    live = [p for group in optimizer.param_groups for p in group["params"]]  # the state's order
    templates = {}
    for key, want in shards.items():
        like = _owner(key, named_params, live)
        dtype = _dtype(want["dtype"])
        if like is not None and list(like.shape) == want["shape"]:
            templates[key] = torch.empty_like(like, dtype=dtype)
        else:  # a step count: whole on every rank
            templates[key] = torch.empty(want["shape"], dtype=dtype)
    try:
        with warnings.catch_warnings():
            # no_dist: every rank reads its own parts, with no collective to wait on (and DCP warns
            # that it assumes one process, which is what it is asked for).
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(templates, storage_reader=_reader(path), no_dist=True)
    except (CheckpointException, OSError, SafetensorError, RuntimeError) as e:
        raise _Damaged(
            path, f"{SHARDS}/ cannot be read ({' '.join(str(e).split())[:300]})"
        ) from None
    return templates


def _owner(key: str, named_params: dict, live: list):
    """The parameter whose value (or optimizer state) `key` holds; None for an unknown index."""
    if not key.startswith(OPTIMIZER):
        return named_params[key]
    index = key[len(OPTIMIZER) :].split(".", 1)[0]
    return live[int(index)] if index.isdigit() and int(index) < len(live) else None


def _reader(path: Path) -> HuggingFaceStorageReader:
    return HuggingFaceStorageReader(str(path / SHARDS))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))  # checked against the files already
