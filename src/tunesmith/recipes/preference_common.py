"""What the preference tasks (reward, dpo) share: the pairs of each split, encoded, and batches
that carry precomputed reference log-probs."""

import logging

import torch

from ..config.schema import DataConfig
from ..data import Splits
from ..data.preference import collate_pairs, encode_kto, encode_pairs, read_kto, read_preference
from ..data.split import split_records
from ..errors import DataError
from ..training.objective import WeightedMeans
from ..utils.hardware import autocast

log = logging.getLogger(__name__)


def load_preference_splits(cfg: DataConfig, tokenizer, seed: int) -> Splits:
    """Encoded pairs (dicts, see data.preference.encode_pair) of data.train and data.eval / data.test,
    or of the seeded data.split of data.train. Raises DataError when data.train is missing."""
    return _load_splits(
        cfg, seed, read_preference, lambda part: encode_pairs(part, tokenizer, cfg.max_length)
    )


def load_kto_splits(cfg: DataConfig, tokenizer, seed: int) -> Splits:
    """Encoded unpaired examples (prompt, completion, desirable) of each split, as for pairs."""

    def encode(part):
        return [encode_kto(e, tokenizer, cfg.max_length) for e in part], None

    return _load_splits(cfg, seed, read_kto, encode)


def _load_splits(cfg: DataConfig, seed: int, read, encode) -> Splits:
    if not cfg.train:
        raise DataError("data.train is not set: give a preference file (see docs/alignment.md)")
    train = read(cfg.train, cfg.file_type, cfg.system_prompt)
    if cfg.limit:
        train = train[: cfg.limit]
    if cfg.eval is None and cfg.test is None:
        train, val, test = split_records(train, cfg.split, seed)
        log.info(
            "split %s into %d/%d/%d (seed %d)", cfg.train, len(train), len(val), len(test), seed
        )
    else:
        val = read(cfg.eval, cfg.file_type, cfg.system_prompt) if cfg.eval else []
        test = read(cfg.test, cfg.file_type, cfg.system_prompt) if cfg.test else []
    parts = []
    for name, records in (("train", train), ("eval", val), ("test", test)):
        encoded, stats = encode(records) if records else ([], None)
        log.info(
            "data %s: %d records%s", name, len(encoded), f", {stats.describe()}" if stats else ""
        )
        parts.append(encoded)
    if not parts[0]:
        raise DataError(
            f"no training records left from {cfg.train}: lower the eval/test fractions of data.split"
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
    totals = WeightedMeans()
    batch_size = max(1, cfg.eval.batch_size // 2)  # two rows per pair
    for start in range(0, len(pairs), batch_size):
        batch = collate_fn(pairs[start : start + batch_size])
        with autocast(cfg.train.precision):
            loss, n, metrics = loss_fn(model, batch, cfg)
        totals.add({"loss": float(loss), **metrics}, n)
    return totals.means()
