"""What a checkpoint load checks before it touches the model or the optimizer: the files'
manifest, the weights against this run's trained parameters, the optimizer against this run's;
and the optimizer state_dict rebuilt from the stored tensors. Also the format's names."""

from pathlib import Path

from ..errors import CheckpointError

FORMAT = "tunesmith-checkpoint/1"
WEIGHTS, TENSORS, STATE = "trainable.safetensors", "state.safetensors", "state.json"
FILES = (WEIGHTS, TENSORS, STATE)  # of an unsharded checkpoint; under FSDP shards/ replaces WEIGHTS
LAST, PREVIOUS = "last", "previous"
OPTIMIZER = "optimizer.state."  # key prefix of the optimizer state's tensors
METHOD = "method."  # prefix in state.safetensors of the methods' own state (e.g. AdaLoRA's)
_KEYS = ("format", "position", "optimizer", "scheduler", "rng", "tensors")


class _Damaged(CheckpointError):
    """The checkpoint's files are missing, truncated or inconsistent (not: it fits another model)."""

    def __init__(self, path: Path, what: str):
        super().__init__(
            f"checkpoint {path} is unusable: {what}; delete {path} or set train.resume=false"
        )
        self.path, self.what = path, what


def _check_manifest(path: Path, manifest, tensors: dict) -> None:
    if not isinstance(manifest, dict):
        raise _Damaged(path, f"{STATE}: 'tensors' must be an object")
    missing, extra = sorted(set(manifest) - set(tensors)), sorted(set(tensors) - set(manifest))
    if missing:
        raise _Damaged(path, f"{TENSORS} lacks {missing[0]}, which {STATE} lists")
    if extra:
        raise _Damaged(path, f"{TENSORS} holds {extra[0]}, which {STATE} does not list")
    for key, t in tensors.items():
        want = manifest[key]
        if not isinstance(want, dict) or [str(t.dtype), list(t.shape)] != [
            want.get("dtype"),
            want.get("shape"),
        ]:
            raise _Damaged(
                path, f"{TENSORS}: {key} is {t.dtype} {list(t.shape)}, {STATE} says {want}"
            )


def _check_weights(path: Path, weights: dict, named_params: dict) -> None:
    missing = sorted(set(named_params) - set(weights))
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing[0]}: it belongs to a different model or method; "
            f"use another output.dir or train.resume=false"
        )
    extra = sorted(set(weights) - set(named_params))
    if extra:
        raise CheckpointError(
            f"checkpoint {path} holds {extra[0]}, which this run does not train: it belongs to a "
            f"different model or method; use another output.dir or train.resume=false"
        )
    for name, p in named_params.items():
        w = weights[name]
        if w.shape != p.shape or w.dtype != p.dtype:
            raise CheckpointError(
                f"checkpoint {path}: {name} is {w.dtype} {tuple(w.shape)}, this run has {p.dtype} "
                f"{tuple(p.shape)}; use another output.dir or train.resume=false"
            )


def _check_optimizer(path: Path, saved, optimizer) -> None:
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("param_groups"), list)
        or not isinstance(saved.get("state"), dict)
    ):
        raise _Damaged(path, f"{STATE}: 'optimizer' must hold 'state' and 'param_groups'")
    if saved.get("class") != type(optimizer).__name__:
        raise CheckpointError(
            f"checkpoint {path} was written with optimizer {saved.get('class')}, this run uses "
            f"{type(optimizer).__name__}; set train.optimizer back, use another output.dir or "
            f"train.resume=false"
        )
    sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in saved["param_groups"]]
    live = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != live:
        raise CheckpointError(
            f"checkpoint {path} has optimizer groups of {sizes} parameters, this run {live}: it "
            f"belongs to a different model or method; use another output.dir or train.resume=false"
        )


def _rebuild_optimizer(saved: dict, tensors: dict, optimizer) -> dict:
    """The optimizer.state_dict() that was saved: tensors put back into their per-parameter entries."""
    per_param = {}
    for index, entry in saved["state"].items():
        values = dict(entry["values"])
        for name in entry["tensors"]:
            values[name] = tensors[f"{OPTIMIZER}{index}.{name}"]
        per_param[int(index)] = values
    # JSON turned tuples (betas) into lists; give back the types the live groups use.
    groups = [
        {
            k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v
            for k, v in g.items()
        }
        for g, live in zip(saved["param_groups"], optimizer.param_groups)
    ]
    return {"state": per_param, "param_groups": groups}
