"""Distillation divergences between a student's and a teacher's next-token distributions.

Pure functions of log-probabilities, one row per (response) position:
- forward KL, KL(teacher || student): mass-covering (Hinton et al.'s soft targets);
- reverse KL, KL(student || teacher): mode-seeking;
- the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024) with weight beta:
  beta * KL(teacher || m) + (1 - beta) * KL(student || m), m = beta * teacher + (1 - beta) * student,
  which is forward KL at beta = 0 and reverse KL at beta = 1 (TRL's convention).

A teacher known only by its top-k log-probs (the on-disk cache) is compared on k + 1 buckets: the
k cached tokens and "everything else", whose mass is what the k tokens leave; `topk_buckets`
collapses both distributions onto those buckets. That is a lower bound of the full divergence and
equals it when the teacher's mass outside the top k is zero.
"""

import math

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "jsd")
_TINY = 1e-12  # floor of a bucket's probability, so log(0) never reaches a 0 * inf product


def tempered_logps(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) over the last dimension, in float32 (float64 stays float64)."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    return F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def kl(p_logps: torch.Tensor, q_logps: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (N,), from log-probabilities (N, M)."""
    return F.kl_div(q_logps, p_logps, reduction="none", log_target=True).sum(-1)


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's generalised JSD per row (N,) from log-probabilities (N, M)."""
    if beta == 0:
        return kl(teacher, student)
    if beta == 1:
        return kl(student, teacher)
    mixture = torch.logsumexp(
        torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]),
        dim=0,
    )  # (N, M): log(beta * p_teacher + (1 - beta) * p_student)
    return beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)


def divergence(student: torch.Tensor, teacher: torch.Tensor, loss: str, beta: float = 0.5):
    """Per-row divergence (N,) named by `loss` (forward_kl, reverse_kl, jsd) between the student's
    and the teacher's log-probabilities (N, M)."""
    if loss == "forward_kl":
        return kl(teacher, student)
    if loss == "reverse_kl":
        return kl(student, teacher)
    if loss == "jsd":
        return generalized_jsd(student, teacher, beta)
    raise ValueError(f"unknown distillation loss {loss!r}; one of {', '.join(LOSSES)}")


def _with_rest(logps: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of k tokens -> (N, k + 1): the k, then log of the mass they leave."""
    covered = torch.logsumexp(logps, dim=-1, keepdim=True).clamp(max=0.0)  # (N, 1)
    rest = torch.log((-torch.expm1(covered)).clamp(min=_TINY))  # log(1 - covered mass)
    return torch.cat([logps, rest], dim=-1)


def topk_buckets(
    student_logps: torch.Tensor, teacher_ids: torch.Tensor, teacher_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions on the teacher's k + 1 buckets: (student (N, k+1), teacher (N, k+1)).

    student_logps: (N, V) full log-probs; teacher_ids / teacher_logps: (N, k) the teacher's top-k
    token ids and their log-probs at the same temperature.
    """
    picked = student_logps.gather(-1, teacher_ids.long())  # (N, k)
    return _with_rest(picked), _with_rest(teacher_logps.to(picked.dtype))


def teacher_topk(teacher_logps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, k) int32, log-probs (N, k)) of the teacher's k most probable tokens."""
    values, ids = teacher_logps.topk(min(k, teacher_logps.size(-1)), dim=-1)
    return ids.to(torch.int32), values
