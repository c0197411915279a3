"""Curves (PNG) from metrics.jsonl: the loss, and any logged metric."""

import json
from pathlib import Path

from ..utils.distributed import is_main_process


def plot_loss_curve(metrics_path: Path, out_png: Path) -> bool:
    """Draw train (and eval) loss against step; False when there is nothing to plot."""
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return False
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def plot_curves(metrics_path: Path, out_png: Path, names) -> bool:
    """One panel per metric in `names` (e.g. reward, kl) against step, from the training records
    that have it; False when none has any."""
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return False
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    series = {n: [(r["step"], r[n]) for r in records if n in r and "loss" in r] for n in names}
    series = {n: points for n, points in series.items() if points}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        ax.plot(*zip(*points))
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True
