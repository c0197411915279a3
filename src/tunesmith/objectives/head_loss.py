"""Output head + cross-entropy, chunked, with the gradients computed in the forward pass.

For each chunk of positions the logits (n, V) are made, the loss summed, and d loss / d hidden
(and d loss / d weight when the head trains) worked out at once from softmax - one_hot; only
those gradients (n, H) are kept for backward. So no chunk is recomputed (as checkpointing would)
and at most one chunk of logits exists at a time.
"""

import torch
import torch.nn.functional as F


def fused_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Summed cross-entropy of logits = hidden @ weight.T against targets. hidden (N, H), weight (V, H)."""
    return _HeadLoss.apply(hidden, weight, targets, chunk_size)


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
            logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
            total += -logp.gather(1, t[:, None]).sum()
            if want_h or want_w:
                g = logp.exp_()  # softmax, in place
                g[torch.arange(t.numel()), t] -= 1  # d loss / d logits, (n, V)
                g = g.to(logits.dtype)
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
