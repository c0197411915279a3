"""The training loop: AdamW, schedule, accumulation, clipping, periodic eval, exact resume.

Data order is a seeded permutation per epoch, so a resumed run replays exactly the batches the
interrupted run would have seen; the checkpoint also restores RNG (dropout) state. The loop calls
the methods' step hooks and collects their reports itself, so no task can forget them.

Under torchrun (distributed.py) each micro-batch of the epoch order is a global one of
processes x batch_size examples, of which each rank takes its slice; losses, term and token counts
are summed over the ranks, and only rank 0 writes metrics and checkpoints.
"""

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config.schema import TrainConfig
from ..errors import ConfigError, TrainingError
from ..methods.base_params import release_starting_weights
from ..methods.registry import (
    MethodStates,
    method_reports,
    run_step_hooks,
    run_train_begin_hooks,
    run_update_hooks,
)
from ..utils.hardware import autocast
from ..utils.modules import enable_activation_checkpointing
from ..utils.seeding import rng_state
from .batches import micro_batches, steps_per_epoch, total_steps
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .distributed import SingleProcess, global_slice, parallel_for
from .objective import Objective, WeightedMeans, with_method_regularizers
from .optim import build_optimizer, build_scheduler
from .passes import collated_passes
from .selection import BestSelection, check_selection, selection_for
from .sinks import default_sinks
from .tallies import StepTotals, Window

log = logging.getLogger(__name__)


@dataclass
class LoopPosition:
    """Where a run stands; saved in every checkpoint (plain JSON types only)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    batch: int = 0  # index in that epoch of the next micro-batch
    best_eval_loss: Optional[float] = None
    global_batch: Optional[int] = None  # examples per micro-batch over all ranks (None: unknown)
    # Totals over every session of the run, so a resumed (or re-run finished) run reports them all.
    seconds: float = 0.0  # training time
    tokens: int = 0  # real tokens trained on
    last_loss: Optional[float] = None  # loss of the last step
    window_loss: Optional[float] = None  # mean loss of the last logging window


@dataclass
class TrainResult:
    steps: int
    final_loss: float  # mean loss of the last logging window (train.log_every steps)
    last_step_loss: float
    best_eval_loss: Optional[float]
    seconds: float
    tokens: int
    resumed_from: int
    method_metrics: dict = field(
        default_factory=dict
    )  # the methods' reports (e.g. sparsity reached)
    best_step: Optional[int] = None  # step of the best evaluation (train.best_metric)
    best_value: Optional[float] = None  # its train.best_metric
    stopped_early: bool = False  # train.early_stopping_patience ended the run


def train(
    model,
    examples: list,
    cfg: TrainConfig,
    out_dir: Path,
    objective: Objective,
    evaluate: Optional[Callable[[], dict]] = None,
    on_best: Optional[Callable[[], None]] = None,
    progress: bool = False,
) -> TrainResult:
    """Train the parameters of `model` that require grad on `examples` with `objective`;
    checkpoints in out_dir/checkpoints.

    evaluate() returns a dict with 'eval_loss'; on_best() is called when it improves. Under torchrun
    every rank calls evaluate() at the same steps, on whole weights, so it may split the held-out
    examples across the ranks and sum what they score (held_out.py). Micro-batches are weighted by
    their loss-term counts. Raises TrainingError when the loss or the gradient norm becomes NaN/inf
    (the last checkpoint is left as it was).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing to train: the method left no parameter with requires_grad")
    if cfg.activation_checkpointing is True:  # "auto" unresolved (a direct API call): off
        enable_activation_checkpointing(model)
    objective = with_method_regularizers(objective, model)
    if not objective.uses_starting_weights:
        release_starting_weights(model)  # nothing runs the starting model: free `full`'s copy
    par = parallel_for(model, objective, cfg)  # FSDP replaces the parameters
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    steps = total_steps(len(examples), cfg, par.world)
    optimizer = build_optimizer(params, cfg, objective.lr_scale)
    scheduler = build_scheduler(optimizer, cfg, steps * objective.updates_per_step)
    run_train_begin_hooks(model, steps * objective.updates_per_step)
    position = LoopPosition(global_batch=cfg.batch_size * par.world)
    ckpt = find_checkpoint(out_dir) if cfg.resume else None
    if ckpt is not None:
        load = partial(load_checkpoint, method_state=MethodStates(model))
        saved = par.load(ckpt, params, optimizer, scheduler, objective.state, load)
        position = _rebased(LoopPosition(**saved), position.global_batch, ckpt)
        log.info("resuming from %s at step %d", ckpt, position.step)
    resumed_from = position.step
    check_selection(cfg, evaluate)
    sinks = default_sinks(out_dir, resumed_from, steps, progress) if par.rank == 0 else []
    best = selection_for(cfg, out_dir, par.rank, params, resumed=resumed_from > 0)
    loop = _Loop(model, examples, cfg, params, optimizer, scheduler, sinks, objective, par, best)
    try:
        loop.run(position, steps, out_dir, evaluate, on_best)
    finally:
        for sink in sinks:
            sink.close()
    loop.best.restore(params)
    par.finish()
    return TrainResult(
        steps,
        loop.window_loss,
        loop.last_loss,
        position.best_eval_loss,
        loop.seconds,
        loop.tokens,
        resumed_from,
        method_reports(model),
        loop.best.step,
        loop.best.value,
        loop.stopped_early,
    )


def _nan_for_none(*values):
    return [float("nan") if v is None else v for v in values]


def _rebased(position: LoopPosition, global_batch: int, ckpt: Path) -> LoopPosition:
    """The position in micro-batches of `global_batch` examples. A checkpoint written with another
    number of processes continues at the same example of its epoch, which must start a micro-batch
    of this run."""
    saved = position.global_batch or global_batch  # older checkpoints: one process, same batch
    offset = position.batch * saved
    if offset % global_batch:
        raise ConfigError(
            f"checkpoint {ckpt} stopped {offset} examples into epoch {position.epoch}, which is not "
            f"a multiple of this run's global micro-batch ({global_batch} = processes x "
            f"train.batch_size); resume with a number of processes or a train.batch_size that "
            f"divides it, or set train.resume=false"
        )
    position.batch, position.global_batch = offset // global_batch, global_batch
    return position


class _Loop:
    def __init__(
        self,
        model,
        examples,
        cfg,
        params,
        optimizer,
        scheduler,
        sinks,
        objective: Objective,
        par: SingleProcess,
        best: BestSelection,
    ):
        self.model, self.examples, self.cfg, self.objective = model, examples, cfg, objective
        self.par = par
        self.params, self.optimizer, self.scheduler, self.sinks = (
            params,
            optimizer,
            scheduler,
            sinks,
        )
        # Splitting is for the loop's own updates; on-policy objectives cut their rollouts themselves.
        splittable = objective.splittable and objective.updates is None
        self.pass_tokens = cfg.tokens_per_pass if splittable else 0
        self.updated_in_step = False
        self.best, self.stopped_early = best, False
        selecting = cfg.keep_best or cfg.early_stopping_patience > 0
        # with best-model selection and no train.eval_every: evaluate at every epoch's end
        self.eval_every = cfg.eval_every or (
            steps_per_epoch(len(examples), cfg, par.world) if selecting else 0
        )

    def run(self, position: LoopPosition, steps: int, out_dir: Path, evaluate, on_best) -> None:
        cfg = self.cfg
        self.seconds, self.tokens = position.seconds, position.tokens
        self.last_loss, self.window_loss = _nan_for_none(position.last_loss, position.window_loss)
        batches = micro_batches(
            len(self.examples),
            cfg,
            position.epoch,
            position.batch,
            self.objective.lengths,
            self.par.world,
            self.objective.strata,
        )
        window = Window()
        while position.step < steps:
            group = [next(batches) for _ in range(cfg.grad_accum)]
            rng_before, state_before = rng_state(), self.objective_state()
            try:
                start = time.perf_counter()
                loss, _, tokens, metrics = self.step([g[2] for g in group], position.step)
            except KeyboardInterrupt:
                # The step in flight is discarded (its RNG draws too), so a resume replays it exactly;
                # unless it already changed the weights (an on-policy step's first updates): then
                # the last checkpoint stays the resume point.
                if self.updated_in_step:
                    log.warning(
                        "interrupted during the updates of step %d: a resume starts from the last "
                        "checkpoint",
                        position.step + 1,
                    )
                else:
                    self.save(out_dir, position, rng_before, state_before)
                raise
            elapsed = time.perf_counter() - start
            position.step, position.epoch, position.batch = (
                position.step + 1,
                group[-1][0],
                group[-1][1] + 1,
            )
            run_step_hooks(self.model, position.step)
            window.add(loss, metrics, tokens, elapsed)
            self.seconds, self.tokens, self.last_loss = (
                self.seconds + elapsed,
                self.tokens + tokens,
                loss,
            )
            step = position.step
            if step % cfg.log_every == 0 or step == steps:
                record = window.record()
                self.window_loss = record["loss"]
                self.emit(
                    {
                        "step": step,
                        **record,
                        "lr": self.scheduler.get_last_lr()[0],
                        "epoch": position.epoch,
                    }
                )
                window = Window()
            at_eval = evaluate is not None and (
                (self.eval_every and step % self.eval_every == 0) or step == steps
            )
            if at_eval:
                self.run_eval(position, evaluate, on_best)
            stop = at_eval and 0 < cfg.early_stopping_patience <= self.best.stale
            if at_eval or step == steps or stop or (cfg.save_every and step % cfg.save_every == 0):
                self.save(out_dir, position)
            if stop:
                log.info(
                    "early stop at step %d: %s not better for %d evaluations (best %.4f at step %d)",
                    step,
                    cfg.best_metric,
                    self.best.stale,
                    self.best.value,
                    self.best.step,
                )
                self.stopped_early = True
                break

    def step(self, groups: list[list[int]], step: int) -> tuple[float, int, int, WeightedMeans]:
        """One loop step over grad_accum micro-batches: (mean loss over all their loss terms,
        terms, real tokens, task metrics). Usually one optimizer update; an on-policy objective
        (Objective.updates) makes its rollouts here and takes several."""
        mine = [global_slice(idx, self.par.rank, self.par.world) for idx in groups]
        batches = [
            batch
            for idx in mine
            for batch in collated_passes(
                self.objective, self.examples, idx, self.pass_tokens, self.par
            )
        ]
        totals = StepTotals()
        self.updated_in_step = False
        ups = self.objective.updates_per_step
        for k, update_batches in enumerate(self.planned_updates(batches)):
            self.update(update_batches, step, totals, step * ups + k + 1)
            self.updated_in_step = True
        if self.par.world > 1:
            totals = StepTotals.summed(self.par.gather(totals))
        return totals.loss / max(totals.terms, 1), totals.terms, totals.tokens, totals.metrics

    def planned_updates(self, batches: list[dict]) -> list[list[dict]]:
        if self.objective.updates is None:
            return [batches]
        self.model.eval()
        with self.par.full_weights(), torch.no_grad(), autocast(self.cfg.precision):
            return list(self.objective.updates(self.model, batches))  # rollouts: whole weights

    def update(self, batches: list[dict], step: int, totals: "StepTotals", index: int) -> None:
        """Optimizer update `index` (from 1): each micro-batch's summed loss is back-propagated,
        then gradients are divided by the update's term count, clipped and applied; the methods'
        update hooks see them before they are cleared."""
        self.model.train()
        n_terms = 0
        self.par.check_same(len(batches), "the micro-batches of an update")
        for i, batch in enumerate(batches):
            with self.par.accumulating(last=i == len(batches) - 1):
                with autocast(self.cfg.precision):
                    loss, n, *extra = self.par.loss(batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {step + 1}; training stopped and "
                        f"the last checkpoint was kept. Lower train.lr or check the data"
                    )
                self.par.backward(loss * n)
            n_terms += n
            totals.add(loss.item(), n, extra[0] if extra else {}, self.objective.tokens(batch))
        # Gradients hold the sum of (loss x terms) over this update's micro-batches (of all ranks,
        # times par.grad_sum_factor); divided by all the terms, they are those of the mean loss.
        divisor = max(self.par.sum([n_terms])[0], 1) / self.par.grad_sum_factor
        for p in self.params.values():
            if p.grad is not None:
                p.grad.div_(divisor)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = self.par.norm(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm))
        if not torch.isfinite(norm):
            raise TrainingError(
                f"the gradient norm became {norm.item()} at step {step + 1}; training stopped "
                f"and the last checkpoint was kept. Lower train.lr or check the data"
            )
        self.optimizer.step()
        self.scheduler.step()
        run_update_hooks(self.model, index)  # AdaLoRA's importance scores need the gradients
        self.optimizer.zero_grad(set_to_none=True)

    def run_eval(self, position: LoopPosition, evaluate, on_best) -> None:
        self.model.eval()
        with self.par.full_weights(), torch.no_grad(), autocast(self.cfg.precision):
            metrics = evaluate()
        self.emit({"step": position.step, **metrics})
        self.best.update(metrics, position.step, self.params)
        if position.best_eval_loss is None or metrics["eval_loss"] < position.best_eval_loss:
            position.best_eval_loss = metrics["eval_loss"]
            if on_best is not None:
                with self.par.full_weights():
                    on_best()

    def objective_state(self) -> Optional[dict]:
        state = self.objective.state
        return None if state is None else state.state_dict()

    def save(self, out_dir: Path, position: LoopPosition, rng=None, objective_state=None) -> None:
        self.par.save(
            partial(save_checkpoint, method_state=MethodStates(self.model)),
            out_dir / "checkpoints" / "last",
            self.params,
            self.optimizer,
            self.scheduler,
            self.totals_into(position),
            rng,
            objective_state if objective_state is not None else self.objective_state(),
        )

    def totals_into(self, position: LoopPosition) -> dict:
        """The position as saved: with the run's totals up to now."""
        position.seconds, position.tokens = self.seconds, self.tokens
        position.last_loss, position.window_loss = (
            None if math.isnan(x) else x for x in (self.last_loss, self.window_loss)
        )
        return dataclasses.asdict(position)

    def emit(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)
