"""Text classification: train (or fit) a classifier in the mode task.mode names, evaluate, classify
new text.

The modes (head, features, prompt, icl, ...) are plug-ins in tunesmith/tasks/classify/modes, one
module each, looked up in their registry. A mode's fit(cfg, splits, out, progress) returns
(predictor, info); load(cfg, out, labels) returns the predictor again from out. A predictor has
`labels` and `predict_proba(examples) -> (N, K)`.
"""

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config.loader import save_config
from ..config.schema import RunConfig
from ..data.classification import LabelledExample, check_known_labels, load_labelled_splits
from ..data.resampling import RESAMPLERS, resample_examples
from ..errors import CheckpointError, DataError
from ..evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    log_probs,
    nll,
)
from ..evaluation.classification import classification_metrics, plot_confusion
from ..tasks.classify.modes import get_mode, resolve
from ..training.held_out import rows_over_ranks
from ..utils.distributed import is_main_process
from ..utils.files import atomic_write_text
from ..utils.paths import ensure_output_dir, read_text
from ..utils.seeding import seed_everything

log = logging.getLogger(__name__)
LABELS_FILE = "classifier.json"
CALIBRATION_FILE = "calibration.json"  # the validation-fitted temperature


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Fit cfg.task.mode on the training split and score every split; returns the metrics.

    Writes to output.dir: config.yaml, classifier.json (mode, labels), the mode's trained state,
    metrics.json (test metrics as accuracy / macro_f1 / per_class / confusion, plus train_, val_ and
    test_accuracy and timings), confusion.png and, when the loop ran, metrics.jsonl and checkpoints.
    """
    resolve(cfg)
    seed_everything(cfg.train.seed)
    out = ensure_output_dir(cfg.output.dir, "output.dir")
    save_config(cfg, out / "config.yaml")
    splits = load_labelled_splits(cfg.data, cfg.train.seed, cfg.task.labels)
    mode = get_mode(cfg.task.mode)
    if cfg.data.balance in RESAMPLERS and not mode.feature_space:
        # a feature-space mode re-samples its vectors itself (no texts to embed again)
        splits.train = resample_examples(cfg.data.balance, splits.train, cfg.train.seed)
    predictor, info = mode.fit(cfg, splits, out, progress)
    if is_main_process():
        atomic_write_text(
            out / LABELS_FILE,
            json.dumps({"mode": cfg.task.mode, "labels": splits.labels}, indent=2),
        )
    metrics = {"mode": cfg.task.mode, **info}
    # Untrained modes (zero-shot prompts, icl) have nothing to select on validation data and no
    # training fit to report: they score the test split only (each pass over a split costs minutes).
    trained = info.get("trained", True)
    parts = {
        "train": splits.train if trained and cfg.task.score_train else [],
        "val": splits.eval if trained else [],
        "test": splits.test,
    }
    # Under torchrun each rank predicts its share of a split; every rank scores every row.
    probs = {
        name: rows_over_ranks(predictor.predict_proba, part) for name, part in parts.items() if part
    }
    temperature = _calibrate(cfg, out, probs.get("val"), parts["val"], splits.labels, metrics)
    scored = {}
    for name, raw in probs.items():
        scored[name] = score_probs(raw, parts[name], splits.labels, temperature)
        for key in ("accuracy", "macro_f1", "ece"):
            metrics[f"{name}_{key}"] = scored[name][key]
    if not scored:
        raise DataError(
            "nothing to score: the test split is empty; set data.test or data.split fractions that leave one"
        )
    held_out = "test" if "test" in scored else "val" if "val" in scored else "train"
    metrics.update(split=held_out, **scored[held_out])
    _write(out, metrics, splits.labels)
    return metrics


def evaluate(cfg: RunConfig, split: str = "test") -> dict:
    """Metrics of the classifier trained in output.dir on `split` (test, eval or train) of cfg.data;
    written to output.dir/metrics.json. Raises DataError for labels the classifier never saw."""
    resolve(cfg)
    seed_everything(cfg.train.seed)
    out = Path(cfg.output.dir)
    predictor = load_predictor(cfg)
    splits = load_labelled_splits(cfg.data, cfg.train.seed, predictor.labels)
    examples = {"test": splits.test, "eval": splits.eval, "train": splits.train}[split]
    if not examples:
        raise DataError(
            f"the {split} split is empty: set data.{split} or use data.split fractions that leave one"
        )
    check_known_labels(examples, predictor.labels, split)
    metrics = {"split": split, "mode": cfg.task.mode, **score(predictor, examples)}
    _write(out, metrics, predictor.labels)
    return metrics


def load_predictor(cfg: RunConfig):
    """The classifier trained in cfg.output.dir (mode and labels from its classifier.json)."""
    resolve(cfg)
    out = Path(cfg.output.dir)
    path = out / LABELS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{out} holds no trained classifier ({LABELS_FILE} is missing): run "
            f"`tunesmith train CONFIG.yaml` with task.type=classify first"
        )
    try:
        saved = json.loads(read_text(path, CheckpointError))
        mode, labels = saved["mode"], saved["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}); train the classifier again"
        ) from None
    predictor = get_mode(mode).load(cfg, out, labels)
    temperature = read_temperature(out) if cfg.task.temperature_scaling else None
    return predictor if temperature is None else TemperatureScaled(predictor, temperature)


class TemperatureScaled:
    """A predictor whose probabilities are softmax(log p / T) of another's (calibration.json)."""

    def __init__(self, predictor, temperature: float):
        self.inner, self.temperature, self.labels = predictor, temperature, predictor.labels

    def predict_proba(self, examples: list):
        return apply_temperature(self.inner.predict_proba(examples), self.temperature)


def classify_texts(
    run_dir: str, texts: Sequence[str], overrides: Sequence[str] = ()
) -> list[tuple[str, float]]:
    """(label, probability) for each text, with the classifier trained in run_dir (its config.yaml)."""
    from ..tasks import load_config  # the tasks import this module: a late import

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{run_dir} is not a classification run: config.yaml is missing")
    cfg = load_config(str(config), [*overrides, f"output.dir={run_dir}"])
    predictor = load_predictor(cfg)
    probs = predictor.predict_proba([LabelledExample(t, "") for t in texts])
    return [(predictor.labels[int(i)], float(p[i])) for p, i in zip(probs, probs.argmax(1))]


def score(predictor, examples: list) -> dict:
    inner, temperature = predictor, None
    if isinstance(predictor, TemperatureScaled):  # ECE before and after the temperature
        inner, temperature = predictor.inner, predictor.temperature
    return score_probs(inner.predict_proba(examples), examples, predictor.labels, temperature)


def score_probs(probs, examples: list, labels: list, temperature: Optional[float] = None) -> dict:
    """Metrics of class probabilities (N, K) for examples: classification_metrics, plus `ece` (of
    the probabilities after the temperature, if any) and `ece_uncalibrated` (before)."""
    y_true = [labels.index(e.label) for e in examples]
    metrics = classification_metrics(y_true, probs.argmax(1).tolist(), labels)
    scaled = apply_temperature(probs, temperature) if temperature else probs
    metrics["ece"] = expected_calibration_error(scaled, y_true)
    metrics["ece_uncalibrated"] = expected_calibration_error(probs, y_true)
    return metrics


def _calibrate(cfg, out: Path, val_probs, val: list, labels: list, metrics: dict):
    """Fit the temperature on the validation split; kept (calibration.json, returned) only when it
    lowers the validation NLL and the validation split has an error. None without a validation
    split or with task.temperature_scaling off."""
    path = out / CALIBRATION_FILE
    if is_main_process() and path.exists():
        path.unlink()  # a calibration of an earlier run in this directory does not apply
    if not cfg.task.temperature_scaling or val_probs is None:
        return None
    logits, y = log_probs(val_probs), [labels.index(e.label) for e in val]
    temperature = fit_temperature(logits, y)
    before, after = nll(logits, y), nll(logits, y, temperature)
    # With no validation error the NLL falls towards 0 as T -> 0: that sharpens every prediction
    # rather than calibrating (measured on SMS spam: T 0.14 raised test ECE from 3.2 % to 3.3 %).
    errors = int((val_probs.argmax(1) != np.asarray(y)).sum())
    applied = after < before and errors > 0
    metrics.update(
        temperature=temperature if applied else 1.0,
        val_nll=before,
        val_nll_calibrated=after if applied else before,
    )
    if is_main_process():
        record = {
            "validation_errors": errors,
            "temperature": temperature,
            "applied": applied,
            "val_nll": before,
            "val_nll_calibrated": after,
        }
        atomic_write_text(path, json.dumps(record, indent=2))
    return temperature if applied else None


def read_temperature(out: Path) -> Optional[float]:
    """The fitted temperature of the run in out, or None (no calibration.json, or not applied)."""
    path = Path(out) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(read_text(path, CheckpointError))
        return float(saved["temperature"]) if saved["applied"] else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}); delete it or train again"
        ) from None


def _write(out: Path, metrics: dict, labels: list) -> None:
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    plot_confusion(
        metrics["confusion"],
        labels,
        out / "confusion.png",
        f"{metrics.get('split', '')} accuracy {metrics['accuracy']:.3f}",
    )
