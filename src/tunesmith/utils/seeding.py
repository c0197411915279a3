"""Seeding and RNG state capture, so a resumed run draws the same random numbers.

rng_state() returns the live state objects; split_rng_state / join_rng_state turn them into plain
JSON values plus tensors and back, so checkpoints can store them without pickle.
"""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # dropout on the GPU draws from these
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def split_rng_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able dict, tensors named "rng.*") of a rng_state() result."""
    version, internal, gauss = state["python"]  # (3, 625 ints, None or float)
    kind, keys, pos, has_gauss, cached = state[
        "numpy"
    ]  # ('MT19937', uint32 (624,), int, int, float)
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "cuda_devices": len(state.get("cuda", [])),
    }
    # int64 holds every uint32 exactly (safetensors has no uint32 on older torch).
    tensors = {
        "rng.torch": state["torch"],
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    for i, t in enumerate(state.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = t
    return plain, tensors


def join_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """Inverse of split_rng_state. Raises KeyError/TypeError/ValueError on a malformed input."""
    version, internal, gauss = plain["python"]
    numpy = plain["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    return {
        "python": (int(version), tuple(int(x) for x in internal), gauss),
        "numpy": (
            str(numpy["kind"]),
            keys,
            int(numpy["pos"]),
            int(numpy["has_gauss"]),
            float(numpy["cached_gaussian"]),
        ),
        "torch": tensors["rng.torch"],
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(int(plain.get("cuda_devices", 0)))],
    }
