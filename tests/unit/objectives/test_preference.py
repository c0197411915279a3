"""Preference losses against TRL's own code on the same fixed tensors (max abs diff <= 1e-6).

TRL's DPO/KTO/reward losses live inside trainer methods that run a model, so those methods are
called unbound, with a SimpleNamespace standing in for the trainer and a stub model that returns the
fixed per-token log-probs. CPO/ORPO expose loss methods, called the same way.
"""

import math
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.objectives.preference import (
    DPO_LOSSES,
    IGNORE,
    dpo_loss,
    kto_loss,
    kto_metrics,
    orpo_loss,
    preference_metrics,
    response_lengths,
    response_logps,
    reward_loss,
    simpo_loss,
)

trl = pytest.importorskip("trl")
from trl import DPOTrainer, KTOTrainer, RewardTrainer  # noqa: E402  (after importorskip)
from trl.trainer.utils import add_fused_lm_head, selective_log_softmax  # noqa: E402

TOL = {"atol": 1e-6, "rtol": 0}
B, T = 6, 9


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def _trainer(**fields):
    base = {
        "model": SimpleNamespace(training=True),
        "accelerator": _Accelerator(),
        "aux_loss_enabled": False,
        "_metrics": defaultdict(lambda: defaultdict(list)),
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    return SimpleNamespace(**{**base, **fields})


def _stub_model(table):
    """A 'model' whose fused-head output is the per-token log-probs stored for the input_ids tensor."""

    def model(input_ids=None, labels=None, **kwargs):
        lp = table[id(input_ids)]
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    return model


def _pair_batch(seed=0):
    """Per-token policy log-probs of [chosen; rejected] (2B, T-1), completion mask and reference sums."""
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        start = int(torch.randint(2, 4, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        completion_mask[i, start:end] = 1
    per_token = -torch.rand(2 * B, T - 1, generator=g) * 3 * completion_mask[:, 1:]
    ref = per_token.sum(1) + torch.randn(2 * B, generator=g) * 0.7
    return per_token, completion_mask, ref


def _trl_dpo(loss_type, beta, label_smoothing, per_token, completion_mask, ref):
    ids, n = torch.ones_like(completion_mask), len(ref) // 2
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:n],
        "ref_rejected_logps": ref[n:],
    }
    self = _trainer(
        beta=beta,
        label_smoothing=label_smoothing,
        loss_types=[loss_type],
        loss_weights=[1.0],
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        use_weighting=False,
        args=SimpleNamespace(discopop_tau=0.05),
    )
    loss = DPOTrainer._compute_loss(self, _stub_model({id(ids): per_token}), inputs, False)
    return loss, {k: v[0] for k, v in self._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", DPO_LOSSES)
def test_dpo_losses_equal_trl(loss_type):
    per_token, completion_mask, ref = _pair_batch()
    smoothing = 0.2 if loss_type == "robust" else 0.0
    logps = per_token.sum(1)
    lengths = completion_mask.sum(1)
    losses, rc, rr = dpo_loss(
        logps[:B],
        logps[B:],
        ref[:B],
        ref[B:],
        loss_type,
        beta=0.3,
        label_smoothing=smoothing,
        chosen_lengths=lengths[:B],
        rejected_lengths=lengths[B:],
    )
    trl_loss, trl_metrics = _trl_dpo(loss_type, 0.3, smoothing, per_token, completion_mask, ref)
    assert abs(losses.mean().item() - trl_loss.item()) <= 1e-6
    for i in range(B):  # per example: TRL on a batch of one pair
        rows = [i, B + i]
        one, _ = _trl_dpo(
            loss_type, 0.3, smoothing, per_token[rows], completion_mask[rows], ref[rows]
        )
        assert abs(losses[i].item() - one.item()) <= 1e-6
    ours = preference_metrics(rc, rr, logps[:B], logps[B:])
    for name, value in ours.items():
        assert abs(value - trl_metrics[name]) <= 1e-6, name


def test_dpo_at_reference_is_log2_with_zero_margins():
    logps = -torch.rand(2 * B) * 40
    losses, rc, rr = dpo_loss(
        logps[:B], logps[B:], logps[:B].clone(), logps[B:].clone(), "sigmoid", beta=0.1
    )
    assert torch.equal(losses, torch.full((B,), math.log(2)))
    assert torch.equal(rc, torch.zeros(B)) and torch.equal(rr, torch.zeros(B))
    metrics = preference_metrics(rc, rr, logps[:B], logps[B:])
    assert metrics["rewards/margins"] == 0.0 and metrics["rewards/accuracies"] == 0.0


def test_dpo_rejects_bad_settings():
    x = torch.zeros(2)
    with pytest.raises(ConfigError, match="dpo.loss"):
        dpo_loss(x, x, x, x, "nope")
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_loss(x, x, x, x, "sigmoid", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_loss(x, x, x, x, "robust", label_smoothing=0.5)


def test_reward_loss_equals_trl():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(2 * B, 1, generator=g) * 2
    margin = torch.rand(B, generator=g)
    for m, coef in ((None, None), (margin, None), (None, 0.01), (margin, 0.05)):
        inputs = {"attention_mask": torch.ones(2 * B, 4, dtype=torch.long)}
        if m is not None:
            inputs["margin"] = m
        self = _trainer(args=SimpleNamespace(center_rewards_coefficient=coef))

        def model(**kw):
            return SimpleNamespace(logits=rewards)

        expected = RewardTrainer.compute_loss(self, model, inputs)
        ours = reward_loss(rewards[:B, 0], rewards[B:, 0], margin=m, center_coef=coef or 0.0)
        assert abs(ours.item() - expected.item()) <= 1e-6


def _cpo_like(**fields):
    return _trainer(label_smoothing=0.0, alpha=0.0, **fields)


def test_simpo_equals_trl_cpo_simpo():
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(2)
    c, r = -torch.rand(B, generator=g) * 3, -torch.rand(B, generator=g) * 3
    for smoothing in (0.0, 0.1):
        self = _cpo_like(beta=2.0, simpo_gamma=0.7, loss_type="simpo")
        self.label_smoothing = smoothing
        expected = CPOTrainer.cpo_loss(self, c, r)
        ours = simpo_loss(c, r, beta=2.0, gamma=0.7, label_smoothing=smoothing)
        for a, b in zip(ours, expected):
            torch.testing.assert_close(a, b, **TOL)


def test_orpo_equals_trl():
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(3)
    c = -torch.rand(B, generator=g) * 3
    r = torch.cat(
        [-torch.rand(B - 2, generator=g) * 3, torch.tensor([-1e-4, -0.69])]
    )  # both log1mexp branches
    nll = torch.tensor(1.7)
    self = _trainer(beta=0.25)
    losses, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(self, c, r)
    ours, oc, orr = orpo_loss(c, r, nll=nll, lam=0.25)
    assert (
        abs(ours.mean().item() - (nll - losses.mean()).item()) <= 1e-6
    )  # TRL: loss = nll - mean(losses)
    torch.testing.assert_close(ours - nll, -losses, **TOL)
    torch.testing.assert_close(oc, chosen, **TOL)
    torch.testing.assert_close(orr, rejected, **TOL)


@pytest.mark.parametrize("with_kl", [True, False])
def test_kto_equals_trl(with_kl):
    g = torch.Generator().manual_seed(4)
    n = 7
    completion_mask = torch.zeros(n, T, dtype=torch.long)
    completion_mask[:, 3:] = 1
    per_token = -torch.rand(n, T - 1, generator=g) * 2 * completion_mask[:, 1:]
    kl_per_token = -torch.rand(n, T - 1, generator=g) * 2 * completion_mask[:, 1:]
    ref = per_token.sum(1) + torch.randn(n, generator=g)
    ref_kl = kl_per_token.sum(1) - torch.rand(n, generator=g) * 3  # policy above reference: KL > 0
    label = torch.tensor([True, False, True, True, False, False, True])
    ids, kl_ids = torch.ones(n, T, dtype=torch.long), torch.ones(n, T, dtype=torch.long)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": completion_mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones_like(ids),
        "KL_completion_mask": completion_mask,
        "label": label,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    self = _trainer(
        beta=0.2,
        loss_type="kto",
        desirable_weight=1.3,
        undesirable_weight=0.8,
        calculate_KL=with_kl,
        precompute_ref_logps=True,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    self._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, self)
    expected = KTOTrainer._compute_loss(
        self, _stub_model({id(ids): per_token, id(kl_ids): kl_per_token}), batch, False
    )
    kl_args = (kl_per_token.sum(1), ref_kl) if with_kl else (None, None)
    losses, rc, rr, kl = kto_loss(
        per_token.sum(1),
        ref,
        label,
        *kl_args,
        beta=0.2,
        desirable_weight=1.3,
        undesirable_weight=0.8,
    )
    assert abs(losses.mean().item() - expected.item()) <= 1e-6
    assert (kl > 0) == with_kl
    logps = per_token.sum(1)
    ours = kto_metrics(rc, rr, logps[label], logps[~label], kl)
    for name, value in ours.items():
        assert abs(value - self._metrics["train"][name][0]) <= 1e-6, name


def _padded_batch(seed=5, vocab=128):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :4] = IGNORE  # prompt
    for row, length in ((1, 9), (2, 6), (3, 4)):  # right padding; row 3 has no response at all
        ids[row, length:], mask[row, length:], labels[row, length:] = 0, 0, IGNORE
    return ids, mask, labels


def test_response_logps_equals_naive_and_trl_gathering():
    _, _, labels = _padded_batch()
    logits = (
        torch.randn(4, 12, 128, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 3
    )
    targets, keep = labels[:, 1:], labels[:, 1:] != IGNORE
    naive = (
        logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        * keep
    ).sum(-1)
    trl_sum = (selective_log_softmax(logits[:, :-1], targets.clamp(min=0)) * keep).sum(-1)
    for chunk in (1, 5, 1024):  # several chunks and one
        ours = response_logps(logits, labels, chunk_size=chunk)
        torch.testing.assert_close(ours, naive.float(), **TOL)
        torch.testing.assert_close(ours, trl_sum.float(), **TOL)
    assert ours[3] == 0.0
    avg = response_logps(logits, labels, average=True)
    torch.testing.assert_close(avg[:3], (naive / keep.sum(-1).clamp(min=1)).float()[:3], **TOL)
    assert response_lengths(labels).tolist() == keep.sum(-1).tolist()


def test_response_logps_equals_trl_fused_head_on_a_tiny_model():
    ids, mask, labels = _padded_batch()
    ours = response_logps(tiny_llama()(input_ids=ids, attention_mask=mask).logits, labels)
    fused = tiny_llama()
    add_fused_lm_head(fused)
    theirs = fused(
        input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True
    ).log_probs.sum(1)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_response_logps_gradient_matches_naive():
    _, _, labels = _padded_batch()
    logits = torch.randn(4, 12, 128, requires_grad=True)
    ours = torch.autograd.grad(response_logps(logits, labels, chunk_size=3).sum(), logits)[0]
    keep = labels[:, 1:] != IGNORE
    naive = (
        F.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
        * keep
    ).sum()
    torch.testing.assert_close(ours, torch.autograd.grad(naive, logits)[0], atol=1e-6, rtol=1e-5)
