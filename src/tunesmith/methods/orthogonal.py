"""What the rotation methods (OFT, BOFT) share: the Cayley transform that turns skew-symmetric
blocks into orthogonal ones, and PEFT's multiplicative dropout of rotation blocks."""

from typing import Optional

import torch


def cayley(q: torch.Tensor, neumann_terms: Optional[int] = None) -> torch.Tensor:
    """R = (I - Q)(I + Q)^-1 for a batch of skew-symmetric Q (k, b, b); orthogonal, R = I at Q = 0.

    neumann_terms: None solves exactly; n approximates the inverse by PEFT's truncated series
    I + 2Q + 2Q^2 + ... + 2Q^(n-2) + Q^(n-1) (faster, only approximately orthogonal).
    """
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)
    if neumann_terms is None:
        return torch.linalg.solve(eye + q, eye - q, left=False)  # (k, b, b)
    n, r = neumann_terms, eye.clone()
    if n > 1:
        r = r + 2.0 * q
    if n > 2:
        power = torch.bmm(q, q)
        r = r + 2.0 * power
        for _ in range(3, n - 1):
            power = torch.bmm(power, q)
            r = r + 2.0 * power
        r = r + torch.bmm(power, q)
    return r


def drop_blocks(r: torch.Tensor, p: float) -> torch.Tensor:
    """PEFT's multiplicative dropout: int(p * k) random blocks of r (k, b, b) become identities."""
    k, b = r.shape[0], r.shape[1]
    n = int(p * k)
    mask = torch.cat([torch.ones(n, device=r.device), torch.zeros(k - n, device=r.device)])
    mask = mask[torch.randperm(k)].view(k, 1, 1)
    return (1 - mask) * r + mask * torch.eye(b, device=r.device).repeat(k, 1, 1)
