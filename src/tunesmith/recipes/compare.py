"""Train several methods on one task and tabulate metric, trainable parameters, time and memory.

Each method runs in its own process (`tunesmith train ... method.name=M`) so that its peak
memory is its own. Results: compare.md, compare.csv and compare.png in the output directory.
"""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

from ..errors import ConfigError
from ..methods import get_method

log = logging.getLogger(__name__)
COLUMNS = [
    "method",
    "metric",
    "value",
    "trainable_params",
    "trainable_pct",
    "train_seconds",
    "peak_rss_mb",
]
# generation metrics (eval.metrics) shown beside the chosen one when a run's metrics.json has them
GENERATION_COLUMNS = ["exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"]


def run(
    config_path: str,
    methods: Sequence[str],
    overrides: Sequence[str],
    out_dir: str,
    metric: str,
    method_overrides: Sequence[str] = (),
) -> list[dict]:
    """Run `tunesmith train` once per method; returns one row per method and writes the report.

    method_overrides: "METHOD:key=value" items applied to that method only (after `overrides`),
    e.g. a learning rate that suits it."""
    for name in methods:
        get_method(name)  # unknown names fail before any training starts
    own = _per_method(method_overrides, methods)
    out = Path(out_dir)
    rows = []
    for (
        name
    ) in methods:  # the report is rewritten after each method: an interruption keeps what finished
        rows.append(_run_one(config_path, name, [*overrides, *own[name]], out / name, metric))
        write_report(rows, out)
    return rows


def _per_method(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    own = {name: [] for name in methods}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError(
                f"--set {item!r}: expected METHOD:key=value, e.g. prompt_tuning:train.lr=3e-2"
            )
        if name not in own:
            raise ConfigError(
                f"--set {item!r}: {name!r} is not among --methods ({', '.join(methods)})"
            )
        own[name].append(override)
    return own


def _run_one(
    config_path: str, method: str, overrides: Sequence[str], run_dir: Path, metric: str
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tunesmith.cli.main",
        "train",
        str(_method_config(config_path, method, run_dir)),
        *overrides,
        f"output.dir={run_dir}",
    ]
    log.info("compare: training %s -> %s", method, run_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. a method that does not apply to this model: a row says why
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.error("compare: method %s failed: %s", method, last)
        return {
            "method": method,
            "metric": metric,
            "value": f"failed: {last.removeprefix('error: ')}",
        }
    m = json.loads((run_dir / "metrics.json").read_text())
    # Methods whose trainable tensors are partly frozen by masks (sparse) report what can still change.
    trainable = m.get("effective_trainable_params", m["trainable_params"])
    return {
        "method": method,
        "metric": metric,
        "value": m.get(metric),
        "trainable_params": trainable,
        "trainable_pct": round(100 * trainable / m["total_params"], 4),
        "train_seconds": m["train_seconds"],
        "peak_rss_mb": round(m["peak_rss_mb"]),
        **{k: m[k] for k in GENERATION_COLUMNS if k in m and k != metric},
    }


def _method_config(config_path: str, method: str, run_dir: Path) -> Path:
    """The config with its method section kept when it names `method`, else that method's defaults."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    if (raw.get("method") or {}).get("name") != method:
        raw["method"] = {"name": method}
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "input.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_report(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + _generation_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    (out / "compare.md").write_text(markdown_table(rows))
    _plot(rows, out / "compare.png")


def markdown_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"] if rows else "metric"
    extra = _generation_columns(rows)
    lines = [
        f"| method | {metric} | trainable params | % of total | train time (s) | peak RSS (MiB) |"
        + "".join(f" {c} |" for c in extra),
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra),
    ]
    for r in rows:
        value = f"{r['value']:.4f}" if isinstance(r["value"], float) else str(r["value"])
        if failed(r):
            lines.append(f"| {r['method']} | {value} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {value} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | "
            f"{r['train_seconds']:.0f} | {r['peak_rss_mb']:,} |"
            + "".join(f" {_fmt(r.get(c))} |" for c in extra)
        )
    return "\n".join(lines) + "\n"


def _generation_columns(rows: list[dict]) -> list[str]:
    return [c for c in GENERATION_COLUMNS if any(c in r for r in rows)]


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def failed(row: dict) -> bool:
    return "trainable_params" not in row


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if not failed(r) and isinstance(r["value"], (int, float))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in points:
        ax.scatter(r["trainable_params"], r["value"])
        ax.annotate(
            r["method"],
            (r["trainable_params"], r["value"]),
            textcoords="offset points",
            xytext=(4, 4),
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(points[0]["metric"] if points else "metric")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
