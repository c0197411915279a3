import math

import pytest
import torch

from tests.tiny import tiny_bert, tiny_llama
from tunesmith.objectives.classification import entropy, label_word_scores, weighted_cross_entropy


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    loss, n = weighted_cross_entropy(logits, labels)
    assert n == 3 and loss.item() == pytest.approx(sum(ce) / 3)
    loss, _ = weighted_cross_entropy(logits, labels, torch.tensor([0.5, 2.0]))
    assert loss.item() == pytest.approx((0.5 * ce[0] + 2.0 * ce[1] + 0.5 * ce[2]) / 3)


def _batch(rows, slots):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "slot": torch.tensor(slots)}


def test_causal_scores_are_next_token_log_probs_joint_for_multi_token_words():
    lm = tiny_llama()
    prompts = [[5, 6, 7], [8, 9]]
    words = [[10], [11, 12]]  # class 1's word has two tokens
    variants = [_batch([p + w for p in prompts], [len(p) for p in prompts]) for w in words]
    scores = label_word_scores(lm, variants, words, causal=True)
    with torch.no_grad():
        for b, p in enumerate(prompts):
            logp = torch.log_softmax(lm(torch.tensor([p + words[1]])).logits[0].float(), -1)
            want = logp[len(p) - 1, 11] + logp[len(p), 12]  # p(11 | p) * p(12 | p, 11)
            assert scores[b, 1].item() == pytest.approx(want.item(), abs=1e-4)
            logp = torch.log_softmax(lm(torch.tensor([p])).logits[0, -1].float(), -1)
            assert scores[b, 0].item() == pytest.approx(logp[10].item(), abs=1e-4)


def test_single_token_words_share_one_forward_and_match_the_general_path():
    lm, prompts, words = tiny_llama(), [[5, 6, 7], [8, 9]], [[10], [11]]
    shared = label_word_scores(lm, [_batch(prompts, [3, 2])], words, causal=True)
    general = label_word_scores(
        lm, [_batch([p + w for p in prompts], [3, 2]) for w in words], words, causal=True
    )
    torch.testing.assert_close(shared, general, atol=1e-5, rtol=1e-5)


def test_masked_lm_scores_read_the_mask_positions():
    lm, mask_id = tiny_bert(), 3
    rows = [[1, 20, 21, mask_id, mask_id, 2]]
    words = [[30, 31], [32, 33]]
    scores = label_word_scores(lm, [_batch(rows, [3]), _batch(rows, [3])], words, causal=False)
    with torch.no_grad():
        logp = torch.log_softmax(lm(torch.tensor(rows)).logits[0].float(), -1)
    for c, w in enumerate(words):
        assert scores[0, c].item() == pytest.approx(
            (logp[3, w[0]] + logp[4, w[1]]).item(), abs=1e-4
        )


def test_entropy():
    assert entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(math.log(2))
    assert entropy(torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
