"""Supervised fine-tuning (instruction / chat / plain text) with any registered method."""

import logging
import math

from ..config.loader import save_config
from ..config.schema import RunConfig
from ..data import load_splits
from ..data.packing import batching
from ..evaluation import mean_loss
from ..methods import get_method
from ..methods.io import save_adapter
from ..training import sft_objective, train
from ..training.plots import plot_loss_curve
from ..utils.paths import ensure_output_dir
from ..utils.seeding import seed_everything
from .common import build_model, generation_scores, training_summary, write_outputs

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method on cfg.data, then evaluate; returns the final metrics.

    Writes to cfg.output.dir: the adapter (PEFT layout), config.yaml, metrics.jsonl/json,
    samples.jsonl, loss_curve.png, checkpoints/last and best/ (adapter at the best eval loss).
    """
    seed_everything(cfg.train.seed)
    out = ensure_output_dir(cfg.output.dir, "output.dir")
    save_config(cfg, out / "config.yaml")
    model, tokenizer = build_model(cfg)
    splits = load_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    evaluate = (
        (lambda: {"eval_loss": mean_loss(model, splits.eval, pad, cfg.eval.batch_size)})
        if splits.eval
        else None
    )
    objective = sft_objective(
        pad, **batching(cfg.data, splits.train, pad, get_method(cfg.method.name).is_prompt_based)
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
    metrics = training_summary(result, model)
    held_out = splits.test or splits.eval
    if held_out:
        loss = mean_loss(model, held_out, pad, cfg.eval.batch_size)
        metrics.update(test_loss=loss, test_perplexity=math.exp(min(loss, 50)))
    scores, samples = generation_scores(model, tokenizer, held_out, cfg)
    metrics.update(scores)
    write_outputs(out, cfg, metrics, samples)
    log.info("adapter saved to %s", out)
    return metrics
