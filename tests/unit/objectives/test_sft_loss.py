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
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


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


def _wrapped_head(model):
    """The same model, its head wrapped so that causal_lm_loss takes the checkpointed chunk path."""

    class Head(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model.set_output_embeddings(Head(model.get_output_embeddings()))
    return model


def test_fused_head_and_checkpointed_chunks_give_the_same_loss_and_grads():
    ids, mask, labels = _batch()
    for precision in (torch.float32, torch.bfloat16):
        results = []
        for model in (tiny_llama(), _wrapped_head(tiny_llama())):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
                loss, _ = causal_lm_loss(model, ids, mask, labels, chunk_size=5)
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        (fused, fused_grads), (ref, ref_grads) = results
        tol = 1e-6 if precision == torch.float32 else 1e-2
        torch.testing.assert_close(fused, ref, atol=tol, rtol=tol)
        for g, r in zip(fused_grads, ref_grads):
            torch.testing.assert_close(g, r, atol=tol, rtol=10 * tol)


def test_no_grad_loss_equals_training_loss():
    model = tiny_llama()
    ids, mask, labels = _batch()
    with torch.no_grad():
        evaluated, _ = causal_lm_loss(model, ids, mask, labels)
    trained, _ = causal_lm_loss(model, ids, mask, labels)
    torch.testing.assert_close(evaluated, trained.detach())
