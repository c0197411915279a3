"""Evaluate a base model plus (optionally) a trained adapter on a config's held-out data."""

import json
import logging
import math
from pathlib import Path
from typing import Optional

from ..config.schema import RunConfig
from ..data import load_splits
from ..evaluation import mean_loss
from ..methods.io import CONFIG_NAME, load_adapter
from ..models.frozen_weights import weights_for_evaluation
from ..models.loading import load_configured_model
from ..utils.files import atomic_write_text
from ..utils.paths import ensure_output_dir
from ..utils.seeding import seed_everything
from .common import generation_scores
from .forgetting import general_perplexity, read_general_text

log = logging.getLogger(__name__)


def run(
    cfg: RunConfig, adapter: Optional[str] = None, split: str = "test", base_only: bool = False
) -> dict:
    """Metrics (loss, perplexity, exact match, contains) on `split`; written to output.dir/metrics.json.

    The adapter defaults to the one in output.dir when it holds one; with base_only (or when there
    is none) the base model is scored.
    """
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    model, tokenizer = load_configured_model(cfg.model)
    weights_for_evaluation(model, cfg.model.dtype, cfg.train.precision)
    if base_only:
        adapter = None
    elif adapter is None and (out / CONFIG_NAME).is_file():
        adapter = str(out)
    if adapter:
        load_adapter(model, adapter)
    splits = load_splits(cfg.data, tokenizer, cfg.train.seed)
    examples = {"test": splits.test, "eval": splits.eval, "train": splits.train}[
        split
    ] or splits.eval
    loss = mean_loss(model, examples, tokenizer.pad_token_id, cfg.eval.batch_size)
    metrics = {
        "split": split,
        "adapter": adapter,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
    }
    scores, samples = generation_scores(model, tokenizer, examples, cfg)
    metrics.update(scores)
    if cfg.eval.general_data:  # the forgetting baseline (with --base) or the state after training
        general = read_general_text(
            cfg.eval.general_data, tokenizer, cfg.eval.general_limit, cfg.eval.general_max_length
        )
        metrics["general_perplexity"] = general_perplexity(
            model, general, tokenizer.pad_token_id, cfg.eval.batch_size
        )
    ensure_output_dir(out, "output.dir")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return {**metrics, "samples": samples}
