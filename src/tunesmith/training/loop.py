"""The training loop: AdamW, schedule, accumulation, clipping, periodic eval, exact resume.

Data order is a seeded permutation per epoch, so a resumed run replays exactly the batches the
interrupted run would have seen; the checkpoint also restores RNG (dropout) state.
"""
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..errors import ConfigError, TrainingError
from ..config.schema import TrainConfig
from ..data.collate import collate
from ..data.sampling import epoch_order
from ..objectives.sft import causal_lm_loss
from ..utils.seeding import rng_state
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .sinks import default_sinks

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    best_eval_loss: Optional[float]
    seconds: float
    tokens: int
    resumed_from: int


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def micro_batches(n: int, cfg: TrainConfig, epoch: int, skip: int,
                  lengths: Optional[list[int]] = None) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, index in epoch, example indices) from `epoch`/`skip` on, forever (grouped by length
    when `lengths` is given)."""
    while True:
        order = epoch_order(n, cfg.batch_size, cfg.seed + epoch, lengths)
        for i in range(skip, math.ceil(n / cfg.batch_size)):
            yield epoch, i, order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        epoch, skip = epoch + 1, 0


def sft_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """The default objective: next-token loss on labelled tokens, (mean loss, number of tokens)."""
    return causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                          position_ids=batch.get("position_ids"))  # position_ids: a packed batch


def train(model, examples: list, cfg: TrainConfig, out_dir: Path, pad_id: int,
          evaluate: Optional[Callable[[], dict]] = None, on_best: Optional[Callable[[], None]] = None,
          progress: bool = False, on_step: Optional[Callable[[int], None]] = None,
          loss_fn: Callable = sft_loss, collate_fn: Optional[Callable[[list], dict]] = None,
          lengths: Optional[list[int]] = None) -> TrainResult:
    """Train the parameters of `model` that require grad on `examples`; checkpoints in out_dir.

    evaluate() returns a dict with 'eval_loss'; on_best() is called when it improves; on_step(step)
    after every optimizer step (method schedules such as pruning). loss_fn(model, batch) returns
    (mean loss, number of loss terms) of a batch made by collate_fn(examples) (default: SFT's
    next-token loss on `collate(examples, pad_id)`); micro-batches are weighted by their term counts.
    `lengths` (one per example) groups batches by length (data.group_by_length).
    Raises TrainingError when the loss becomes NaN/inf (the last checkpoint is left as it was).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("nothing to train: the method left no parameter with requires_grad")
    steps = total_steps(len(examples), cfg)
    optimizer = build_optimizer(list(params.values()), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    position = {"step": 0, "epoch": 0, "batch": 0, "best_eval_loss": None}
    ckpt = find_checkpoint(out_dir) if cfg.resume else None
    if ckpt is not None:
        position = load_checkpoint(ckpt, params, optimizer, scheduler)
        log.info("resuming from %s at step %d", ckpt, position["step"])
    resumed_from = position["step"]
    sinks = default_sinks(out_dir, resumed_from, steps, progress)
    loop = _Loop(model, examples, cfg, params, optimizer, scheduler, sinks, on_step, loss_fn,
                 collate_fn or (lambda items: collate(items, pad_id)), lengths)
    try:
        final = loop.run(position, steps, out_dir, evaluate, on_best)
    finally:
        for sink in sinks:
            sink.close()
    return TrainResult(steps, final, position["best_eval_loss"], loop.seconds, loop.tokens, resumed_from)


class _Loop:
    def __init__(self, model, examples, cfg, params, optimizer, scheduler, sinks, on_step, loss_fn, collate_fn,
                 lengths):
        self.model, self.examples, self.cfg, self.on_step = model, examples, cfg, on_step
        self.loss_fn, self.collate_fn, self.lengths = loss_fn, collate_fn, lengths
        self.params, self.optimizer, self.scheduler, self.sinks = params, optimizer, scheduler, sinks
        self.seconds, self.tokens = 0.0, 0

    def run(self, position: dict, steps: int, out_dir: Path, evaluate, on_best) -> float:
        cfg = self.cfg
        batches = micro_batches(len(self.examples), cfg, position["epoch"], position["batch"], self.lengths)
        window, window_tokens, window_time, loss = [], 0, 0.0, float("nan")
        while position["step"] < steps:
            group = [next(batches) for _ in range(cfg.grad_accum)]
            rng_before = rng_state()
            try:
                start = time.perf_counter()
                loss, tokens = self.step([g[2] for g in group], position["step"])
            except KeyboardInterrupt:
                # The step in flight is discarded (its RNG draws too), so a resume replays it exactly.
                self.save(out_dir, position, rng_before)
                raise
            elapsed = time.perf_counter() - start
            position.update(step=position["step"] + 1, epoch=group[-1][0], batch=group[-1][1] + 1)
            if self.on_step is not None:
                self.on_step(position["step"])
            window.append(loss)
            window_tokens, window_time = window_tokens + tokens, window_time + elapsed
            self.seconds, self.tokens = self.seconds + elapsed, self.tokens + tokens
            step = position["step"]
            if step % cfg.log_every == 0 or step == steps:
                self.emit({"step": step, "loss": sum(window) / len(window), "lr": self.scheduler.get_last_lr()[0],
                           "tokens_per_s": window_tokens / max(window_time, 1e-9), "epoch": position["epoch"]})
                window, window_tokens, window_time = [], 0, 0.0
            at_eval = evaluate is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps)
            if at_eval:
                self.run_eval(position, evaluate, on_best)
            if at_eval or step == steps or (cfg.save_every and step % cfg.save_every == 0):
                self.save(out_dir, position)
        return loss

    def step(self, groups: list[list[int]], step: int) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; loss is the mean over all their loss terms
        (tokens for SFT): each micro-batch's summed loss is back-propagated, then gradients are divided
        by the total term count."""
        self.model.train()
        total, tokens, n_terms = 0.0, 0, 0
        for idx in groups:
            batch = self.collate_fn([self.examples[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                loss, n = self.loss_fn(self.model, batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {step + 1}; training stopped and the "
                                    f"last checkpoint was kept. Lower train.lr or check the data")
            (loss * n).backward()
            total, n_terms = total + loss.item() * n, n_terms + n
            tokens += int(batch["attention_mask"].sum())
        for p in self.params.values():
            if p.grad is not None:
                p.grad.div_(max(n_terms, 1))
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm)
        if not torch.isfinite(norm):
            raise TrainingError(f"the gradient norm became {norm.item()} at step {step + 1}; training stopped "
                                f"and the last checkpoint was kept. Lower train.lr or check the data")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / max(n_terms, 1), tokens

    def run_eval(self, position: dict, evaluate, on_best) -> None:
        self.model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            metrics = evaluate()
        self.emit({"step": position["step"], **metrics})
        best = position["best_eval_loss"]
        if best is None or metrics["eval_loss"] < best:
            position["best_eval_loss"] = metrics["eval_loss"]
            if on_best is not None:
                on_best()

    def save(self, out_dir: Path, position: dict, rng=None) -> None:
        save_checkpoint(out_dir / "checkpoints" / "last", self.params, self.optimizer, self.scheduler,
                        dict(position), rng)

    def emit(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)
