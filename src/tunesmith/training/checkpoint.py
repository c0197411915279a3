"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop position.

Written to a temp directory and swapped in with a rename, so a crash mid-write leaves the
previous checkpoint intact.
"""
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..utils.files import replace_dir
from ..utils.seeding import rng_state, set_rng_state

WEIGHTS, STATE = "trainable.safetensors", "state.pt"


def save_checkpoint(path: Path, named_params: dict, optimizer, scheduler, position: dict, rng=None) -> None:
    """rng: the RNG state to restore on resume (default: the current one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    save_file({k: v.detach().contiguous() for k, v in named_params.items()}, str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng or rng_state(), "position": position}, tmp / STATE)
    replace_dir(tmp, path)


def load_checkpoint(path: Path, named_params: dict, optimizer, scheduler) -> dict:
    """Restore everything saved by save_checkpoint; returns the loop position."""
    try:
        weights = load_file(str(path / WEIGHTS))
        state = torch.load(path / STATE, weights_only=False)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}; delete it to start over") from None
    missing = sorted(set(named_params) - set(weights))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing[0]}: it belongs to a different model or method; "
                              f"use another output.dir or train.resume=false")
    extra = sorted(set(weights) - set(named_params))
    if extra:
        raise CheckpointError(f"checkpoint {path} holds {extra[0]}, which this run does not train: it belongs to a "
                              f"different model or method; use another output.dir or train.resume=false")
    with torch.no_grad():
        for name, p in named_params.items():
            if weights[name].shape != p.shape:
                raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(weights[name].shape)}, "
                                      f"expected {tuple(p.shape)}; use another output.dir or train.resume=false")
            p.copy_(weights[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["position"]


def find_checkpoint(out_dir: Path) -> Optional[Path]:
    last = out_dir / "checkpoints" / "last"
    return last if (last / STATE).is_file() else None
