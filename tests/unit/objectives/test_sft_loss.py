import torch
import torch.nn.functional as F

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.objectives.sft import IGNORE, causal_lm_loss


def _batch():
    ids = torch.randint(3, 120, (3, 12))
    labels = ids.clone()
    labels[:, :5] = IGNORE  # prompt
    labels[2, 9:] = IGNORE  # padding
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    return ids, mask, labels


def _reference(model, ids, mask, labels):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def test_selected_chunked_loss_equals_full_logits_loss_and_grads():
    for build in (tiny_llama, tiny_gpt2):
        model = build()
        ids, mask, labels = _batch()
        ref = _reference(model, ids, mask, labels)
        ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
        loss, n = causal_lm_loss(model, ids, mask, labels, chunk_size=4)  # several chunks
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        assert n == int((labels[:, 1:] != IGNORE).sum())
        torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
        for g, r in zip(grads, ref_grads):
            if r is not None:
                torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_loss_on_hand_made_logits_matches_definition():
    # One position, uniform logits over V classes -> loss = log(V).
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied with the embeddings: every logit is 0
    ids = torch.tensor([[5, 6]])
    loss, n = causal_lm_loss(model, ids, torch.ones_like(ids), ids.clone())
    assert n == 1
    torch.testing.assert_close(loss, torch.tensor(float(torch.log(torch.tensor(128.0)))))
