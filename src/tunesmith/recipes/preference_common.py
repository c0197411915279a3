"""What the preference tasks (reward, dpo) share: the pairs of each split, encoded, and batches
that carry precomputed reference log-probs."""

import logging

import torch

from ..config.schema import DataConfig
from ..data import Splits
from ..data.preference import collate_pairs, encode_pairs, read_preference
from ..data.split import split_records
from ..errors import DataError
from ..utils.hardware import autocast

log = logging.getLogger(__name__)


def load_preference_splits(cfg: DataConfig, tokenizer, seed: int) -> Splits:
    """Encoded pairs (dicts, see data.preference.encode_pair) of data.train and data.eval / data.test,
    or of the seeded data.split of data.train. Raises DataError when data.train is missing."""
    if not cfg.train:
        raise DataError("data.train is not set: give a preference file (prompt, chosen, rejected)")
    train = read_preference(cfg.train, cfg.file_type, cfg.system_prompt)
    if cfg.limit:
        train = train[: cfg.limit]
    if cfg.eval is None and cfg.test is None:
        train, val, test = split_records(train, cfg.split, seed)
        log.info(
            "split %s into %d/%d/%d pairs (seed %d)",
            cfg.train,
            len(train),
            len(val),
            len(test),
            seed,
        )
    else:
        val = read_preference(cfg.eval, cfg.file_type, cfg.system_prompt) if cfg.eval else []
        test = read_preference(cfg.test, cfg.file_type, cfg.system_prompt) if cfg.test else []
    parts = []
    for name, pairs in (("train", train), ("eval", val), ("test", test)):
        encoded, stats = encode_pairs(pairs, tokenizer, cfg.max_length) if pairs else ([], None)
        log.info("data %s: %s", name, stats.describe() if stats else "none")
        parts.append(encoded)
    if not parts[0]:
        raise DataError(
            f"no training pairs left from {cfg.train}: lower the eval/test fractions of data.split"
        )
    return Splits(*parts)


def collate_with_reference(examples: list[dict], pad_id: int) -> dict:
    """collate_pairs, plus reference_logps (2B,) in the batch's row order when every pair has them."""
    batch = collate_pairs(examples, pad_id)
    if all("reference_logps" in e for e in examples):
        chosen = [e["reference_logps"][0] for e in examples]
        rejected = [e["reference_logps"][1] for e in examples]
        batch["reference_logps"] = torch.tensor(chosen + rejected, dtype=torch.float32)
    return batch


@torch.no_grad()
def held_out_means(model, pairs: list, cfg, collate_fn, loss_fn) -> dict:
    """Mean loss and metrics of loss_fn(model, batch, cfg) -> (loss, pairs, metrics) over `pairs`,
    in eval mode, weighted by the pairs of each batch."""
    model.eval()
    totals, n_total = {}, 0
    batch_size = max(1, cfg.eval.batch_size // 2)  # two rows per pair
    for start in range(0, len(pairs), batch_size):
        batch = collate_fn(pairs[start : start + batch_size])
        with autocast(cfg.train.precision):
            loss, n, metrics = loss_fn(model, batch, cfg)
        for key, value in {"loss": float(loss), **metrics}.items():
            totals[key] = totals.get(key, 0.0) + float(value) * n
        n_total += n
    return {key: value / max(n_total, 1) for key, value in totals.items()}
