"""Plain-text views of task metrics; the CLI prints what these return."""


def metrics_text(metrics: dict) -> str:
    width = max([18, *(len(key) for key in metrics)])
    return "\n".join(
        f"{key:<{width}} {value:.4f}" if isinstance(value, float) else f"{key:<{width}} {value}"
        for key, value in metrics.items()
    )


def samples_text(samples: list[dict], n: int = 3) -> str:
    return "\n".join(
        f"--- prompt: {s['prompt']}\n    reference:  {s['reference']}\n"
        f"    prediction: {s['prediction'].strip()}"
        for s in samples[:n]
    )


def generation_text(metrics: dict) -> str:
    """Sample generations (metrics["samples"], when present), then the scalar metrics."""
    samples = samples_text(metrics.get("samples", []))
    scalars = metrics_text({k: v for k, v in metrics.items() if k != "samples"})
    return f"{samples}\n{scalars}" if samples else scalars


def classification_text(metrics: dict) -> str:
    """Scalar metrics, then per-class precision/recall/F1 and the confusion matrix."""
    lines = [
        metrics_text({k: v for k, v in metrics.items() if k not in ("per_class", "confusion")})
    ]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(10, *(len(c) for c in per_class))
        lines.append(f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
        for name, m in per_class.items():
            lines.append(
                f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} "
                f"{m['support']:>8}"
            )
        lines.append(
            "confusion (rows: true, columns: predicted; order " + ", ".join(per_class) + ")"
        )
        lines.extend("  " + " ".join(f"{v:>6}" for v in row) for row in metrics["confusion"])
    return "\n".join(lines)
