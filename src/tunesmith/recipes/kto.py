"""KTO (task.type=kto): unpaired examples, each completion labelled desirable or not. The reference
is the model with its adapter disabled; its log-probs are computed in the same step (no grad),
since the KL estimate pairs each prompt with another example's completion of the same batch
(TRL's rotation), which changes with the epoch's order."""

import logging
from functools import partial
from pathlib import Path

import torch

from ..config.loader import save_config
from ..config.schema import RunConfig
from ..data.preference import collate_kto
from ..errors import CheckpointError, DataError
from ..methods import disabled_adapters
from ..methods.io import CONFIG_NAME, load_adapter, save_adapter
from ..models import load_base_model
from ..objectives.logps import sequence_logps
from ..objectives.preference import kto_loss, kto_metrics
from ..training import Objective, train
from ..training.plots import plot_loss_curve
from ..utils.paths import ensure_output_dir
from ..utils.seeding import seed_everything
from .common import build_model, training_summary, write_outputs
from .preference_common import held_out_means, load_kto_splits

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method with the KTO loss; metrics.json has the held-out split's kl,
    rewards/chosen and rewards/rejected (desirable / undesirable), logps and their margin."""
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    ensure_output_dir(out, "output.dir")
    save_config(cfg, out / "config.yaml")
    model, tokenizer = build_model(cfg)
    splits = load_kto_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    objective = Objective(partial(collate_kto, pad_id=pad), partial(kto_batch_loss, cfg=cfg))
    evaluate = (
        (lambda: {"eval_loss": held_out(model, splits.eval, cfg, pad)["loss"]})
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
        progress=progress,
        on_best=lambda: save_adapter(model, out / "best", base_model=cfg.model.name),
    )
    save_adapter(model, out, base_model=cfg.model.name)
    plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    metrics = training_summary(result, model)
    held = splits.test or splits.eval
    if held:
        metrics.update(split="test" if splits.test else "eval", **held_out(model, held, cfg, pad))
    write_outputs(out, cfg, metrics, [])
    return metrics


def evaluate(cfg: RunConfig, split: str = "test", adapter=None) -> dict:
    """KTO metrics of the adapter in output.dir (or `adapter`) on `split` of cfg.data."""
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    model, tokenizer = load_base_model(
        cfg.model.name, cfg.model.dtype, cfg.model.quantize, cfg.model.quant_block_size
    )
    adapter = adapter or (str(out) if (out / CONFIG_NAME).is_file() else None)
    if adapter is None:
        raise CheckpointError(
            f"{out} holds no adapter: train first (tunesmith train CONFIG.yaml) or give --adapter"
        )
    load_adapter(model, adapter)
    splits = load_kto_splits(cfg.data, tokenizer, cfg.train.seed)
    examples = {"test": splits.test, "eval": splits.eval, "train": splits.train}[split]
    if not examples:
        raise DataError(
            f"the {split} split is empty: set data.{split} or data.split fractions that leave one"
        )
    metrics = {
        "split": split,
        "adapter": adapter,
        **held_out(model, examples, cfg, tokenizer.pad_token_id),
    }
    write_outputs(out, cfg, metrics, [])
    return metrics


def kto_batch_loss(model, batch: dict, cfg: RunConfig):
    """(mean KTO loss, examples, TRL-named metrics) of a collate_kto batch."""
    policy = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
    kl_rows = (batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"])
    with torch.no_grad():
        policy_kl = sequence_logps(model, *kl_rows)[0]  # TRL takes the KL estimate without gradient
        with disabled_adapters(model):
            reference = sequence_logps(
                model, batch["input_ids"], batch["attention_mask"], batch["labels"]
            )[0]
            reference_kl = sequence_logps(model, *kl_rows)[0]
    desirable = batch["desirable"]
    k = cfg.kto
    losses, chosen, rejected, kl = kto_loss(
        policy,
        reference,
        desirable,
        policy_kl,
        reference_kl,
        k.beta,
        k.desirable_weight,
        k.undesirable_weight,
    )
    metrics = kto_metrics(chosen, rejected, policy[desirable], policy[~desirable], kl)
    return losses.mean(), losses.shape[0], metrics


def held_out(model, examples: list, cfg: RunConfig, pad_id: int) -> dict:
    # Two rows per example (completion + mismatched KL row), as for pairs.
    return held_out_means(model, examples, cfg, partial(collate_kto, pad_id=pad_id), kto_batch_loss)
