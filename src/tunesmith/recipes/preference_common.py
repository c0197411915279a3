"""What the preference tasks (reward, dpo, kto) share: the encoded examples of each split, batches
that carry precomputed reference log-probs, the held-out loop, and a run's train-save-report tail."""

import logging
from pathlib import Path

import torch

from ..config.loader import save_config
from ..config.schema import DataConfig, RunConfig
from ..data import Splits, read_parts
from ..data.preference import collate_pairs, encode_kto, encode_pairs, read_kto, read_preference
from ..errors import CheckpointError, DataError
from ..methods.io import CONFIG_NAME, load_adapter, save_adapter
from ..models.frozen_weights import weights_for_evaluation
from ..models.loading import load_configured_model
from ..training import train
from ..training.held_out import rank_share, summed_over_ranks
from ..training.objective import WeightedMeans
from ..training.plots import plot_loss_curve
from ..utils.hardware import autocast
from ..utils.paths import ensure_output_dir
from ..utils.seeding import seed_everything
from .common import training_summary, write_outputs

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
    train, val, test = read_parts(
        cfg, seed, lambda path: read(path, cfg.file_type, cfg.system_prompt)
    )
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
    in eval mode, weighted by the pairs of each batch. Under a process group every rank must call
    it: each scores its share of the batches (whole batches, as one process forms them) and all get
    the means over every pair."""
    model.eval()
    totals = WeightedMeans()
    batch_size = max(1, cfg.eval.batch_size // 2)  # two rows per pair
    share = rank_share(pairs, batch_size)
    for start in range(0, len(share), batch_size):
        batch = collate_fn(share[start : start + batch_size])
        with autocast(cfg.train.precision):
            loss, n, metrics = loss_fn(model, batch, cfg)
        totals.add({"loss": float(loss), **metrics}, n)
    return summed_over_ranks(totals).means()


def start_run(cfg: RunConfig) -> Path:
    """Seed, check output.dir and save the resolved config there; returns output.dir."""
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    ensure_output_dir(out, "output.dir")
    save_config(cfg, out / "config.yaml")
    return out


def train_and_report(
    cfg: RunConfig, model, splits: Splits, objective, held_out, progress: bool, save=None
) -> dict:
    """Run the loop, save the result, and write metrics.json: the training summary plus
    held_out(examples) -> metrics of the test split (else the validation split). save(directory)
    writes the trained model (also best/ at the lowest validation loss); by default the adapter."""
    out = Path(cfg.output.dir)
    save = save or (lambda d: save_adapter(model, d, base_model=cfg.model.name))
    evaluate = (lambda: {"eval_loss": held_out(splits.eval)["loss"]}) if splits.eval else None
    result = train(
        model,
        splits.train,
        cfg.train,
        out,
        objective,
        evaluate=evaluate,
        progress=progress,
        on_best=lambda: save(out / "best"),
    )
    save(out)
    plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    metrics = training_summary(result, model)
    part = splits.test or splits.eval
    if part:
        metrics.update(split="test" if splits.test else "eval", **held_out(part))
    write_outputs(out, cfg, metrics, [])
    return metrics


def evaluate_adapter_run(cfg: RunConfig, split: str, adapter, load_splits, held_out) -> dict:
    """Metrics of the adapter in output.dir (or `adapter`) on `split`: load_splits(data, tokenizer,
    seed) -> Splits, held_out(model, examples, tokenizer) -> metrics; written to metrics.json."""
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    model, tokenizer = load_configured_model(cfg.model)
    weights_for_evaluation(model, cfg.model.dtype, cfg.train.precision)
    adapter = adapter or (str(out) if (out / CONFIG_NAME).is_file() else None)
    if adapter is None:
        raise CheckpointError(
            f"{out} holds no adapter: train first (tunesmith train CONFIG.yaml) or give --adapter"
        )
    load_adapter(model, adapter)
    splits = load_splits(cfg.data, tokenizer, cfg.train.seed)
    examples = {"test": splits.test, "eval": splits.eval, "train": splits.train}[split]
    if not examples:
        raise DataError(
            f"the {split} split is empty: set data.{split} or data.split fractions that leave one"
        )
    metrics = {
        "split": split,
        "adapter": adapter,
        **held_out(model, examples, tokenizer),
    }
    write_outputs(out, cfg, metrics, [])
    return metrics
