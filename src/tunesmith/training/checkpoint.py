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
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import CheckpointError, TunesmithError
from ..utils.files import fsync_dir, fsync_file, replace_dir, write_synced
from ..utils.seeding import (
    join_rng_state,
    rng_state,
    seed_everything,
    set_rng_state,
    split_rng_state,
)
from .checkpoint_checks import (  # noqa: F401  (FILES, FORMAT ... are this module's too)
    _KEYS,
    FILES,
    FORMAT,
    LAST,
    OPTIMIZER,
    PREVIOUS,
    STATE,
    TENSORS,
    WEIGHTS,
    _check_manifest,
    _check_optimizer,
    _check_weights,
    _Damaged,
    _rebuild_optimizer,
)
from .checkpoint_shards import (
    SHARDS,
    check_shards,
    manifest,
    read_shards,
    stand_ins,
    write_shards,
)

log = logging.getLogger(__name__)
METHOD = "method."  # prefix in state.safetensors of the methods' own state (e.g. AdaLoRA's)

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


def _looks_sound(path: Path) -> bool:
    # Cheap checks only (safetensors headers, the small JSON); a full read is left to load time.
    try:
        state = _read_json(path)
        for name in (TENSORS,) if SHARDS in state else (WEIGHTS, TENSORS):
            with safe_open(str(path / name), framework="pt"):
                pass
        if SHARDS in state:
            check_shards(path, state[SHARDS])
    except (OSError, SafetensorError, _Damaged):
        return False
    return True


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


# ---- load ----------------------------------------------------------------------------------------


def load_checkpoint(
    path: Path,
    named_params: dict,
    optimizer,
    scheduler,
    objective_state=None,
    rank: int = 0,
    method_state=None,
) -> dict:
    """Restore everything saved by save_checkpoint; returns the loop position. objective_state:
    the objective's state object (load_state_dict(dict)), when it has one. rank: whose RNG state
    to restore (a rank the checkpoint holds none for gets one seeded from rank 0's and its rank).

    When `path` (checkpoints/last) is damaged and checkpoints/previous is good, logs a warning and
    restores previous/. Raises CheckpointError (naming the file and the fix) when no usable
    checkpoint is there or it does not fit this model, method or optimizer.
    """
    try:
        ckpt = _read(path, named_params, optimizer)
    except _Damaged as err:
        backup = _backup_of(path)
        if backup is None:
            raise
        try:
            ckpt = _read(backup, named_params, optimizer)
        except _Damaged as err2:
            raise CheckpointError(
                f"checkpoints {path} and {backup} are both unusable ({err.what}; {err2.what}); "
                f"delete {path.parent} or set train.resume=false"
            ) from None
        log.warning(
            "checkpoint %s is unusable (%s); resuming from the one before it, %s",
            path,
            err.what,
            backup,
        )
    if objective_state is not None and ckpt["objective"] is None:
        raise CheckpointError(
            f"checkpoint {path} holds no objective state (it was written by another task); use "
            f"another output.dir or train.resume=false"
        )
    if method_state is not None:  # checks its keys before it sets anything
        try:
            method_state.load_state_dict(ckpt["method"])
        except TunesmithError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    position = _apply(ckpt, named_params, optimizer, scheduler, rank)
    if objective_state is not None:
        objective_state.load_state_dict(ckpt["objective"])
    return position


def find_checkpoint(out_dir: Path) -> Path | None:
    """out_dir/checkpoints/last, else checkpoints/previous, else None.

    A damaged last/ is still returned: load_checkpoint then falls back to previous/. previous/ is
    returned alone after a crash between the two renames of a save.
    """
    last = out_dir / "checkpoints" / LAST
    previous = last.with_name(PREVIOUS)
    if last.is_dir():
        return last
    if previous.is_dir():
        log.warning("%s is missing (a save was interrupted); resuming from %s", last, previous)
        return previous
    return None


def read_position(path: Path) -> dict:
    """The loop position stored in the checkpoint at `path` (without loading anything else)."""
    return _read_json(path)["position"]


def _backup_of(path: Path) -> Path | None:
    previous = path.with_name(PREVIOUS)
    return previous if path.name == LAST and previous.is_dir() else None


def _read(path: Path, named_params: dict, optimizer) -> dict:
    """Read and check every file of the checkpoint at `path`; nothing is modified yet."""
    _check_file(path, STATE)
    _check_file(path, TENSORS)
    state = _read_json(path)
    tensors = _read_tensors(path, TENSORS)
    _check_manifest(path, state["tensors"], tensors)
    _check_optimizer(path, state["optimizer"], optimizer)
    if SHARDS in state:  # written under FSDP
        shards = check_shards(path, state[SHARDS])
        weight_keys = [k for k in shards if not k.startswith(OPTIMIZER)]
        _check_weights(path, stand_ins({k: shards[k] for k in weight_keys}), named_params)
        tensors.update(read_shards(path, shards, named_params, optimizer))
        weights = {k: tensors.pop(k) for k in weight_keys}
    else:
        _check_file(path, WEIGHTS)
        weights = _read_tensors(path, WEIGHTS)
        _check_weights(path, weights, named_params)
    try:
        opt_state = _rebuild_optimizer(state["optimizer"], tensors, optimizer)
        rng = join_rng_state(state["rng"], tensors)
        rank_rngs = [
            join_rng_state(plain, _prefixed(tensors, f"rank{r}."))
            for r, plain in enumerate(state.get("rank_rngs", []), start=1)
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _Damaged(path, f"{STATE} is malformed ({type(e).__name__}: {e})") from None
    if not all(isinstance(state.get(k, {}), dict) for k in ("position", "scheduler", "objective")):
        raise _Damaged(
            path, f"{STATE} is malformed (position, scheduler and objective must be objects)"
        )
    return {
        "weights": weights,
        "optimizer": opt_state,
        "scheduler": state["scheduler"],
        "rng": rng,
        "rank_rngs": rank_rngs,
        "position": state["position"],
        "objective": state.get("objective"),
        "method": _prefixed(tensors, METHOD),
    }


def _check_file(path: Path, name: str) -> None:
    if not (path / name).is_file():
        if name == STATE and (path / "state.pt").is_file():
            raise _Damaged(
                path,
                "it was written by an older version (state.pt, a pickle), which is no longer read",
            )
        raise _Damaged(path, f"{name} is missing")
    if (path / name).stat().st_size == 0:
        raise _Damaged(path, f"{name} is empty (0 bytes)")


def _read_json(path: Path) -> dict:
    try:
        state = json.loads((path / STATE).read_text())
    except OSError as e:
        raise _Damaged(path, f"{STATE} cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise _Damaged(
            path, f"{STATE} is not valid JSON ({e}); it was probably cut short"
        ) from None
    if not isinstance(state, dict):
        raise _Damaged(path, f"{STATE} holds a {type(state).__name__}, not an object")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise _Damaged(path, f"{STATE} lacks the key '{missing[0]}'")
    if state["format"] != FORMAT:
        raise _Damaged(
            path, f"{STATE} has format {state['format']!r}, this version reads {FORMAT!r}"
        )
    return state


def _read_tensors(path: Path, name: str) -> dict:
    try:
        return load_file(str(path / name))
    except (OSError, SafetensorError) as e:
        raise _Damaged(
            path, f"{name} cannot be read ({' '.join(str(e).split())}); it was probably cut short"
        ) from None


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}


def _apply(ckpt: dict, named_params: dict, optimizer, scheduler, rank: int = 0) -> dict:
    with torch.no_grad():
        for name, p in named_params.items():
            p.copy_(_laid_out_like(ckpt["weights"][name], p))
    live = [p for group in optimizer.param_groups for p in group["params"]]  # the state's order
    for index, entries in ckpt["optimizer"]["state"].items():
        like = live[index] if 0 <= index < len(live) else None  # load_state_dict judges the rest
        for key, value in entries.items():
            entries[key] = _laid_out_like(value, like)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    if 0 < rank <= len(ckpt["rank_rngs"]):
        set_rng_state(ckpt["rank_rngs"][rank - 1])
    elif rank > 0:  # more ranks than the run that wrote it: a seed of its own, still reproducible
        seed_everything(int(torch.randint(2**31, (1,))) + rank)
    return ckpt["position"]


def _laid_out_like(value, like):
    """`value` as the live `like` is laid out: under FSDP a whole tensor of `like`'s shape (read
    from an unsharded checkpoint) becomes this rank's shard; anything else stays as it is."""
    whole = isinstance(value, torch.Tensor) and not isinstance(value, DTensor)
    if not (isinstance(like, DTensor) and whole and value.shape == like.shape):
        return value
    # src_data_rank=None: every rank holds the whole tensor and keeps its part; no scatter.
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
