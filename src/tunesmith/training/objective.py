"""What a task trains, as one object the loop takes: how examples become a batch, and a batch a loss.

Every task (SFT, classification, preference tuning, distillation ...) hands `train()` an Objective;
the loop owns everything else (order, accumulation, clipping, schedules, checkpoints, hooks).
"""

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Optional

import torch

from ..data.collate import collate
from ..methods.registry import has_regularizers, method_regularizer
from ..objectives.sft import causal_lm_loss


@dataclass
class Objective:
    """collate(examples) -> batch; loss(model, batch) -> (mean loss, number of loss terms) or
    (mean loss, number of terms, {metric: mean value}) when the task logs more than the loss
    (the loop averages those over the logging window, weighted by the term counts).

    lengths: tokens per example, for data.group_by_length (None: seeded random order);
    strata: a class per example that batches grouped by length keep mixed (None: length alone).

    updates (on-policy tasks: PPO, GRPO): updates(model, micro_batches) -> the micro-batches of
    each optimizer update the step takes, e.g. rollouts sampled from the model for the step's
    prompts, cut into minibatches, for several epochs. Called with the model in eval mode and
    gradients off; the loop switches to train mode for each update. None: one update of the
    collated micro-batches. updates_per_step must match, for the learning-rate schedule.

    splittable: the loss is a mean over terms that do not depend on each other's batch (SFT, DPO,
    reward, classification), so the loop may run a large micro-batch as several passes
    (training/passes.py). False for losses that couple a batch's examples (KTO, PPO).

    state: what the objective carries from one step to the next (PPO's adaptive KL coefficient),
    an object with state_dict() -> plain JSON values and load_state_dict(dict). The loop saves it
    in every checkpoint as it stood before the step and restores it on resume. None: stateless.

    lr_scale(parameter name) -> multiplier of train.lr for that parameter (one optimizer group per
    multiplier), e.g. a new classification head learning faster than the pretrained body. None: 1.

    uses_starting_weights: the loss (or what the task does after training) runs the model as it
    started, through `disabled_adapters` (DPO's and KTO's reference, LwF, on-policy baselines).
    False lets the loop drop the copies that methods training base weights in place keep of their
    starting values (`full`: one copy of the whole model) before the first step.
    """

    collate: Callable[[list], dict]
    loss: Callable
    lengths: Optional[list[int]] = field(default=None, repr=False)
    updates: Optional[Callable[[object, list], Iterable[list]]] = field(default=None, repr=False)
    updates_per_step: int = 1
    state: Optional[object] = field(default=None, repr=False)
    splittable: bool = False
    lr_scale: Optional[Callable[[str], float]] = field(default=None, repr=False)
    strata: Optional[list] = field(default=None, repr=False)
    uses_starting_weights: bool = True

    @staticmethod
    def tokens(batch: dict) -> int:
        """Real (non-padding) tokens of a batch, for tokens/s."""
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else 0


class WeightedMeans:
    """Means of task metrics over batches, each batch weighted by its loss terms. A metric a batch
    lacks (KTO's rewards/rejected in a batch of desirable examples only) is averaged over the
    batches that have it."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict, weight: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def merge(self, other: "WeightedMeans") -> None:
        for key in other.sums:
            self.sums[key] = self.sums.get(key, 0.0) + other.sums[key]
            self.weights[key] = self.weights.get(key, 0.0) + other.weights[key]

    def means(self) -> dict[str, float]:
        return {key: total / max(self.weights[key], 1e-12) for key, total in self.sums.items()}


def sft_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Next-token loss on labelled tokens: (mean loss, number of tokens)."""
    return causal_lm_loss(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        position_ids=batch.get("position_ids"),  # a packed batch
        model_kwargs={"task_ids": batch["task_ids"]} if "task_ids" in batch else None,
    )


def sft_objective(
    pad_id: int, collate_fn: Optional[Callable] = None, lengths: Optional[list[int]] = None
) -> Objective:
    """Language modelling on `Example`s: padded batches (or collate_fn, e.g. packed rows)."""
    return Objective(
        collate_fn or partial(collate, pad_id=pad_id),
        sft_loss,
        lengths,
        splittable=True,
        uses_starting_weights=False,
    )


def with_method_regularizers(objective: Objective, model) -> Objective:
    """objective, its training loss plus the loaded methods' regularisers (AdaLoRA's orthogonality
    penalty), logged as `method_regularizer`; unchanged when no loaded method has one.

    Added to each micro-batch's mean loss: the loop weights micro-batches by their term counts,
    so the update's gradient is that of (mean loss + regulariser), as in PEFT.
    """
    if not has_regularizers(model):
        return objective

    def loss(m, batch: dict):
        mean, n, *extra = objective.loss(m, batch)
        reg = method_regularizer(m)
        if reg is None:  # e.g. a zero penalty weight
            return (mean, n, *extra)
        metrics = {**(extra[0] if extra else {}), "method_regularizer": float(reg.detach())}
        return mean + reg.to(mean.dtype), n, metrics

    return dataclasses.replace(objective, loss=loss)
