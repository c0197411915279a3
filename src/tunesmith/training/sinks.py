"""Metric sinks: JSONL file, TensorBoard (when installed) and a progress bar."""

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class JsonlSink:
    """Appends one JSON object per record; on resume, drops records past the checkpoint step."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = (
            [line for line in _lines(path) if json.loads(line).get("step", 0) <= resume_step]
            if resume_step
            else []
        )
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class ProgressSink:
    """A tqdm bar showing loss, lr and tokens/s."""

    def __init__(self, total: int, initial: int = 0):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        if "loss" in record:
            self.bar.n = record["step"]
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                tok_s=f"{record['tokens_per_s']:.0f}",
                refresh=False,
            )
            self.bar.refresh()
        elif "eval_loss" in record:
            self.bar.write(f"step {record['step']}: eval_loss {record['eval_loss']:.4f}")

    def close(self) -> None:
        self.bar.close()


def default_sinks(out_dir: Path, resume_step: int, total_steps: int, progress: bool) -> list:
    sinks = [JsonlSink(out_dir / "metrics.jsonl", resume_step)]
    try:
        sinks.append(TensorBoardSink(out_dir / "tensorboard"))
    except ImportError:
        log.debug("tensorboard not installed; metrics go to metrics.jsonl only")
    if progress:
        sinks.append(ProgressSink(total_steps, resume_step))
    return sinks


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
