"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop position, without pickle.

A checkpoint directory holds three files:
- trainable.safetensors: the trainable parameters, by name.
- state.safetensors: every other tensor: optimizer state as "optimizer.state.<i>.<name>" (dtypes
  kept, e.g. the 8-bit optimizer's int8/uint8 codes), RNG states as "rng.*" (in a run of
  several processes, rank r's as "rank<r>.rng.*" for r >= 1) and the methods' own state (AdaLoRA's
  importance averages) as "method.<adapter>/<key>".
- state.json: the rest (param groups, per-parameter numbers, scheduler state, loop position, RNG
  numbers, the objective's own state when it has one, e.g. PPO's adaptive KL coefficient) and a
  manifest (dtype, shape) of the tensors in state.safetensors.
This module writes them; checkpoint_load.py reads them (both exported from here).
Under FSDP, shards/ takes the place of trainable.safetensors: every rank's shards of the trainable
parameters and of the optimizer state's tensors (checkpoint_shards.py); state.json lists its files
and tensors, and state.safetensors holds the rest. Either kind loads on any number of processes.

Notable:
- A save writes a temp directory and swaps it in with renames: checkpoints/last becomes
  checkpoints/previous, so a crash or a full disk at any point leaves a loadable checkpoint.
- A load reads and checks everything before it touches the model or the optimizer, so when last/
  is damaged it can fall back to previous/ (with a warning) instead of resuming from half of each.
"""

import errno
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from ..errors import CheckpointError
from ..utils.files import fsync_dir, fsync_file, replace_dir, write_synced
from ..utils.seeding import (
    rng_state,
    split_rng_state,
)
from .checkpoint_checks import (  # noqa: F401  (FILES and the file names are this module's too)
    FILES,
    FORMAT,
    LAST,
    METHOD,
    OPTIMIZER,
    PREVIOUS,
    STATE,
    TENSORS,
    WEIGHTS,
)
from .checkpoint_load import (  # noqa: F401  (this module's API: save and load together)
    _looks_sound,
    find_checkpoint,
    load_checkpoint,
    read_position,
)
from .checkpoint_shards import SHARDS, manifest, write_shards

log = logging.getLogger(__name__)

# ---- save ----------------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    named_params: dict,
    optimizer,
    scheduler,
    position: dict,
    rng=None,
    objective_state: dict | None = None,
    method_state=None,
) -> None:
    """Write a checkpoint to `path`; when `path` is checkpoints/last, the old one becomes previous/.

    Call it on rank 0; under FSDP (DTensor parameters) on every rank: each writes its shards of the
    parameters and the optimizer state to shards/ (checkpoint_shards), rank 0 the rest.
    position: the loop position (plain JSON values); rng: the RNG state to restore on resume
    (default: the current one), or a list of them, one per rank; objective_state: the objective's
    state_dict() (plain JSON values), if it has one; method_state: an object whose state_dict()
    gives tensors (registry.MethodStates). Raises CheckpointError when a file cannot be written
    (disk full: the previous checkpoint stays loadable) or a state value would need pickle.
    """
    state, tensors = _to_plain(path, optimizer, scheduler, position, rng or rng_state())
    if objective_state is not None:
        state["objective"] = _plain(objective_state, path, "objective")
    if method_state is not None:  # the methods' own tensors (registry.MethodStates)
        extra = {
            f"{METHOD}{k}": v.detach().contiguous() for k, v in method_state.state_dict().items()
        }
        tensors.update(extra)
        state["tensors"].update(manifest(extra))
    if any(isinstance(p, DTensor) for p in named_params.values()):
        _save_sharded(path, named_params, tensors, state)
        return
    tmp = None
    try:
        tmp = _temp_dir(path)
        _write(tmp, {WEIGHTS: named_params, TENSORS: tensors}, state)
        replace_dir(tmp, path, keep=_keep_for(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(_write_failure(path, e)) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _save_sharded(path: Path, named_params: dict, tensors: dict, state: dict) -> None:
    """save_checkpoint on every rank of an FSDP run; all of them raise when any write failed."""
    main = dist.get_rank() == 0
    shards = {n: p.detach() for n, p in named_params.items()}
    shards.update({k: tensors.pop(k) for k in [k for k in tensors if k.startswith(OPTIMIZER)]})
    state["tensors"] = manifest(tensors)
    tmp, error = None, None
    if main:
        try:
            tmp = _temp_dir(path)
        except OSError as e:
            error = _write_failure(path, e)
    tmp, error = _from_rank0((tmp, error))  # the others write into rank 0's temp dir
    if error is not None:
        raise CheckpointError(error)
    try:
        listing = write_shards(tmp / SHARDS, shards)
        if main:
            fsync_dir(tmp / SHARDS)
            _write(tmp, {TENSORS: tensors}, {**state, "shards": listing})
            replace_dir(tmp, path, keep=_keep_for(path))
    except (OSError, SafetensorError) as e:
        error = _write_failure(path, e)
    finally:
        if main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    error = _from_rank0(error)  # rank 0 sees every rank's failure (DCP gathers them)
    if error is not None:
        raise CheckpointError(error)


def _from_rank0(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _temp_dir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_strays(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))


def _to_plain(path: Path, optimizer, scheduler, position: dict, rng) -> tuple[dict, dict]:
    """(state.json content, state.safetensors tensors)."""
    rng, *rank_rngs = rng if isinstance(rng, list) else [rng]
    opt = optimizer.state_dict()
    tensors, per_param = {}, {}
    for index, entries in opt["state"].items():
        names, values = [], {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER}{index}.{name}"] = value.detach().contiguous()
                names.append(name)
            else:
                values[name] = value
        per_param[str(index)] = {"tensors": names, "values": values}
    rng_plain, rng_tensors = split_rng_state(rng)
    tensors.update(rng_tensors)
    ranks_plain = []
    for r, other in enumerate(rank_rngs, start=1):
        plain, other_tensors = split_rng_state(other)
        ranks_plain.append(plain)
        tensors.update({f"rank{r}.{k}": t for k, t in other_tensors.items()})
    state = {
        "format": FORMAT,
        "position": position,
        "optimizer": {
            "class": type(optimizer).__name__,
            "state": per_param,
            "param_groups": opt["param_groups"],
        },
        "scheduler": scheduler.state_dict(),
        "rng": rng_plain,
        "rank_rngs": ranks_plain,
        "tensors": manifest(tensors),
    }
    return _plain(state, path, "state"), tensors


def _plain(value, path: Path, where: str):
    """`value` as JSON types (tuples become lists); anything else would need pickle, so it is an error."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, path, f"{where}.{k}") for k, v in value.items()}
    raise CheckpointError(
        f"cannot write checkpoint {path}: {where} is a {type(value).__name__}, which only pickle "
        f"could store; use an optimizer and scheduler whose state_dict() holds only tensors, "
        f"numbers, strings and lists"
    )


def _write(tmp: Path, files: dict, state: dict) -> None:
    """files: {file name: tensors to write to it}; then state.json."""
    for name, tensors in files.items():
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / name))
        _check_written(tmp / name)
    write_synced(tmp / STATE, json.dumps(state).encode())
    fsync_dir(tmp)


def _check_written(file: Path) -> None:
    # save_file buffers its writes, and a failed final flush can go unreported; fsync and re-read
    # the header so a short file is caught here rather than at resume time.
    fsync_file(file)
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as e:
        raise OSError(
            errno.EIO, f"{file.name} came out short or corrupt ({e}); is the disk full?"
        ) from None


def _keep_for(path: Path) -> Path | None:
    """Where the checkpoint being replaced goes: previous/ when it is a sound last/."""
    if path.name != LAST or not _looks_sound(path):
        return None  # a damaged last/ is dropped, so it cannot displace a good previous/
    return path.with_name(PREVIOUS)


def _remove_strays(path: Path) -> None:
    # Temp dirs of saves that crashed before their rename, and dirs a crash left mid-deletion.
    for stray in [*path.parent.glob(f".{path.name}-*"), *path.parent.glob(".*.trash")]:
        if stray.is_dir():
            log.debug("removing %s, left by an interrupted save", stray)
            shutil.rmtree(stray, ignore_errors=True)


def _write_failure(path: Path, e: Exception) -> str:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk holding {path.parent}"
    else:
        fix = f"check that {path.parent} is writable and has free space"
    return (
        f"cannot write checkpoint {path}: {reason}; {fix}, then run the same command to resume "
        f"(the previous checkpoint is kept)"
    )
