"""Best-model selection: the best validation result by train.best_metric, early stopping on it,
and (train.keep_best) the trained weights it was made with, restored at the end of the run.

The kept weights and the selection state are written to `<output.dir>/checkpoints/best/` at each
evaluation, so an interrupted run resumes with the same best (and the same count of evaluations
since it) instead of forgetting it. Evaluations a resume replays (at or before the last one
recorded) are not counted twice.
"""

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from ..config.schema import TrainConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)
STATE, WEIGHTS = "state.json", "weights.safetensors"


def check_selection(cfg: TrainConfig, evaluate) -> None:
    if (cfg.keep_best or cfg.early_stopping_patience) and evaluate is None:
        raise ConfigError(
            "train.keep_best / train.early_stopping_patience need a validation split to evaluate "
            "on; set data.eval (or data.split fractions that leave one) or turn them off"
        )


class BestSelection:
    def __init__(self, cfg: TrainConfig, folder: Optional[Path] = None, writes: bool = True):
        self.metric, self.keep = cfg.best_metric, cfg.keep_best
        self.minimise = "loss" in cfg.best_metric
        self.value: Optional[float] = None
        self.step: Optional[int] = None
        self.stale = 0  # evaluations since the best
        self.last_eval: Optional[int] = None  # step of the last evaluation counted
        self.weights: Optional[dict] = None
        selecting = cfg.keep_best or cfg.early_stopping_patience > 0
        self.folder, self.writes = folder, writes and selecting and folder is not None

    def update(self, metrics: dict, step: int, params: dict) -> None:
        if self.metric not in metrics:
            raise ConfigError(
                f"train.best_metric={self.metric} is not among the validation metrics "
                f"({', '.join(sorted(metrics))}); choose one of those"
            )
        if self.last_eval is not None and step <= self.last_eval:
            return  # a resume replaying an evaluation already counted
        self.last_eval = step
        value = float(metrics[self.metric])
        better = self.value is None or (value < self.value if self.minimise else value > self.value)
        if better:
            self.value, self.step, self.stale = value, step, 0
            if self.keep:  # only the trained tensors: a few MB for LoRA or a head
                self.weights = {n: p.detach().clone() for n, p in params.items()}
        else:
            self.stale += 1
        self._write(weights_changed=better and self.keep)

    def restore(self, params: dict) -> None:
        if self.weights is None:
            return
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.weights[name])
        log.info("restored the weights of step %d (%s %.4f)", self.step, self.metric, self.value)

    def resume(self) -> None:
        """Take up the state (and kept weights) an interrupted run wrote, if any."""
        state_file = self.folder / STATE if self.folder is not None else None
        if state_file is None or not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        if state.get("metric") != self.metric:
            return  # chosen by another metric: start the selection afresh
        self.value, self.step = state["value"], state["step"]
        self.stale, self.last_eval = state["stale"], state["last_eval"]
        if self.keep and (self.folder / WEIGHTS).is_file():
            self.weights = load_file(str(self.folder / WEIGHTS))

    def _write(self, weights_changed: bool) -> None:
        if not self.writes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if weights_changed:
            tmp = self.folder / f"{WEIGHTS}.tmp"
            save_file({n: w.contiguous() for n, w in self.weights.items()}, str(tmp))
            os.replace(tmp, self.folder / WEIGHTS)
        state = {"metric": self.metric, "value": self.value, "step": self.step}
        state.update(stale=self.stale, last_eval=self.last_eval)
        tmp = self.folder / f"{STATE}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.folder / STATE)


def selection_for(cfg: TrainConfig, out_dir: Path, rank: int, params: dict, resumed: bool):
    """The run's BestSelection, taken up from an interrupted run's files when resumed. Sharded
    parameters (FSDP) hold a slice per rank: their kept copy stays in memory only."""
    plain = not any(isinstance(p, DTensor) for p in params.values())
    best = BestSelection(cfg, out_dir / "checkpoints" / "best", writes=rank == 0 and plain)
    if resumed and plain:
        best.resume()
    return best
