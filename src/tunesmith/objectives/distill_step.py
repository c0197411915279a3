"""The distillation loss of one batch: the student's response positions against the teacher's.

The output head runs on the response positions only and in chunks; each chunk's student logits are
recomputed in backward instead of kept, and the teacher's chunk is made (or read from its top-k
cache) just in time, so a step never holds (N, vocab) logits of either model.

loss = (1 - alpha) * T^2 * divergence(student_T, teacher_T) + alpha * cross-entropy(student, labels)
per response token; the T^2 keeps the soft term's gradients at the scale of the hard one
(Hinton et al. 2015) and is applied to all three divergences.
"""

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .distill import divergence, tempered_logps, topk_buckets
from .sft import IGNORE, _inputs, supports_hidden_path


@dataclass(frozen=True)
class DistillSpec:
    loss: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    temperature: float = 1.0
    alpha: float = 0.0  # weight of the hard-label cross-entropy
    beta: float = 0.5  # jsd only
    chunk_size: int = 256


class TeacherTargets(Protocol):
    """The teacher's distribution at the batch's response positions, in the order of the mask."""

    def chunk(self, start: int, end: int) -> tuple:
        """(log-probs (n, V),) from the live teacher, or (ids (n, k), log-probs (n, k)) cached."""


@dataclass
class ResponseStates:
    """What the output head reads at the response positions, and which positions those are."""

    inputs: torch.Tensor  # (N, H) hidden states, or (N, V) logits when head is None
    head: Optional[torch.nn.Module]
    mask: torch.Tensor  # (B, T-1) bool: position t predicts a labelled token
    targets: torch.Tensor  # (N,) the labelled tokens


def response_states(model, batch: dict) -> ResponseStates:
    """Hidden states (or logits, for models whose head is not a plain projection) at the
    positions that predict a labelled token."""
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE  # (B, T-1)
    inputs = _inputs(batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
    if supports_hidden_path(model):
        hidden = model.base_model(**inputs).last_hidden_state[:, :-1]  # (B, T-1, H)
        return ResponseStates(
            hidden[mask], model.get_output_embeddings(), mask, labels[:, 1:][mask]
        )
    logits = model(**inputs).logits[:, :-1]  # (B, T-1, V)
    return ResponseStates(logits[mask], None, mask, labels[:, 1:][mask])


def head_logits(states: ResponseStates, start: int, end: int) -> torch.Tensor:
    x = states.inputs[start:end]
    return states.head(x) if states.head is not None else x


def distill_loss(model, batch: dict, teacher: TeacherTargets, spec: DistillSpec):
    """(mean loss per response token, number of tokens, {kd_loss, ce_loss}) of the student
    `model` on `batch` against `teacher`'s targets for the same positions."""
    states = response_states(model, batch)
    n = int(states.targets.numel())
    if n == 0:
        zero = states.inputs.sum() * 0.0
        return zero, 0, {}
    kd_total = states.inputs.new_zeros((), dtype=torch.float32)
    ce_total = states.inputs.new_zeros((), dtype=torch.float32)
    for start in range(0, n, spec.chunk_size):
        end = min(start + spec.chunk_size, n)
        args = (states.head, states.inputs[start:end], states.targets[start:end])
        target = teacher.chunk(start, end)
        if torch.is_grad_enabled():
            kd, ce = checkpoint(_chunk_terms, *args, spec, *target, use_reentrant=False)
        else:
            kd, ce = _chunk_terms(*args, spec, *target)
        kd_total, ce_total = kd_total + kd, ce_total + ce
    soft = spec.temperature**2 * kd_total
    loss = ((1 - spec.alpha) * soft + spec.alpha * ce_total) / n
    return loss, n, {"kd_loss": float(soft.detach()) / n, "ce_loss": float(ce_total.detach()) / n}


def _chunk_terms(head, x, targets, spec: DistillSpec, *teacher) -> tuple:
    """(summed divergence, summed cross-entropy) of one chunk of positions."""
    logits = (head(x) if head is not None else x).float()  # (n, V)
    student = tempered_logps(logits, spec.temperature)
    if len(teacher) == 1:  # the live teacher's full distribution
        s, t = student, teacher[0]
    else:  # the cached top-k: compare on k + 1 buckets
        s, t = topk_buckets(student, *teacher)
    kd = divergence(s, t.to(s.dtype), spec.loss, spec.beta).sum()
    ce = F.cross_entropy(logits, targets, reduction="sum") if spec.alpha > 0 else kd * 0.0
    return kd, ce


class LiveTeacher:
    """Targets computed by the teacher model on the same batch, one chunk at a time."""

    def __init__(self, teacher, batch: dict, temperature: float):
        with torch.no_grad():
            self.states = response_states(teacher, batch)
        self.temperature = temperature

    @torch.no_grad()
    def chunk(self, start: int, end: int) -> tuple:
        return (tempered_logps(head_logits(self.states, start, end), self.temperature),)


class CachedTeacher:
    """Targets read from the batch: the teacher's top-k ids and log-probs per response position."""

    def __init__(self, ids: torch.Tensor, logps: torch.Tensor):
        self.ids, self.logps = ids, logps  # (N, k) each

    def chunk(self, start: int, end: int) -> tuple:
        return self.ids[start:end], self.logps[start:end]
