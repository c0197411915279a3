"""BoftLinear: y = diag(s) W (x M) + bias, M = B_(f-1) ... B_1 B_0 a butterfly product of f factors.

Factor i is B_i = P_i D_i P_i^T: D_i block-diagonal with k orthogonal b x b blocks (the Cayley
transform of the skew part of the stored matrices) and P_i PEFT's butterfly permutation, which
regroups half-blocks so that factor i mixes features 2^i blocks apart (P_0 = I). Stored as PEFT
stores them: `boft_R` (f, k, b, b) and `boft_s` (out, 1). R = 0 and s = 1 give M = I, so the layer
starts exactly at the base. Pure PyTorch: the permutations are index gathers, the blocks a batched
product (PEFT builds dense (in, in) matrices, with an optional CUDA kernel). Mergeable:
W' = diag(s) W M^T (W (out, in)); for a GPT-2 Conv1D (weight (in, out)) W'^T = M W^T diag(s).
"""

import torch
from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import AdapterLayer
from ..orthogonal import cayley, drop_blocks
from .config import BoftConfig


def butterfly_permutation(n: int, block: int, level: int) -> torch.Tensor:
    """PEFT's block_butterfly_perm for factor `level` of n features in blocks of `block`: within
    each group of block * 2^level features, the half-block chunks are taken evens first, then odds.
    (n,) indices p with (x P)[p] = x, i.e. P[j, p[j]] = 1; the identity at level 0."""
    if level == 0:
        return torch.arange(n)
    half, group = block // 2, block * 2**level
    order = list(range(0, group // half, 2)) + list(range(1, group // half, 2))
    within = torch.cat([torch.arange(c * half, (c + 1) * half) for c in order])  # (group,)
    return (torch.arange(0, n, group)[:, None] + within).reshape(-1)


class Butterfly(nn.Module):
    """One adapter's layout (f factors of k blocks of size b) and its permutations, as buffers."""

    def __init__(self, n: int, factors: int, n_blocks: int, block: int, device):
        super().__init__()
        self.factors, self.n_blocks, self.block = factors, n_blocks, block
        perm = torch.stack([butterfly_permutation(n, block, i) for i in range(factors)])
        self.register_buffer("perm", perm.to(device), persistent=False)  # (f, n)
        self.register_buffer("inverse", perm.argsort(-1).to(device), persistent=False)

    def rotate(self, x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """x M for x (..., n) and the rotation blocks (f, k, b, b): B_(f-1) first, B_0 last."""
        for i in reversed(range(self.factors)):
            h = x[..., self.inverse[i]] if i else x  # x P_i
            hb = h.reshape(*h.shape[:-1], self.n_blocks, self.block)  # (..., k, b)
            h = torch.einsum("...kb,kbc->...kc", hb, blocks[i]).reshape(h.shape)  # (x P_i) D_i
            x = h[..., self.perm[i]] if i else h  # (x P_i D_i) P_i^T
        return x


class BoftLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.boft_R = nn.ParameterDict()  # {adapter: (f, k, b, b)}
        self.boft_s = nn.ParameterDict()  # {adapter: (out, 1)}
        self.butterfly = nn.ModuleDict()
        self.dropout: dict[str, float] = {}

    def add_adapter(self, name: str, cfg: BoftConfig, where: str) -> None:
        """Add adapter `name` (R = 0, s = 1 unless cfg.init_weights is false). Raises ConfigError
        if the blocks do not fit this layer."""
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before replacing it")
        n_blocks, block = cfg.blocks(self.in_features, where)
        factors, device = cfg.boft_n_butterfly_factor, self.base_layer.weight.device
        r = torch.zeros(factors, n_blocks, block, block, device=device)
        s = torch.ones(self.out_features, 1, device=device)
        if not cfg.init_weights:  # PEFT's random init
            nn.init.normal_(r, mean=0.0, std=0.1)
            nn.init.normal_(s, mean=1.0, std=0.1)
        self.boft_R[name], self.boft_s[name] = nn.Parameter(r), nn.Parameter(s)
        self.butterfly[name] = Butterfly(self.in_features, factors, n_blocks, block, device)
        self.dropout[name] = cfg.boft_dropout
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.boft_R.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {"boft_R": self.boft_R[name], "boft_s": self.boft_s[name]}  # PEFT's keys

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        for store in (self.boft_R, self.boft_s, self.butterfly):
            del store[name]
        self.dropout.pop(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def blocks(self, name: str) -> torch.Tensor:
        """The orthogonal blocks of adapter `name`, (f, k, b, b): Cayley of R's skew part."""
        r = self.boft_R[name]
        q = r.flatten(0, 1)  # (f k, b, b)
        return cayley(0.5 * (q - q.transpose(-2, -1))).view(r.shape)

    def rotation(self, name: str) -> torch.Tensor:
        """The full (in, in) butterfly rotation M of adapter `name` (x -> x M)."""
        eye = torch.eye(self.in_features, device=self.boft_R[name].device)
        return self.butterfly[name].rotate(eye, self.blocks(name))

    # --- merge --------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        w = self.base_layer.weight
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            m, s = self.rotation(name), self.boft_s[name]  # (in, in), (out, 1)
            stored = m @ w.float() * s.T if self.fan_in_fan_out else w.float() @ m.T * s
            w.copy_(stored.to(w.dtype))
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            m, s = self.rotation(name), self.boft_s[name]
            if self.fan_in_fan_out:  # stored = M^-1 stored' diag(1/s)
                stored = torch.linalg.solve(m, w.float() / s.T)
            else:  # W = diag(1/s) W' M^-T
                stored = torch.linalg.solve(m, (w.float() / s).T).T
            w.copy_(stored.to(w.dtype))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged_adapters or not self.active_adapters:
            return self.base_layer(x)
        h, scale = x.float(), None
        for name in reversed(self.active_adapters):  # x M_last ... M_first, as PEFT composes them
            h = self.butterfly[name].rotate(h, self._train_blocks(name))  # (..., in)
            s = self.boft_s[name].squeeze(-1)  # (out,)
            scale = s if scale is None else scale * s
        out = self.base_layer(h.to(x.dtype))
        bias = getattr(self.base_layer, "bias", None)  # the scale acts on W x, not on the bias
        if bias is None:
            return (out.float() * scale).to(out.dtype)
        return ((out - bias).float() * scale + bias).to(out.dtype)

    def _train_blocks(self, name: str) -> torch.Tensor:
        r = self.blocks(name)
        p = self.dropout[name]
        if not (self.training and p > 0):
            return r
        # PEFT's multiplicative dropout: blocks of one factor, picked at random, become I.
        pick = int(torch.randint(0, r.shape[0], (1,)))
        return torch.stack([drop_blocks(f, p) if i == pick else f for i, f in enumerate(r)])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
