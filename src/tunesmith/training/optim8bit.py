"""AdamW whose two moment buffers are stored in 8 bits per value (blockwise dynamic quantization).

The update is computed in fp32 exactly as torch.optim.AdamW computes it; only what is kept
between steps is compressed: per parameter, 2 bytes per value plus two fp32 absmax per block of
256 values (about 2.03 bytes instead of 8).

Notable:
- Why not linear int8: Adam's moments span orders of magnitude inside one block, and linear
  absmax codes (steps of absmax/127) round every value below absmax/254 to zero. For exp_avg_sq
  that is fatal: m / (sqrt(v) + eps) explodes where v was rounded away. So each byte indexes a
  fixed logarithmic code book (dynamic quantization, as bitsandbytes' dynamic map does, with a
  simpler table): the relative error of a value is bounded, not its absolute error.
- exp_avg (signed): code = sign * k, k in 0..127; level 0 is exact zero, levels 1..127 are
  log-spaced magnitudes from 1e-7 to 1 times the block absmax (ratio 1.137 between neighbours,
  so a stored magnitude is within ~6.6% of the true one; |m| < 5e-8 * absmax becomes 0).
- exp_avg_sq (non-negative) is stored in the square-root domain, as sqrt(v): that halves its
  dynamic range, and sqrt(v) is what the update divides by. Unsigned byte k in 0..255 indexes
  256 log-spaced levels from 1e-8 to 1 times the block's max sqrt(v) (sqrt(v) within ~3.7%,
  v within ~7.5%). There is deliberately no zero level, so the denominator is never rounded
  to zero inside a block that is not all zero.
- Codes are nearest in the log domain (thresholds at geometric means of neighbouring levels),
  computed as round(log10) since the levels are evenly spaced in log10: no table search.
- Parameters with fewer than ``min_8bit_size`` values (default 4096, as bitsandbytes) keep fp32
  state: the absmax overhead and the rounding are not worth it for biases and norms.
- ``load_state_dict`` casts the codes back to int8/uint8 (torch's loader casts every floating
  or integer state tensor of a float parameter to the parameter's dtype); values are exact.
"""

import math

import torch

BLOCK = 256
MIN_8BIT_SIZE = 4096
_M_DECADES, _V_DECADES = 7, 8  # log10 range of the exp_avg and sqrt(exp_avg_sq) levels
_M_LEVELS = torch.cat(
    [torch.zeros(1), torch.logspace(-_M_DECADES, 0, 127, dtype=torch.float64).float()]
)  # (128,)
_M_SIGNED = torch.cat(
    [-_M_LEVELS[1:].flip(0), _M_LEVELS]
)  # (255,): value of code c at index c + 127
_V_LEVELS = torch.logspace(
    -_V_DECADES, 0, 256, dtype=torch.float64
).float()  # (256,), levels of sqrt(v)
_CODE_DTYPES = {"exp_avg_codes": torch.int8, "exp_avg_sq_codes": torch.uint8}


def _blocks(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1).float()
    return torch.nn.functional.pad(flat, (0, -flat.numel() % BLOCK)).view(-1, BLOCK)  # (nb, BLOCK)


def quantize_signed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (nb * BLOCK,), fp32 absmax (nb,)) of a signed tensor; see the module docstring."""
    blocks = _blocks(x)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    y = blocks.abs() / safe[:, None]  # (nb, BLOCK) in [0, 1]
    k = ((y.log10() + _M_DECADES) * (126 / _M_DECADES)).round().clamp(0, 126) + 1  # levels 1..127
    k = torch.where(y < _M_LEVELS[1] / 2, 0.0, k)  # below half the smallest level: exact zero
    return (k * blocks.sign()).to(torch.int8).reshape(-1), absmax


def dequantize_signed(codes: torch.Tensor, absmax: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of ``quantize_signed`` (up to the rounding), fp32 of ``shape``."""
    index = codes.view(-1, BLOCK).long() + 127
    values = _M_SIGNED.to(codes.device)[index] * absmax[:, None]  # (nb, BLOCK)
    return values.reshape(-1)[: math.prod(shape)].view(shape)


def quantize_sqrt(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes, fp32 absmax of sqrt(v)) of a non-negative tensor, in the sqrt domain."""
    blocks = _blocks(v).clamp(min=0).sqrt()  # (nb, BLOCK)
    absmax = blocks.amax(dim=1)  # (nb,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    y = blocks / safe[:, None]  # (nb, BLOCK) in [0, 1]
    k = ((y.log10() + _V_DECADES) * (255 / _V_DECADES)).round().clamp(0, 255)  # (nb, BLOCK)
    return k.to(torch.uint8).reshape(-1), absmax


def dequantize_sqrt(codes: torch.Tensor, absmax: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of ``quantize_sqrt``: v (not sqrt(v)), fp32 of ``shape``."""
    s = _V_LEVELS.to(codes.device)[codes.view(-1, BLOCK).long()] * absmax[:, None]  # (nb, BLOCK)
    return s.pow(2).reshape(-1)[: math.prod(shape)].view(shape)


class AdamW8bit(torch.optim.Optimizer):
    """torch.optim.AdamW (decoupled weight decay, bias correction) with 8-bit moment buffers.

    Args: as torch.optim.AdamW (params, lr, betas, eps, weight_decay), plus min_8bit_size:
    parameters with fewer values keep fp32 state (None: MIN_8BIT_SIZE).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.min_8bit_size = MIN_8BIT_SIZE if min_8bit_size is None else min_8bit_size

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad.float(), group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
        m, v = self._moments(p, state)
        state["step"] += 1
        step = state["step"].item()
        p.mul_(1 - group["lr"] * group["weight_decay"])
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        p.addcdiv_(m.to(p.dtype), denom.to(p.dtype), value=-group["lr"] / (1 - beta1**step))
        self._store(p, state, m, v)

    def _moments(self, p: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 exp_avg and exp_avg_sq of p (views of the stored state when it is fp32)."""
        if "exp_avg" in state:
            return state["exp_avg"], state["exp_avg_sq"]
        if "exp_avg_codes" in state:
            return (
                dequantize_signed(state["exp_avg_codes"], state["exp_avg_absmax"], p.shape),
                dequantize_sqrt(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], p.shape),
            )
        m, v = torch.zeros_like(p, dtype=torch.float32), torch.zeros_like(p, dtype=torch.float32)
        if p.numel() < self.min_8bit_size:  # first step of a small parameter: keep fp32 state
            state["exp_avg"], state["exp_avg_sq"] = m, v
        return m, v

    def _store(self, p: torch.Tensor, state: dict, m: torch.Tensor, v: torch.Tensor) -> None:
        if "exp_avg" in state:
            return  # fp32 state was updated in place
        state["exp_avg_codes"], state["exp_avg_absmax"] = quantize_signed(m)
        state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"] = quantize_sqrt(v)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key, dtype in _CODE_DTYPES.items():
                if key in state:
                    state[key] = state[key].to(dtype)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by an optimizer's per-parameter state tensors (moments, codes, scales, steps)."""
    return sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
