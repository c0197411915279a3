"""KTO (task.type=kto): unpaired examples, each completion labelled desirable or not. The reference
is the model with its adapter disabled; its log-probs are computed in the same step (no grad),
since the KL estimate pairs each prompt with another example's completion of the same batch
(TRL's rotation), which changes with the epoch's order."""

import logging
from functools import partial

import torch

from ..config.schema import RunConfig
from ..data.preference import collate_kto
from ..methods import disabled_adapters
from ..objectives.logps import sequence_logps
from ..objectives.preference import kto_loss, kto_metrics
from ..training import Objective
from .common import build_model
from .preference_common import (
    evaluate_adapter_run,
    held_out_means,
    load_kto_splits,
    start_run,
    train_and_report,
)

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method with the KTO loss; metrics.json has the held-out split's kl,
    rewards/chosen and rewards/rejected (desirable / undesirable), logps and their margin."""
    start_run(cfg)
    model, tokenizer = build_model(cfg, meta_init=True)
    splits = load_kto_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    objective = Objective(partial(collate_kto, pad_id=pad), partial(kto_batch_loss, cfg=cfg))
    return train_and_report(
        cfg,
        model,
        splits,
        objective,
        held_out=lambda part: held_out(model, part, cfg, pad),
        progress=progress,
    )


def evaluate(cfg: RunConfig, split: str = "test", adapter=None) -> dict:
    """KTO metrics of the adapter in output.dir (or `adapter`) on `split` of cfg.data."""
    return evaluate_adapter_run(
        cfg,
        split,
        adapter,
        load_kto_splits,
        lambda model, examples, tok: held_out(model, examples, cfg, tok.pad_token_id),
    )


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
