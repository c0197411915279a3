"""Supervised fine-tuning (instruction / chat / plain text) with any registered method."""

import logging
import math
from pathlib import Path

from ..config.schema import RunConfig
from ..data import load_splits
from ..data.packing import batching
from ..evaluation import mean_loss
from ..methods import get_method
from ..methods.io import save_adapter
from ..training import sft_objective, train
from ..training.plots import plot_loss_curve
from .common import build_model, generation_scores, training_summary, write_outputs
from .forgetting import (
    ForgettingMeter,
    general_for_fisher,
    mix_replay,
    uses_weights_before_training,
    with_remedies,
)
from .preference_common import start_run

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method on cfg.data, then evaluate; returns the final metrics.

    Writes to cfg.output.dir: the adapter (PEFT layout), config.yaml, metrics.jsonl/json,
    samples.jsonl, loss_curve.png, checkpoints/last and best/ (adapter at the best eval loss).
    """
    start_run(cfg)
    model, tokenizer = build_model(cfg, meta_init=not uses_weights_before_training(cfg))
    splits = load_splits(cfg.data, tokenizer, cfg.train.seed)
    splits.train = mix_replay(splits.train, cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    objective = sft_objective(
        pad, **batching(cfg.data, splits.train, pad, get_method(cfg.method.name).is_prompt_based)
    )
    return train_language_model(cfg, model, tokenizer, splits, objective, progress)


def train_language_model(cfg, model, tokenizer, splits, objective, progress, extra=None) -> dict:
    """What SFT and distillation share: the forgetting remedies and measurement around the loop,
    the saved adapter, and metrics.json with the held-out loss, perplexity and generation scores
    (plus `extra`, e.g. the teacher's cache size)."""
    out = Path(cfg.output.dir)
    pad = tokenizer.pad_token_id
    meter = ForgettingMeter(cfg, tokenizer)
    meter.measure_before(model)
    objective = with_remedies(
        cfg, model, tokenizer, objective, general_for_fisher(cfg, tokenizer, meter)
    )
    evaluate = (
        (lambda: {"eval_loss": mean_loss(model, splits.eval, pad, cfg.eval.batch_size)})
        if splits.eval
        else None
    )
    result = train(
        model,
        splits.train,
        cfg.train,
        out,
        objective,
        evaluate=evaluate,
        on_best=lambda: save_adapter(model, out / "best", base_model=cfg.model.name),
        progress=progress,
    )
    save_adapter(model, out, base_model=cfg.model.name)
    plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    metrics = {**training_summary(result, model), **(extra or {})}
    held_out = splits.test or splits.eval
    if held_out:
        loss = mean_loss(model, held_out, pad, cfg.eval.batch_size)
        metrics.update(test_loss=loss, test_perplexity=math.exp(min(loss, 50)))
    metrics.update(meter.metrics_after(model))
    scores, samples = generation_scores(model, tokenizer, held_out, cfg)
    metrics.update(scores)
    write_outputs(out, cfg, metrics, samples)
    log.info("adapter saved to %s", out)
    return metrics
