"""Data: read files, detect formats, apply chat templates, encode, split and batch."""

import logging
from dataclasses import dataclass

from ..config.schema import DataConfig
from ..errors import DataError
from .collate import collate
from .encode import IGNORE, EncodeStats, Example, encode_records
from .readers import read_records
from .split import split_records
from .templates import render

log = logging.getLogger(__name__)
__all__ = [
    "IGNORE",
    "EncodeStats",
    "Example",
    "Splits",
    "collate",
    "encode_records",
    "load_splits",
    "read_parts",
    "read_records",
    "render",
    "split_records",
]


@dataclass
class Splits:
    train: list
    eval: list
    test: list


def read_parts(cfg: DataConfig, seed: int, read) -> tuple[list, list, list]:
    """(train, validation, test) items: read(data.train) limited to data.limit and cut by the
    seeded data.split, unless data.eval or data.test name their own files."""
    train = read(cfg.train)
    if cfg.limit:
        train = train[: cfg.limit]
    if cfg.eval is None and cfg.test is None:
        train, val, test = split_records(train, cfg.split, seed)
        log.info(
            "split %s into %d/%d/%d (seed %d)", cfg.train, len(train), len(val), len(test), seed
        )
        return train, val, test
    return train, read(cfg.eval) if cfg.eval else [], read(cfg.test) if cfg.test else []


def load_splits(cfg: DataConfig, tokenizer, seed: int) -> Splits:
    """Read data.train (and data.eval / data.test, or split them off) and encode every part.

    Raises DataError when data.train is missing or when any part ends up empty.
    """
    if not cfg.train:
        raise DataError(
            "data.train is not set: give a training file (JSONL, JSON, CSV, TSV, Parquet)"
        )
    train, val, test = read_parts(
        cfg, seed, lambda path: read_records(path, cfg.file_type, cfg.columns)
    )
    parts = []
    for name, records in (("train", train), ("eval", val), ("test", test)):
        examples, stats = (
            encode_records(
                records,
                tokenizer,
                cfg.format,
                cfg.max_length,
                cfg.completion_only,
                cfg.system_prompt,
                cfg.task_field,
            )
            if records
            else ([], EncodeStats())
        )
        log.info("data %s: %s", name, stats.describe())
        parts.append(examples)
    if not parts[0]:
        raise DataError(f"no training examples left from {cfg.train} (all empty or truncated away)")
    return Splits(*parts)
