"""Run one config several times with different overrides and tabulate chosen metrics.

A table spec (YAML) names the base config, the rows (a name and overrides each), the metrics.json
keys to show, and an output directory; `tunesmith table SPEC.yaml` reproduces the whole table:

    config: examples/sms_head.yaml
    output: runs/sms_head_table
    columns: [train_accuracy, val_accuracy, test_accuracy, train_seconds]  # per_class.spam.recall: nested
    overrides: [train.epochs=3]          # for every row (optional)
    rows:
      - {name: last token + last block, overrides: [task.pooling=last, task.trainable=last_block]}

Each row runs in <output>/<row slug>/ and writes its own metrics.json. A row whose directory already
holds metrics with every column, from the same resolved config, is reused (--force reruns it).
Results: table.md, table.csv and table.json in the output directory.
"""

import csv
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

import yaml

from ..config.loader import config_to_dict
from ..errors import ConfigError
from ..tasks import load_config
from ..utils.files import atomic_write_text
from ..utils.paths import read_text, yaml_error_line
from . import classify, sft

log = logging.getLogger(__name__)
RUNNERS = {"sft": sft.run, "classify": classify.run}  # task.type -> run(cfg, progress)


def read_spec(path: str) -> dict:
    """The table spec, checked; raises ConfigError naming what is missing."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table spec not found: {path}")
    try:
        spec = yaml.safe_load(read_text(p, ConfigError)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(path, e)) from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a table spec is a mapping (config, output, columns, rows, ...)")
    unknown = set(spec) - {"config", "output", "columns", "overrides", "rows", "title"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table spec key(s) {sorted(unknown)}; allowed: config, output, columns, "
            f"overrides, rows, title"
        )
    for key in ("config", "output", "rows", "columns"):
        if not spec.get(key):
            raise ConfigError(f"{path}: the table spec needs {key!r}")
    for row in spec["rows"]:
        if not isinstance(row, dict) or "name" not in row:
            raise ConfigError(f"{path}: each row needs a name and a list of overrides, got {row!r}")
    config = Path(spec["config"])
    if not config.is_file() and (p.parent / config).is_file():
        spec["config"] = str(p.parent / config)
    return spec


def run(
    spec_path: str, overrides: Sequence[str] = (), force: bool = False, progress: bool = False
) -> list[dict]:
    """Run every row of the spec (reusing finished ones unless force); returns the table rows."""
    spec = read_spec(spec_path)
    out = Path(spec["output"])
    rows = []
    for row in spec["rows"]:
        row_dir = out / slug(row["name"])
        row_overrides = [
            *spec.get("overrides", []),
            *row.get("overrides", []),
            *overrides,
            f"output.dir={row_dir}",
        ]
        cfg = load_config(spec["config"], row_overrides)
        metrics = _finished(row_dir, cfg, spec["columns"]) if not force else None
        if metrics is None:
            if row_dir.exists():
                shutil.rmtree(row_dir)  # stale checkpoints would otherwise be resumed
            log.info("table row %r -> %s", row["name"], row_dir)
            metrics = RUNNERS[cfg.task.type](cfg, progress=progress)
        rows.append({"name": row["name"], **{c: _lookup(metrics, c) for c in spec["columns"]}})
    write(rows, spec, out)
    return rows


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def markdown(rows: list[dict], columns: Sequence[str]) -> str:
    lines = ["| row | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write(rows: list[dict], spec: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    title = f"{spec['title']}\n\n" if spec.get("title") else ""
    atomic_write_text(out / "table.md", title + markdown(rows, spec["columns"]) + "\n")
    atomic_write_text(out / "table.json", json.dumps(rows, indent=2))
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", *spec["columns"]])
        writer.writeheader()
        writer.writerows(rows)


def _finished(row_dir: Path, cfg, columns: Sequence[str]):
    metrics_path, config_path = row_dir / "metrics.json", row_dir / "config.yaml"
    if not (metrics_path.is_file() and config_path.is_file()):
        return None
    if yaml.safe_load(config_path.read_text()) != config_to_dict(cfg):
        return None
    metrics = json.loads(metrics_path.read_text())
    return metrics if all(_lookup(metrics, c) is not None for c in columns) else None


def _lookup(metrics: dict, column: str):
    """metrics[column], or for a dotted column a nested value (per_class.spam.recall); None if absent."""
    if column in metrics:
        return metrics[column]
    value = metrics
    for key in column.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(column: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and any(
        k in column for k in ("accuracy", "f1", "recall", "precision")
    ):
        return f"{100 * value:.1f}%"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):  # losses and ROUGE below 10 need their third digit
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
