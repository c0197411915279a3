"""Distillation divergences on fixed logits, against torch's kl_div and TRL's GKD loss."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.objectives.distill import (
    divergence,
    generalized_jsd,
    kl,
    teacher_topk,
    tempered_logps,
    topk_buckets,
)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 3
    return student, teacher


def _trl_jsd(student, teacher, beta, temperature):
    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDTrainer

    labels = torch.zeros(student.shape[:-1], dtype=torch.long)  # every position counts
    return GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature
    )


def _rows(x):
    return x.reshape(-1, x.size(-1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_and_reverse_kl_equal_torch_kl_div(logits, temperature):
    student, teacher = (tempered_logps(_rows(x), temperature) for x in logits)
    forward = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    reverse = F.kl_div(teacher, student, reduction="batchmean", log_target=True)
    assert divergence(student, teacher, "forward_kl").mean() == pytest.approx(
        float(forward), abs=1e-6
    )
    assert divergence(student, teacher, "reverse_kl").mean() == pytest.approx(
        float(reverse), abs=1e-6
    )
    assert float(forward) > 0.1 and abs(float(forward) - float(reverse)) > 1e-3  # not symmetric


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_equals_trl_gkd_loss(logits, beta, temperature):
    student, teacher = logits
    ours = generalized_jsd(
        tempered_logps(_rows(student), temperature),
        tempered_logps(_rows(teacher), temperature),
        beta,
    ).mean()
    theirs = _trl_jsd(student, teacher, beta, temperature)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)
    assert float(ours) > 1e-3


def test_jsd_ends_are_the_two_kls(logits):
    student, teacher = (tempered_logps(_rows(x)) for x in logits)
    assert torch.allclose(generalized_jsd(student, teacher, 0.0), kl(teacher, student))
    assert torch.allclose(generalized_jsd(student, teacher, 1.0), kl(student, teacher))


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_a_student_equal_to_its_teacher_has_zero_divergence(logits, loss):
    same = tempered_logps(_rows(logits[1]))
    assert divergence(same, same.clone(), loss).abs().max() < 1e-12


def test_topk_buckets_with_every_token_equal_the_full_kl(logits):
    student, teacher = (tempered_logps(_rows(x)) for x in logits)
    ids, values = teacher_topk(teacher, k=11)
    s, t = topk_buckets(student, ids, values)
    assert torch.allclose(kl(t, s), kl(teacher, student), atol=1e-9)


def test_topk_buckets_keep_the_remaining_mass_and_bound_the_full_kl(logits):
    student, teacher = (tempered_logps(_rows(x)) for x in logits)
    ids, values = teacher_topk(teacher, k=3)
    s, t = topk_buckets(student, ids, values)
    assert torch.allclose(t.exp().sum(-1), torch.ones(t.size(0), dtype=t.dtype), atol=1e-6)
    assert torch.allclose(s.exp().sum(-1), torch.ones(s.size(0), dtype=s.dtype), atol=1e-6)
    rest = 1 - teacher.exp().gather(-1, ids.long()).sum(-1)
    assert torch.allclose(t[:, -1].exp(), rest, atol=1e-6)
    coarse, full = kl(t, s), kl(teacher, student)
    assert (coarse <= full + 1e-9).all() and (coarse > 0).all()  # data processing inequality
