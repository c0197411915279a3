"""PPO's math on fixed numbers against hand-written references (explicit loops, TRL's formulas):
GAE over rows of different lengths, whitening, the clipped losses, per-token rewards, the adaptive
KL controller. (TRL 1.16 removed its PPO trainer and masked_whiten, so the references are ours.)"""

import math

import pytest
import torch

from tunesmith.objectives.policy import masked_whiten
from tunesmith.objectives.ppo import (
    AdaptiveKL,
    gae,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)

# Two rows, width 6: row 0 has a prompt position then 4 response tokens; row 1 is shorter
# (2 prompt positions, 2 response tokens, then padding).
MASK = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
REWARDS = torch.tensor([[9.0, 0.1, -0.2, 0.3, 1.5, 9.0], [9.0, 9.0, 0.05, -0.7, 9.0, 9.0]])
VALUES = torch.tensor([[5.0, 0.4, 0.2, -0.1, 0.6, 5.0], [5.0, 5.0, 0.3, 0.8, 5.0, 5.0]])


def _gae_reference(rewards, values, mask, gamma, lam):
    """Per row: the response positions only, bootstrapping from 0 after the last one."""
    advantages, returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        positions = [t for t in range(rewards.shape[1]) if mask[row, t]]
        running = 0.0
        for i in reversed(range(len(positions))):
            t = positions[i]
            next_value = values[row, positions[i + 1]].item() if i + 1 < len(positions) else 0.0
            delta = rewards[row, t].item() + gamma * next_value - values[row, t].item()
            running = delta + gamma * lam * running
            advantages[row, t] = running
            returns[row, t] = running + values[row, t].item()
    return advantages, returns


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_the_reference_on_rows_of_different_lengths(gamma, lam):
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma, lam)
    want_adv, want_ret = _gae_reference(REWARDS, VALUES, MASK, gamma, lam)
    torch.testing.assert_close(advantages, want_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, want_ret, atol=1e-6, rtol=0)
    assert advantages[~MASK].abs().sum() == 0 and returns[~MASK].abs().sum() == 0


def test_gae_by_hand_on_the_short_row():
    # row 1, gamma 1, lam 1: A_3 = -0.7 - 0.8; A_2 = 0.05 + 0.8 - 0.3 + A_3
    advantages, returns = gae(REWARDS, VALUES, MASK, 1.0, 1.0)
    assert advantages[1, 3].item() == pytest.approx(-1.5)
    assert advantages[1, 2].item() == pytest.approx(0.55 - 1.5)
    assert returns[1, 2].item() == pytest.approx(0.05 - 0.7)  # the undiscounted reward to go


def _whiten_reference(values, mask, shift_mean=True):
    picked = [
        values[i, j].item()
        for i in range(mask.shape[0])
        for j in range(mask.shape[1])
        if mask[i, j]
    ]
    mean = sum(picked) / len(picked)
    var = sum((v - mean) ** 2 for v in picked) / (len(picked) - 1)  # unbiased, as TRL
    out = torch.zeros_like(values)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            out[i, j] = (values[i, j].item() - mean) / math.sqrt(var + 1e-8)
            if not shift_mean:
                out[i, j] += mean
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_equals_trls_masked_whiten(shift_mean):
    values = torch.tensor([[0.3, -1.2, 2.5, 0.0, 7.0], [1.1, 0.4, -0.6, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    got = masked_whiten(values, mask, shift_mean=shift_mean)
    want = _whiten_reference(values, mask, shift_mean)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=0)
    if shift_mean:
        assert got[mask].mean().item() == pytest.approx(0.0, abs=1e-6)


NEW = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-3.0, -0.2, -0.9, -1.4]])
OLD = torch.tensor([[-1.2, -0.9, -1.0, -0.1], [-2.0, -0.25, -0.9, -0.3]])
ADV = torch.tensor([[1.0, -0.5, 2.0, 0.3], [-1.5, 0.7, 0.0, 1.2]])
LOSS_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)


def _masked_entries(mask):
    return [(i, j) for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]]


def test_clipped_policy_loss_equals_the_reference():
    eps = 0.2
    loss, stats = ppo_policy_loss(NEW, OLD, ADV, LOSS_MASK, eps)
    terms, clipped, approx = [], [], []
    for i, j in _masked_entries(LOSS_MASK):
        ratio = math.exp(NEW[i, j].item() - OLD[i, j].item())
        a = ADV[i, j].item()
        plain, cut = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
        terms.append(max(plain, cut))
        clipped.append(float(cut > plain))
        approx.append(0.5 * (NEW[i, j].item() - OLD[i, j].item()) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)
    assert stats["policy/clipfrac"] == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert stats["policy/approxkl"] == pytest.approx(sum(approx) / len(approx), abs=1e-6)
    assert 0 < stats["policy/clipfrac"] < 1  # the numbers exercise both branches


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage_and_its_gradient():
    logps = OLD.clone().requires_grad_(True)
    loss, stats = ppo_policy_loss(logps, OLD, ADV, LOSS_MASK, 0.2)
    assert loss.item() == pytest.approx(-ADV[LOSS_MASK].mean().item(), abs=1e-6)
    assert stats["policy/clipfrac"] == 0 and stats["policy/approxkl"] == 0
    loss.backward()
    torch.testing.assert_close(logps.grad, -ADV * LOSS_MASK / LOSS_MASK.sum())


def test_clipped_value_loss_equals_the_reference():
    eps = 0.2
    values = torch.tensor([[0.5, 1.0, -0.3, 0.2], [0.0, 2.0, 0.1, 5.0]])
    old = torch.tensor([[0.4, 0.5, -0.2, 0.2], [0.3, 1.0, 0.1, 0.0]])
    returns = torch.tensor([[1.0, 0.2, -1.0, 0.2], [-0.5, 1.5, 0.4, 9.0]])
    loss, stats = ppo_value_loss(values, old, returns, LOSS_MASK, eps)
    terms, clipped = [], []
    for i, j in _masked_entries(LOSS_MASK):
        v, o, r = values[i, j].item(), old[i, j].item(), returns[i, j].item()
        v_clip = min(max(v, o - eps), o + eps)
        plain, cut = (v - r) ** 2, (v_clip - r) ** 2
        terms.append(max(plain, cut))
        clipped.append(float(cut > plain))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-6)
    assert stats["val/clipfrac"] == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert 0 < stats["val/clipfrac"] < 1


def test_token_rewards_put_the_score_on_each_rows_last_response_token():
    kl = torch.tensor([[7.0, 0.1, 0.2, 0.3, 0.4, 7.0], [7.0, 7.0, -0.5, 0.6, 7.0, 7.0]])
    rewards = token_rewards(kl * MASK, torch.tensor([2.0, -1.0]), MASK, kl_coef=0.1)
    want = torch.zeros_like(kl)
    for i, j in _masked_entries(MASK):
        want[i, j] = -0.1 * kl[i, j].item()
    want[0, 4] += 2.0
    want[1, 3] += -1.0
    torch.testing.assert_close(rewards, want)


def test_adaptive_kl_follows_ziegler_et_al():
    ctl = AdaptiveKL(0.2, target=6.0, horizon=100)
    expected = 0.2
    for kl in (3.0, 6.0, 9.0, 60.0, 0.0):
        ctl.update(kl, n=8)
        expected *= 1 + min(max(kl / 6.0 - 1, -0.2), 0.2) * 8 / 100
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    fixed = AdaptiveKL(0.2)  # no target: a fixed coefficient
    fixed.update(100.0, n=8)
    assert fixed.value == 0.2
    restored = AdaptiveKL(0.2, target=6.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
