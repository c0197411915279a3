"""Preference tuning (task.type=dpo): the policy is the model with cfg.method applied, the
reference is the same model with its adapter disabled (never a second copy).

With dpo.precompute_reference (default) the reference log-probs of every pair are computed once
before training, cached in output.dir (keyed by the model and the token ids, so a resumed or
repeated run reuses them) and read from the batch; a step then runs one forward pass over the
concatenated chosen + rejected rows.
"""

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.schema import RunConfig
from ..data.preference import collate_pairs
from ..methods import disabled_adapters
from ..objectives.logps import sequence_logps
from ..objectives.preference import dpo_loss, orpo_loss, preference_metrics, simpo_loss
from ..training import Objective
from ..utils.files import atomic_path
from ..utils.hardware import autocast
from .common import build_model
from .preference_common import (
    collate_with_reference,
    evaluate_adapter_run,
    held_out_means,
    load_preference_splits,
    start_run,
    train_and_report,
)

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference_logps.safetensors"


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method with cfg.dpo.loss on preference pairs; returns the final metrics.

    Writes to output.dir what an SFT run writes (adapter, best/, checkpoints/last, metrics, curves)
    plus the reference log-prob cache; metrics.json holds the held-out split's rewards/accuracies,
    rewards/margins, rewards/chosen, rewards/rejected and logps.
    """
    out = start_run(cfg)
    model, tokenizer = build_model(cfg)
    splits = load_preference_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    if cfg.dpo.uses_reference and cfg.dpo.precompute_reference:
        pairs = [*splits.train, *splits.eval, *splits.test]
        attach_reference(model, pairs, cfg, pad, out / REFERENCE_FILE)
    objective = Objective(
        partial(collate_with_reference, pad_id=pad), partial(pair_loss, cfg=cfg), splittable=True
    )
    return train_and_report(
        cfg,
        model,
        splits,
        objective,
        held_out=lambda part: held_out_metrics(model, part, cfg, pad),
        progress=progress,
    )


def evaluate(cfg: RunConfig, split: str = "test", adapter=None) -> dict:
    """Preference metrics of the adapter in output.dir (or `adapter`) on `split` of cfg.data."""
    return evaluate_adapter_run(
        cfg,
        split,
        adapter,
        load_preference_splits,
        lambda model, pairs, tok: held_out_metrics(model, pairs, cfg, tok.pad_token_id),
    )


def pair_loss(model, batch: dict, cfg: RunConfig):
    """(mean loss over the pairs, number of pairs, TRL-named metrics) of a concatenated batch:
    rows 0..B-1 chosen, B..2B-1 rejected."""
    policy, counts = sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    reference = batch.get("reference_logps")
    if reference is None and cfg.dpo.uses_reference:
        reference = _reference_logps(model, batch)
    losses, chosen_rewards, rejected_rewards = preference_loss(policy, counts, reference, cfg.dpo)
    n = losses.shape[0]
    return (
        losses.mean(),
        n,
        preference_metrics(chosen_rewards, rejected_rewards, policy[:n], policy[n:]),
    )


def preference_loss(policy, counts, reference, dpo_cfg):
    """(losses (B,), chosen rewards, rejected rewards) of dpo.loss from the concatenated batch's
    summed response log-probs `policy` (2B,), their token counts and the reference's (2B,) or None."""
    n = policy.shape[0] // 2
    if dpo_cfg.loss in ("orpo", "simpo"):
        average = policy / counts.clamp(min=1)  # both score the mean log-prob per response token
        if dpo_cfg.loss == "simpo":
            return simpo_loss(
                average[:n], average[n:], dpo_cfg.beta, dpo_cfg.gamma, dpo_cfg.label_smoothing
            )
        return orpo_loss(average[:n], average[n:], nll=-average[:n], lam=dpo_cfg.orpo_lambda)
    return dpo_loss(
        policy[:n],
        policy[n:],
        reference[:n],
        reference[n:],
        dpo_cfg.loss,
        dpo_cfg.beta,
        dpo_cfg.label_smoothing,
        counts[:n],
        counts[n:],
    )


def held_out_metrics(model, pairs: list, cfg: RunConfig, pad_id: int) -> dict:
    """Mean loss and TRL-named metrics over `pairs`."""
    collate = partial(collate_with_reference, pad_id=pad_id)
    return held_out_means(model, pairs, cfg, collate, pair_loss)


def attach_reference(model, pairs: list, cfg: RunConfig, pad_id: int, cache: Path) -> None:
    """Give every pair its reference log-probs (chosen, rejected), from `cache` when it was made
    for the same model and tokens, else computed now with the adapter disabled and cached."""
    key = _reference_key(pairs, cfg)
    values = _read_reference_cache(cache, key, len(pairs))
    if values is None:
        values = _score_reference(model, pairs, cfg, pad_id)
        with atomic_path(cache) as tmp:
            save_file({"logps": values}, str(tmp), metadata={"key": key})
        log.info("reference log-probs of %d pairs cached in %s", len(pairs), cache)
    for pair, row in zip(pairs, values):
        pair["reference_logps"] = (float(row[0]), float(row[1]))


@torch.no_grad()
def _score_reference(model, pairs: list, cfg: RunConfig, pad_id: int) -> torch.Tensor:
    model.eval()
    rows = []
    batch_size = max(1, cfg.eval.batch_size // 2)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate_pairs(chunk, pad_id)
        with autocast(cfg.train.precision):
            logps = _reference_logps(model, batch)  # (2b,)
        rows.append(torch.stack([logps[: len(chunk)], logps[len(chunk) :]], 1))
    return torch.cat(rows).float()  # (N, 2)


def _reference_logps(model, batch: dict) -> torch.Tensor:
    with torch.no_grad(), disabled_adapters(model):
        return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[
            0
        ]


def _reference_key(pairs: list, cfg: RunConfig) -> str:
    digest = hashlib.sha256(
        json.dumps(
            [
                cfg.model.name,
                cfg.model.dtype,
                cfg.model.quantize,
                cfg.train.precision,
                cfg.model.quant_block_size,
            ]
        ).encode()
    )
    for pair in pairs:
        digest.update(
            json.dumps(
                [
                    pair["chosen_input_ids"],
                    pair["rejected_input_ids"],
                    pair["chosen_labels"],
                    pair["rejected_labels"],
                ]
            ).encode()
        )
    return digest.hexdigest()


def _read_reference_cache(cache: Path, key: str, n: int):
    if not cache.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                log.info(
                    "%s was made for other data or another model; scoring the reference again",
                    cache,
                )
                return None
        values = load_file(str(cache))["logps"]
    except (SafetensorError, OSError, KeyError) as e:
        log.warning("%s is unreadable (%s); scoring the reference again", cache, e)
        return None
    return values if values.shape == (n, 2) else None
