"""GRPO/RLOO advantages and the clipped token loss on fixed numbers, against TRL's formulas."""

import pytest
import torch
from trl.trainer.utils import nanstd

from tunesmith.objectives.grpo import aggregate, group_advantages, grpo_token_loss

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])  # two groups of four


def test_group_advantages_equal_trls():
    groups = REWARDS.view(-1, 4)
    mean = groups.mean(1).repeat_interleave(4)
    std = nanstd(groups, dim=1).repeat_interleave(4)
    torch.testing.assert_close(group_advantages(REWARDS, 4), (REWARDS - mean) / (std + 1e-4))
    batch_std = nanstd(REWARDS)
    torch.testing.assert_close(
        group_advantages(REWARDS, 4, scale="batch"), (REWARDS - mean) / (batch_std + 1e-4)
    )
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale="none"), REWARDS - mean)


def test_rloo_is_the_reward_minus_the_mean_of_the_others():
    expected = []
    for g in range(2):
        group = REWARDS[4 * g : 4 * g + 4].tolist()
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1 :]
            expected.append(r - sum(others) / 3)
    torch.testing.assert_close(group_advantages(REWARDS, 4, "rloo"), torch.tensor(expected))


def test_a_group_with_equal_rewards_has_no_advantage():
    assert group_advantages(torch.ones(4), 4).abs().max() == 0


def _trl_loss(logps, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, max_len):
    # grpo_trainer._compute_loss (token-level importance sampling), written out on its own.
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    per_token = per_token + beta * kl
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * max_len)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
def test_the_token_loss_equals_trls(loss_type):
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 5, generator=g) * 3
    old = logps + torch.randn(3, 5, generator=g) * 0.3  # ratios both inside and outside the clip
    ref = logps + torch.randn(3, 5, generator=g) * 0.5
    adv = torch.tensor([1.5, -0.7, 0.2])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    per_token, kl, clipped = grpo_token_loss(logps, old, ref, adv, 0.04, 0.2, 0.28)
    loss, _ = aggregate(per_token, mask, loss_type, 5)
    expected = _trl_loss(logps, old, ref, adv, mask, 0.04, 0.2, 0.28, loss_type, 5)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert 0 < float((clipped * mask).sum()) < float(mask.sum())
    assert (kl >= 0).all()


def test_at_the_sampler_the_gradient_is_the_advantage_weighted_score():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    per_token, _, _ = grpo_token_loss(
        logps, logps.detach(), logps.detach(), torch.tensor([2.0]), 0.0, 0.2, 0.2
    )
    per_token.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-2.0, -2.0]]))
