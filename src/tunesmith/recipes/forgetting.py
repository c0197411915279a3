"""Catastrophic forgetting: measured on general text, and the remedies any method can switch on.

- measure: eval.general_data's perplexity before and after training (general_perplexity_before,
  general_perplexity_after and their ratio in metrics.json);
- replay: data.replay examples mixed into the training set at data.replay_ratio;
- L2-SP / EWC: train.l2sp_lambda/2 * sum (w - w0)^2 and train.ewc_lambda/2 * sum F (w - w0)^2 over
  the trainable parameters, F the diagonal empirical Fisher on train.ewc_samples general texts
  (per-text squared gradients of the LM loss, averaged), w0 the weights training started from;
- LwF: train.lwf_lambda * KL(start || model) on the training batch's labelled positions, the start
  being the model with its adapters disabled (base weights trained in place are swapped back
  meanwhile), so no second copy of the model is kept.

The penalties wrap the task's Objective.loss; resume stays exact because w0 and F are recomputed
from the same starting weights before the loop restores its checkpoint.
"""

import logging
import math
import random
from dataclasses import replace
from typing import Optional

import torch

from ..data import collate, encode_records, read_records
from ..errors import ConfigError, DataError
from ..evaluation import mean_loss
from ..methods import disabled_adapters
from ..objectives.distill import tempered_logps
from ..objectives.distill_step import DistillSpec, distill_loss, head_logits, response_states
from ..objectives.sft import causal_lm_loss
from ..training.objective import Objective

log = logging.getLogger(__name__)


# ---- measuring -----------------------------------------------------------------------------------


def read_general_text(path: str, tokenizer, limit: int, max_length: int) -> list:
    """The first `limit` non-empty texts of `path`, encoded as plain text (every token a target)."""
    records = [r for r in read_records(path, "auto") if str(r.get("text", "")).strip()][:limit]
    if not records:
        raise DataError(f"{path}: no text records to measure perplexity on")
    examples, _ = encode_records(records, tokenizer, "text", max_length)
    return examples


def general_perplexity(model, examples: list, pad_id: int, batch_size: int) -> float:
    return math.exp(min(mean_loss(model, examples, pad_id, batch_size), 50.0))


class ForgettingMeter:
    """eval.general_data's perplexity before and after; no-op when it is not set."""

    def __init__(self, cfg, tokenizer):
        e = cfg.eval
        self.examples = (
            read_general_text(e.general_data, tokenizer, e.general_limit, e.general_max_length)
            if e.general_data
            else []
        )
        self.pad, self.batch_size, self.before = tokenizer.pad_token_id, e.batch_size, None

    def measure_before(self, model) -> None:
        if self.examples:
            self.before = general_perplexity(model, self.examples, self.pad, self.batch_size)
            log.info("general-text perplexity before training: %.3f", self.before)

    def metrics_after(self, model) -> dict:
        if not self.examples:
            return {}
        after = general_perplexity(model, self.examples, self.pad, self.batch_size)
        return {
            "general_perplexity_before": self.before,
            "general_perplexity_after": after,
            "general_perplexity_ratio": after / self.before,
            "general_texts": len(self.examples),
        }


# ---- replay --------------------------------------------------------------------------------------


def mix_replay(train: list, data_cfg, tokenizer, seed: int) -> list:
    """train plus replay examples making up data.replay_ratio of the result (seeded; the replay
    file is cycled when it is shorter). The loop's seeded epoch order then mixes them into
    batches, so a resume sees the same mixture."""
    if not data_cfg.replay:
        return train
    records = read_records(data_cfg.replay, "auto")
    replay, _ = encode_records(records, tokenizer, "auto", data_cfg.max_length)
    if not replay:
        raise DataError(f"data.replay {data_cfg.replay}: no usable examples")
    wanted = round(len(train) * data_cfg.replay_ratio / (1 - data_cfg.replay_ratio))
    order = list(range(len(replay)))
    random.Random(seed).shuffle(order)
    picked = [replay[order[i % len(order)]] for i in range(wanted)]
    log.info("replay: %d examples of %s mixed into %d", len(picked), data_cfg.replay, len(train))
    return train + picked


# ---- penalties towards the start -------------------------------------------------------------------


class StartAnchor:
    """The trainable weights at the start (w0), and the EWC Fisher diagonal when asked for."""

    def __init__(self, model, l2sp: float, ewc: float, fisher: Optional[dict] = None):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.l2sp, self.ewc, self.fisher = l2sp, ewc, fisher

    def penalty(self) -> torch.Tensor:
        """l2sp/2 * sum (w - w0)^2 + ewc/2 * sum F (w - w0)^2 (0 at the start)."""
        total = torch.zeros((), dtype=torch.float32)
        for name, p in self.params.items():
            delta = (p - self.start[name]).float()
            if self.l2sp:
                total = total + 0.5 * self.l2sp * delta.pow(2).sum()
            if self.ewc:
                total = total + 0.5 * self.ewc * (self.fisher[name] * delta.pow(2)).sum()
        return total


def diagonal_fisher(model, examples: list, pad_id: int) -> dict:
    """Mean over `examples` of each trainable parameter's squared gradient of the LM loss."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    for example in examples:
        model.zero_grad(set_to_none=True)
        batch = collate([example], pad_id)
        loss, _ = causal_lm_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.float().pow(2) / len(examples)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher


class StartModelTargets:
    """LwF's targets: the model's own distribution with its adapters disabled, chunk by chunk."""

    def __init__(self, model, batch: dict):
        self.model = model
        with torch.no_grad(), disabled_adapters(model):
            self.states = response_states(model, batch)

    @torch.no_grad()
    def chunk(self, start: int, end: int) -> tuple:
        with disabled_adapters(self.model):  # the head may carry an adapter too
            return (tempered_logps(head_logits(self.states, start, end)),)


def lwf_divergence(model, batch: dict) -> torch.Tensor:
    """Mean KL(start || model) per labelled position of `batch`."""
    loss, _, _ = distill_loss(model, batch, StartModelTargets(model, batch), DistillSpec())
    return loss


def uses_weights_before_training(cfg) -> bool:
    """Whether the measure or the remedies read the model before the loop starts: the perplexity
    before training, the start anchor (L2-SP, EWC and its Fisher) and LwF's start outputs."""
    t = cfg.train
    return bool(cfg.eval.general_data or t.l2sp_lambda or t.ewc_lambda or t.lwf_lambda)


def with_remedies(cfg, model, tokenizer, objective: Objective, general: list) -> Objective:
    """The objective with train.l2sp_lambda, train.ewc_lambda and train.lwf_lambda added to its
    loss (unchanged when all are 0). general: encoded general texts for the EWC Fisher."""
    t = cfg.train
    if not (t.l2sp_lambda or t.ewc_lambda or t.lwf_lambda):
        return objective
    fisher = None
    if t.ewc_lambda:
        if not general:
            raise ConfigError(
                "train.ewc_lambda needs general text for its Fisher estimate: set "
                "eval.general_data (e.g. ../shared/data/wikitext2/test.txt) or data.replay"
            )
        fisher = diagonal_fisher(model, general[: t.ewc_samples], tokenizer.pad_token_id)
        log.info("EWC: diagonal Fisher from %d texts", min(len(general), t.ewc_samples))
    anchor = StartAnchor(model, t.l2sp_lambda, t.ewc_lambda, fisher)
    task_loss = objective.loss

    def loss(model, batch):
        value, n, *extra = task_loss(model, batch)
        metrics = dict(extra[0]) if extra else {}
        if t.l2sp_lambda or t.ewc_lambda:
            penalty = anchor.penalty()
            value = value + penalty
            metrics["start_penalty"] = float(penalty.detach())
        if t.lwf_lambda:
            lwf = lwf_divergence(model, batch)
            value = value + t.lwf_lambda * lwf
            metrics["lwf_kl"] = float(lwf.detach())
        return value, n, metrics

    # LwF's targets come from the starting model
    uses_start = objective.uses_starting_weights or bool(t.lwf_lambda)
    return replace(objective, loss=loss, uses_starting_weights=uses_start)


def general_for_fisher(cfg, tokenizer, meter: ForgettingMeter) -> list:
    """General texts for the EWC Fisher: eval.general_data's, else data.replay's."""
    if meter.examples or not cfg.data.replay:
        return meter.examples
    return read_general_text(
        cfg.data.replay, tokenizer, cfg.train.ewc_samples, cfg.eval.general_max_length
    )
