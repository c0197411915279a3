import pytest
import torch

from tunesmith.objectives.head_loss import eager_logit_gradients, logit_gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_logit_gradients_equal_the_eager_ops(dtype):
    generator = torch.Generator().manual_seed(0)
    for rows in (7, 33):  # one compiled graph, dynamic in the number of positions
        logits = (torch.randn(rows, 1000, generator=generator) * 4).to(dtype)
        targets = torch.randint(0, 1000, (rows,), generator=generator)
        loss, grad = logit_gradients(logits, targets)
        want_loss, want_grad = eager_logit_gradients(logits, targets)
        assert not logit_gradients.failed
        assert grad.dtype == dtype
        # fp32 log-sum-exp in both; the gradient rounds to the logits' dtype in both.
        torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-4)
        tolerance = 1e-6 if dtype == torch.float32 else 2**-8
        torch.testing.assert_close(grad, want_grad, rtol=tolerance, atol=tolerance)
        assert torch.allclose(grad.float().sum(-1), torch.zeros(rows), atol=0.05)


def test_eager_logit_gradients_are_softmax_minus_one_hot():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    loss, grad = eager_logit_gradients(logits, torch.tensor([2]))
    torch.testing.assert_close(loss, torch.log(torch.tensor(4.0)))
    torch.testing.assert_close(grad, torch.tensor([[0.25, 0.25, -0.75, 0.25]]))


def test_a_target_outside_the_vocabulary_raises_and_keeps_the_compiled_path():
    logits = torch.randn(4, 100)
    with pytest.raises(RuntimeError, match="out of bounds"):
        logit_gradients(logits, torch.tensor([1, 2, 3, 150]))
    assert not logit_gradients.failed
