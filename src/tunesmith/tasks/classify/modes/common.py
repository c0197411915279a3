"""Pieces the classification modes share: what trains, saving/loading the trained tensors, padding
token batches, the input text of an example, and running the training loop with a classification
objective."""

import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ....config.schema import RunConfig
from ....errors import CheckpointError, ConfigError
from ....methods import apply_method
from ....models.prefix_cache import FINAL_NORMS
from ....objectives.classification import weighted_cross_entropy
from ....training import Objective, train
from ....training.held_out import rows_over_ranks
from ....utils.files import atomic_path
from ....utils.hardware import autocast as precision_autocast
from ....utils.modules import freeze, transformer_blocks

log = logging.getLogger(__name__)
STATE_FILE = "classifier.safetensors"
TOP_BLOCKS = {"head": 0, "none": 0, "last_block": 1, "last_two_blocks": 2}


def set_trainable(lm: nn.Module, cfg: RunConfig, use_lm_head: bool) -> None:
    """Make what cfg.task.trainable names trainable in lm (everything else frozen).

    last_block / last_two_blocks / last_blocks (task.last_blocks): those blocks + the final norm
    (not the LM head, often tied to the input embeddings); all: the backbone (+ the LM head when use_lm_head); method: cfg.method
    applied through the registry; head / none: nothing in lm. A classification head is the caller's.
    """
    choice = cfg.task.trainable
    if choice == "method":
        apply_method(lm, cfg.method)
        return
    freeze(lm)
    backbone = lm.base_model
    modules = [backbone] if choice == "all" else []
    top = cfg.task.last_blocks if choice == "last_blocks" else TOP_BLOCKS.get(choice)
    if top:
        blocks = transformer_blocks(backbone)
        modules += list(blocks)[-top:]
        modules += [
            getattr(backbone, n)
            for n in FINAL_NORMS
            if isinstance(getattr(backbone, n, None), nn.Module)
        ]
    if use_lm_head and choice == "all" and lm.get_output_embeddings() is not None:
        modules.append(lm.get_output_embeddings())
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


def save_trained(model: nn.Module, out_dir: Path) -> Path:
    """The trainable tensors of model (by parameter name) to out_dir/classifier.safetensors."""
    tensors = {
        n: p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    path = Path(out_dir) / STATE_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path


def load_trained(model: nn.Module, out_dir: Path) -> None:
    """Copy out_dir/classifier.safetensors into model (built the way it was trained).

    Raises CheckpointError when the file is missing or does not fit the model.
    """
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: train first (tunesmith train CONFIG.yaml) or point output.dir at a "
            f"classification run"
        )
    saved, params = load_file(str(path)), dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            if name not in params or params[name].shape != tensor.shape:
                raise CheckpointError(
                    f"{path}: {name} {tuple(tensor.shape)} does not fit this model; was it trained "
                    f"with another model.name, task.trainable or method?"
                )
            params[name].copy_(tensor)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), right-padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_hidden(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cached hidden states [(T_i, H)] -> (B, T, H), zero-padded."""
    out = states[0].new_zeros(len(states), max(s.shape[0] for s in states), states[0].shape[-1])
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (less padding); callers put results back in order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cache_hidden(prefix, items: list, cfg: RunConfig, pad_id: int, batch_size: int = 32) -> None:
    """Set item.hidden (T, H) = prefix.capture(item.input_ids) for each item (objects with input_ids)."""
    for idx in length_batches([len(e.input_ids) for e in items], batch_size):
        ids, mask = pad_batch([items[i].input_ids for i in idx], pad_id)
        with autocast(cfg):
            # (B, T, H) in the dtype the full forward pass hands to the trained blocks
            hidden = prefix.capture(ids, mask)
        for row, i in enumerate(idx):
            items[i].hidden = hidden[row, : len(items[i].input_ids)].clone()


def texts_of(examples: list) -> list[str]:
    """Input texts, a text pair joined to its text by a newline."""
    return [e.text if e.pair is None else f"{e.text}\n{e.pair}" for e in examples]


def autocast(cfg: RunConfig):
    return precision_autocast(cfg.train.precision)


def fit(
    model: nn.Module,
    examples: list,
    cfg: RunConfig,
    out: Path,
    loss_fn: Callable,
    collate_fn: Callable,
    evaluate: Optional[Callable] = None,
    progress: bool = False,
    lengths: Optional[list] = None,
    lr_scale: Optional[Callable[[str], float]] = None,
    labels: Optional[list] = None,
) -> dict:
    """Run the training loop with a classification objective; returns steps and seconds.
    lengths (tokens per example) groups batches by length when data.group_by_length is set,
    with each batch's classes mixed as in the data when `labels` (one per example) are given;
    lr_scale(parameter name) -> multiplier of train.lr (Objective.lr_scale)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"task.trainable={cfg.task.trainable} leaves nothing to train in task.mode={cfg.task.mode}; "
            f"choose head, last_block, last_two_blocks, all or method"
        )
    start = time.perf_counter()
    objective = Objective(
        collate_fn,
        loss_fn,
        lengths if cfg.data.group_by_length else None,
        splittable=True,
        lr_scale=lr_scale,
        strata=labels,
        uses_starting_weights=False,
    )
    result = train(model, examples, cfg.train, out, objective, evaluate=evaluate, progress=progress)
    return {
        "steps": result.steps,
        "epochs": cfg.train.epochs,
        "final_loss": result.final_loss,
        **_selection(result),
        "last_step_loss": result.last_step_loss,
        **result.method_metrics,
        "loop_seconds": round(result.seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def _selection(result) -> dict:
    """What best-model selection (train.keep_best, early stopping) chose, for metrics.json."""
    if result.best_step is None:
        return {}
    return {
        "best_step": result.best_step,
        "best_value": result.best_value,
        "stopped_early": result.stopped_early,
    }


def validation(predictor, splits, cfg: RunConfig, weight=None) -> Optional[Callable[[], dict]]:
    """evaluate() -> {eval_loss, eval_accuracy} of predictor on the validation split, for the loop;
    None unless training evaluates as it goes (train.eval_every, keep_best, early stopping): run()
    scores the validation split after training anyway."""
    t = cfg.train
    if not (splits.eval and (t.eval_every or t.keep_best or t.early_stopping_patience)):
        return None
    examples = splits.eval
    y = torch.tensor([predictor.labels.index(e.label) for e in examples])

    def evaluate() -> dict:
        # each rank predicts its share; every rank scores all N rows, as one process would
        probs = torch.from_numpy(rows_over_ranks(predictor.predict_proba, examples))  # (N, K)
        loss, _ = weighted_cross_entropy(torch.log(probs.clamp_min(1e-12)), y, weight)
        return {
            "eval_loss": loss.item(),
            "eval_accuracy": float((probs.argmax(1) == y).float().mean()),
        }

    return evaluate
