"""Reading checkpoints written by checkpoint.py: every file read and checked before anything is
restored, with the fall-back from a damaged last/ to previous/ (the format: checkpoint.py)."""

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import CheckpointError, TunesmithError
from ..utils.seeding import join_rng_state, seed_everything, set_rng_state
from .checkpoint_checks import (
    _KEYS,
    FORMAT,
    LAST,
    METHOD,
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
from .checkpoint_shards import SHARDS, check_shards, read_shards, stand_ins

log = logging.getLogger(__name__)


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
