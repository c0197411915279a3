"""Labelled text for classification: read records, build the label map, split (stratified) and
re-sample for class balance.

A `LabelledExample` keeps the raw text (and optional text pair) so each classification mode (head,
features, prompt, in-context) can tokenise it its own way.
"""

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from ..config.schema import DataConfig
from ..errors import DataError
from .readers import SOURCE, read_records
from .split import split_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledExample:
    text: str
    label: str
    pair: Optional[str] = None
    source: str = ""


@dataclass
class LabelledSplits:
    train: list
    eval: list
    test: list
    labels: list  # class names; index = class id


def read_labelled(path, cfg: DataConfig, need_label: bool = True) -> list[LabelledExample]:
    """Records of `path` as LabelledExamples, read with cfg's field names.

    Raises DataError naming the file and the fields it has when the text or label field is missing.
    """
    records = read_records(path, cfg.file_type, cfg.columns)
    fields = [cfg.text_field] + ([cfg.label_field] if need_label else [])
    fields += [cfg.text_pair_field] if cfg.text_pair_field else []
    out = []
    for r in records:
        for f in fields:
            if r.get(f) is None:
                have = ", ".join(k for k in r if k != SOURCE)
                key = {cfg.text_field: "data.text_field", cfg.label_field: "data.label_field"}.get(
                    f, "data.text_pair_field"
                )
                raise DataError(
                    f"{r[SOURCE]}: no field {f!r} ({key}); the record has: {have}. Set {key} to the "
                    f"right column (and data.columns for a CSV/TSV file without a header)"
                )
        label = str(r[cfg.label_field]).strip() if need_label else ""
        pair = str(r[cfg.text_pair_field]) if cfg.text_pair_field else None
        out.append(LabelledExample(str(r[cfg.text_field]), label, pair, r[SOURCE]))
    return out


def load_labelled_splits(cfg: DataConfig, seed: int, labels: Sequence[str] = ()) -> LabelledSplits:
    """Train/eval/test LabelledExamples: data.eval/data.test when given, else a stratified split of
    data.train by data.split; data.balance re-samples (see DataConfig). `labels` fixes the class order.

    Raises DataError when data.train is unset, a split is empty, or eval/test hold labels training lacks.
    """
    if not cfg.train:
        raise DataError("data.train is not set: give a labelled file (CSV, TSV, JSONL)")
    train = read_labelled(cfg.train, cfg)[: cfg.limit or None]
    if cfg.balance == "undersample":
        train = undersample(train, seed)
    if cfg.eval is None and cfg.test is None:
        wrapped = [
            {"label": e.label, "example": e} for e in train
        ]  # split_records reads labels by key
        train, val, test = (
            [r["example"] for r in part]
            for part in split_records(wrapped, cfg.split, seed, "label")
        )
    else:
        val = read_labelled(cfg.eval, cfg) if cfg.eval else []
        test = read_labelled(cfg.test, cfg) if cfg.test else []
    if cfg.balance == "oversample":
        train = oversample(train, seed)
    if not train:
        raise DataError(f"no training examples in {cfg.train}")
    names = label_names(train, labels)
    for name, part in (("eval", val), ("test", test)):
        check_known_labels(part, names, name)
    log.info(
        "classification data: train %s, eval %s, test %s",
        _counts(train),
        _counts(val),
        _counts(test),
    )
    return LabelledSplits(train, val, test, names)


def label_names(train: list, explicit: Sequence[str] = ()) -> list[str]:
    """The class order: `explicit` (task.labels) when given, else the sorted training labels.

    Raises DataError when training holds a label `explicit` lacks, or has a single class.
    """
    seen = sorted({e.label for e in train})
    if explicit:
        extra = [x for x in seen if x not in explicit]
        if extra:
            raise DataError(
                f"training labels {extra} are not in task.labels {list(explicit)}; add them"
            )
        return list(explicit)
    if len(seen) < 2:
        raise DataError(
            f"the training split has only the label(s) {seen}: classification needs at least two classes"
        )
    return seen


def check_known_labels(examples: list, labels: Sequence[str], split: str) -> None:
    """Raise DataError when `examples` hold labels outside `labels` (e.g. eval labels training never saw)."""
    unknown = Counter(e.label for e in examples if e.label not in labels)
    if unknown:
        first = next(e for e in examples if e.label in unknown)
        raise DataError(
            f"the {split} data has label(s) the training data never had: "
            f"{', '.join(f'{k!r} ({n}x)' for k, n in unknown.items())}, first at {first.source}; "
            f"known labels: {', '.join(map(repr, labels))}"
        )


def undersample(examples: list, seed: int) -> list:
    """Every class cut at random to the size of the smallest one (order: shuffled)."""
    groups = _by_label(examples)
    n = min(len(g) for g in groups.values())
    rng = random.Random(seed)
    out = [e for key in sorted(groups) for e in rng.sample(groups[key], n)]
    rng.shuffle(out)
    return out


def oversample(examples: list, seed: int) -> list:
    """Every class topped up to the size of the largest by drawing its examples again at random."""
    groups = _by_label(examples)
    n = max(len(g) for g in groups.values())
    rng = random.Random(seed)
    out = [
        e
        for key in sorted(groups)
        for e in groups[key] + rng.choices(groups[key], k=n - len(groups[key]))
    ]
    rng.shuffle(out)
    return out


def class_weights(examples: list, labels: Sequence[str]) -> list[float]:
    """n / (classes * count) per class (sklearn's 'balanced'); 0 for a class with no example."""
    counts = Counter(e.label for e in examples)
    return [len(examples) / (len(labels) * counts[c]) if counts[c] else 0.0 for c in labels]


def _by_label(examples: list) -> dict:
    groups = defaultdict(list)
    for e in examples:
        groups[e.label].append(e)
    return groups


def _counts(examples: list) -> str:
    return (
        ", ".join(f"{k}={n}" for k, n in sorted(Counter(e.label for e in examples).items()))
        or "none"
    )
