"""GRPO and RLOO: advantages from a group of answers to the same prompt, and the clipped
token-level policy loss with a k3 KL penalty (TRL's GRPOTrainer formulas, same names)."""

import torch

from .policy import kl_estimate, masked_mean

ADVANTAGES = ("grpo", "rloo")
SCALINGS = ("group", "batch", "none")
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")


def group_advantages(
    rewards: torch.Tensor, group_size: int, advantage: str = "grpo", scale: str = "group"
) -> torch.Tensor:
    """Per-answer advantages (N,) of rewards (N,) laid out as consecutive groups of group_size.

    grpo: reward - group mean, divided by the group's (or batch's) std + 1e-4 unless scale=none.
    rloo: reward - mean of the other answers to the same prompt (the leave-one-out baseline).
    """
    groups = rewards.view(-1, group_size)  # (P, k)
    if advantage == "rloo":
        baseline = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
        return (groups - baseline).reshape(-1)
    centred = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    if scale == "group":
        std = groups.std(1).repeat_interleave(group_size)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        return centred
    return centred / (std + 1e-4)


def grpo_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    advantages: torch.Tensor,
    beta: float,
    epsilon: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token loss, per-token k3 KL, clipped 0/1) over (B, T) log-probs of the sampled tokens;
    advantages (B,) are broadcast over each answer's tokens."""
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    a = advantages[:, None]
    loss = -torch.min(ratio * a, clipped_ratio * a)
    kl = kl_estimate(logps, reference_logps, "k3")
    if beta:
        loss = loss + beta * kl
    clipped = ((ratio * a) > (clipped_ratio * a)).float()  # the clip decided the minimum
    return loss, kl, clipped


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int
) -> tuple[torch.Tensor, int]:
    """(loss, number of terms it averages) of a per-token loss, as loss_type says: the loop
    weights micro-batches by those terms, which makes dapo/bnpo a mean over every token of the
    step and grpo a mean over every answer."""
    mask = mask.to(per_token.dtype)
    if loss_type in ("dapo", "bnpo"):
        n = int(mask.sum())
        return (per_token * mask).sum() / max(n, 1), n
    if loss_type == "grpo":
        return masked_mean(per_token, mask, dim=1).mean(), per_token.shape[0]
    if loss_type == "dr_grpo":
        rows = per_token.shape[0]
        return (per_token * mask).sum() / (rows * max_new_tokens), rows
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
