"""Output head + cross-entropy, chunked, with the gradients computed in the forward pass.

For each chunk of positions the logits (n, V) are made, the loss summed, and d loss / d hidden
(and d loss / d weight when the head trains) worked out at once from softmax - one_hot; only
those gradients (n, H) are kept for backward. So no chunk is recomputed (as checkpointing would)
and at most one chunk of logits exists at a time.

Between the two matmuls of a chunk, the eager ops pass over the (n, V) logits five times (cast
to fp32, log-softmax, exp, one-hot subtraction, cast back): for 256 positions of a 49k vocabulary
that was 43 ms on two threads (68 on one), more than the matmuls. `logit_gradients` is compiled
by inductor into one loop over each row (8.7 ms; 16 on one thread); where compiling fails (no
C++ compiler, say) the eager ops run.
"""

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def fused_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Summed cross-entropy of logits = hidden @ weight.T against targets. hidden (N, H), weight (V, H)."""
    return _HeadLoss.apply(hidden, weight, targets, chunk_size)


def eager_logit_gradients(logits: torch.Tensor, targets: torch.Tensor):
    """(summed cross-entropy in fp32, d loss / d logits in logits' dtype) of logits (n, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss = -logp.gather(1, targets[:, None]).sum()
    grad = logp.exp_()  # softmax, in place
    grad[torch.arange(targets.numel()), targets] -= 1
    return loss, grad.to(logits.dtype)


def _fusable_logit_gradients(logits: torch.Tensor, targets: torch.Tensor):
    """eager_logit_gradients written as ops that fuse: log-sum-exp, then pointwise."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    loss = (lse.squeeze(1) - x.gather(1, targets[:, None]).squeeze(1)).sum()
    target = torch.arange(x.shape[1], device=x.device)[None, :] == targets[:, None]
    return loss, (torch.exp(x - lse) - target.to(x.dtype)).to(logits.dtype)


class _Compiled:
    """The fused function, compiled on first use (dynamic in the number of positions)."""

    def __init__(self, fn):
        self.compiled = torch.compile(fn, dynamic=True, fullgraph=True)
        self.failed = False

    def __call__(self, logits, targets):
        if self.failed:
            return eager_logit_gradients(logits, targets)
        try:
            return self.compiled(logits, targets)
        except Exception as err:
            # Bad input (a target outside the vocabulary) raises again here, with eager's message;
            # only a failure the eager ops do not share is the compiler's, and turns it off.
            result = eager_logit_gradients(logits, targets)
            self.failed = True
            log.warning("the output head's loss runs eager ops (compiling failed: %s)", err)
            return result


logit_gradients = _Compiled(_fusable_logit_gradients)


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(h, weight)  # (n, V), bf16 under autocast
            loss, g = logit_gradients(logits, t)
            total += loss
            if want_h:
                grad_h[start : start + chunk_size] = (g @ weight.to(g.dtype)).to(hidden.dtype)
            if want_w:
                grad_w += (g.T @ h.to(g.dtype)).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None
