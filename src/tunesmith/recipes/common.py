"""Pieces every recipe shares: build the model with its method, evaluate generations, save outputs."""

import contextlib
import json
import logging
from pathlib import Path

from ..config.loader import save_config
from ..config.schema import RunConfig
from ..evaluation import generate
from ..evaluation.metrics import check_available, generation_metrics
from ..methods import apply_method, get_method
from ..models.frozen_weights import weights_for_training
from ..models.loading import load_configured_model
from ..models.meta_init import real_new_parameters
from ..training.distributed import shards_parameters
from ..utils.distributed import is_main_process
from ..utils.files import atomic_write_text
from ..utils.memory import peak_rss_mb
from ..utils.modules import count_parameters
from ..utils.paths import ensure_output_dir

log = logging.getLogger(__name__)


def build_model(cfg: RunConfig, meta_init: bool = False):
    """(model with cfg.method applied, tokenizer).

    meta_init: under FSDP, and for a method that applies to a meta model (its spec's
    applies_on_meta), build the base on the meta device so that each rank reads only its shards
    when training shards the model (no rank holds the whole model). Only for a recipe that uses
    the model first in train(): until then its base weights have no values.
    """
    on_meta = meta_init and _applies_on_meta(cfg)
    model, tokenizer = load_configured_model(cfg.model, on_meta=on_meta)
    # On a meta base the method's own new parameters are made on the CPU, to get their values.
    with real_new_parameters() if on_meta else contextlib.nullcontext():
        apply_method(model, cfg.method)
    weights_for_training(model, cfg.model.dtype, cfg.train.precision)
    log_parameters(model, f"method {cfg.method.name}")
    return model, tokenizer


def _applies_on_meta(cfg: RunConfig) -> bool:
    # Under FSDP, and for a method whose application needs no base weight values.
    applies = get_method(cfg.method.name).applies_on_meta
    return shards_parameters(cfg.train) and applies is not None and applies(cfg.method)


def log_parameters(model, what: str) -> tuple[int, int]:
    trainable, total = count_parameters(model)
    log.info(
        "%s: trainable params %s of %s (%.3f%%)",
        what,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return trainable, total


def training_summary(result, model) -> dict:
    """What metrics.json reports of a finished training run. train_loss is the mean of the last
    logging window (train.log_every steps, also named train_loss_last_window); one step's loss alone
    is noisy and is kept as train_loss_last_step. Then the methods' reports (e.g. sparsity)."""
    trainable, total = count_parameters(model)
    return {
        "train_loss": result.final_loss,
        "train_loss_last_window": result.final_loss,
        "train_loss_last_step": result.last_step_loss,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **result.method_metrics,
    }


def generation_scores(model, tokenizer, examples: list, cfg: RunConfig) -> tuple[dict, list[dict]]:
    """The eval.metrics (exact match, contains, ROUGE, BLEU, chrF) of generations on examples that
    have a reference answer."""
    examples = [e for e in examples if e.prompt_messages][: cfg.eval.limit]
    check_available(cfg.eval.metrics)  # before minutes of generation
    if not examples:
        return {}, []
    preds = generate(
        model,
        tokenizer,
        [e.prompt_messages for e in examples],
        cfg.eval.max_new_tokens,
        cfg.eval.do_sample,
        cfg.eval.temperature,
        cfg.eval.top_p,
        cfg.eval.batch_size,
    )
    refs = [e.reference for e in examples]
    samples = [
        {"prompt": e.prompt_messages[-1]["content"], "reference": r, "prediction": p}
        for e, r, p in zip(examples, refs, preds)
    ]
    scores = {**generation_metrics(cfg.eval.metrics, preds, refs), "n": len(refs)}
    return scores, samples


def write_outputs(out_dir: Path, cfg: RunConfig, metrics: dict, samples: list[dict]) -> None:
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    ensure_output_dir(out_dir, "output.dir")
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
