"""The model-level response log-probs (head at labelled positions only) against the logits-level ones."""

import torch

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.objectives.logps import sequence_logps
from tunesmith.objectives.preference import response_logps


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(3, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[mask == 0] = -100
    labels[2, 5:] = -100  # a row with no response
    return ids, mask, labels


def test_sequence_logps_equals_the_logits_gathering_and_its_gradient():
    for model in (tiny_llama(), tiny_gpt2()):
        ids, mask, labels = _batch()
        ours, counts = sequence_logps(model, ids, mask, labels, chunk_size=4)
        reference = response_logps(model(input_ids=ids, attention_mask=mask).logits, labels)
        assert torch.allclose(ours, reference, atol=1e-5)
        assert counts.tolist() == [7, 4, 0] and ours[2] == 0
        ours.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        response_logps(model(input_ids=ids, attention_mask=mask).logits, labels).sum().backward()
        assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, model.parameters()))
