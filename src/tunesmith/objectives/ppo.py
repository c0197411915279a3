"""PPO's pieces as functions of tensors (TRL's PPOTrainer formulas, Ziegler et al.'s KL controller).

Tensors are (B, T) over positions, with a bool mask of the response tokens (each row's response is
one contiguous run; positions outside it carry nothing). Notable:
- per-token rewards: -kl_coef * KL_t everywhere in the response, plus the sequence's score on its
  last token;
- GAE treats every masked-out position as value 0 and reward 0, so a row shorter than the batch
  bootstraps from 0 after its last token;
- the clipped losses are masked means over the tokens of a (micro-)batch.
"""

import torch

from .policy import masked_mean


def token_rewards(
    kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """-kl_coef * kl (B, T) on the response tokens, plus scores (B,) on each row's last one."""
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    last = mask.long().cumsum(1).argmax(1)  # (B,) the first position of the row's maximum count
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns = advantages + values), both (B, T) and 0 outside the mask, by
    generalised advantage estimation: delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}."""
    mask = mask.bool()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    values = torch.where(mask, values, torch.zeros_like(values))
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    next_values = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_values = values[:, t]
    advantages = torch.where(mask, advantages, torch.zeros_like(advantages))
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict]:
    """(masked mean of max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)), {clipfrac, approxkl}),
    ratio = exp(logps - old_logps); approxkl = masked mean of 0.5 (log ratio)^2."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy/clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
            "policy/approxkl": float(masked_mean(0.5 * log_ratio**2, mask)),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict]:
    """(0.5 * masked mean of max((V - R)^2, (V_clip - R)^2), {val/clipfrac}), where V_clip is V
    kept within cliprange_value of the rollout's values."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = float(masked_mean((clipped > unclipped).float(), mask))
    return loss, {"val/clipfrac": clipfrac}


class AdaptiveKL:
    """The KL coefficient, fixed or adapted towards a target KL (Ziegler et al. 2019):
    error = clip(kl / target - 1, -0.2, 0.2); coef *= 1 + error * n / horizon after each batch of
    n rollouts. Its state (state_dict) goes into every checkpoint, so a resumed run continues from
    the coefficient it had."""

    def __init__(self, coef: float, target=None, horizon: int = 10000):
        self.value, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict:
        return {"kl_coef": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["kl_coef"])
