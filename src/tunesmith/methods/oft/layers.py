"""OftLinear: y = base(x R), R = diag(R_1 .. R_k) a block-diagonal orthogonal matrix.

Each block R_i = (I - Q_i)(I + Q_i)^-1 is the Cayley transform of a skew-symmetric Q_i, stored as
its strictly upper-triangular entries: `oft_R.weight` (k, b(b-1)/2), PEFT's name and layout (one
row with block_share). Q = 0 gives R = I, so the layer starts exactly at the base. Mergeable:
W' = W R^T (W (out, in)), and for a GPT-2 Conv1D (weight (in, out)) W' = R W.
"""

import torch
from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import AdapterLayer
from ..orthogonal import cayley, drop_blocks
from .config import OftConfig


class OftRotation(nn.Module):
    """The skew-symmetric generators of one adapter's blocks and the rotation they give."""

    def __init__(self, cfg: OftConfig, n_blocks: int, block: int, device):
        super().__init__()
        self.n_blocks, self.block, self.cfg = n_blocks, block, cfg
        rows = 1 if cfg.block_share else n_blocks
        self.weight = nn.Parameter(
            torch.zeros(rows, block * (block - 1) // 2, device=device, dtype=torch.float32)
        )
        rows_idx, cols_idx = torch.triu_indices(block, block, 1, device=device)
        self.register_buffer("rows", rows_idx, persistent=False)
        self.register_buffer("cols", cols_idx, persistent=False)

    def skew(self, vec: torch.Tensor) -> torch.Tensor:
        q = vec.new_zeros(vec.shape[0], self.block, self.block)
        q[:, self.rows, self.cols] = vec
        return q - q.transpose(-2, -1)  # (rows, b, b)

    def blocks(self) -> torch.Tensor:
        """The rotation blocks, (k, b, b); block_share repeats the one block k times."""
        if self.cfg.coft:
            self._project()
        terms = self.cfg.num_cayley_neumann_terms if self.cfg.use_cayley_neumann else None
        r = cayley(self.skew(self.weight), terms)
        return r.expand(self.n_blocks, -1, -1) if self.cfg.block_share else r

    @torch.no_grad()
    def _project(self) -> None:
        # COFT: keep ||Q_i||_F <= eps / sqrt(rows), rescaling the generators that stray further.
        q = self.skew(self.weight)
        eps = self.cfg.eps / torch.sqrt(torch.tensor(float(q.shape[0])))
        norm = torch.linalg.norm(q, dim=(1, 2), keepdim=True)
        q = torch.where(norm <= eps, q, eps * (q / norm))
        self.weight.copy_(q[:, self.rows, self.cols])

    def forward(self, x: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
        r = self.blocks()
        if training and dropout > 0 and self.n_blocks > 1 and not self.cfg.block_share:
            r = drop_blocks(r, dropout)
        xb = x.reshape(*x.shape[:-1], self.n_blocks, self.block)  # (..., k, b)
        return torch.einsum("...rk,rkc->...rc", xb, r).reshape(x.shape)


class OftLinear(AdapterLayer):
    """Wraps an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, (in, out))."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.oft_R = nn.ModuleDict()
        self.dropout: dict[str, float] = {}

    def add_adapter(self, name: str, cfg: OftConfig, where: str) -> None:
        """Add adapter `name` with Q = 0 (R = I). Raises ConfigError if the blocks do not fit."""
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before replacing it")
        n_blocks, block = cfg.blocks(self.in_features, where)
        self.oft_R[name] = OftRotation(cfg, n_blocks, block, self.base_layer.weight.device)
        self.dropout[name] = cfg.module_dropout
        self.active_adapters = [name]

    def _adapter_names(self):
        return iter(self.oft_R.keys())

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {"oft_R.weight": self.oft_R[name].weight}

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ConfigError(f"adapter {name!r} is merged; unmerge it before deleting")
        del self.oft_R[name]
        self.dropout.pop(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def rotation(self, name: str) -> torch.Tensor:
        """The full (in, in) block-diagonal R of adapter `name`."""
        return torch.block_diag(*self.oft_R[name].blocks())

    # --- merge --------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        w = self.base_layer.weight
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            r = self.rotation(name)
            stored = r @ w.float() if self.fan_in_fan_out else w.float() @ r.T  # (in,out)/(out,in)
            w.copy_(stored.to(w.dtype))
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            blocks = self.oft_R[name].blocks()
            inv = torch.block_diag(*torch.linalg.inv(blocks))  # R^-1 (R^T when exactly orthogonal)
            stored = inv @ w.float() if self.fan_in_fan_out else w.float() @ inv.T
            w.copy_(stored.to(w.dtype))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged_adapters or not self.active_adapters:
            return self.base_layer(x)
        h = x.float()
        for name in self.active_adapters:  # applied in turn, as PEFT does
            h = self.oft_R[name](h, self.dropout[name], self.training)  # (..., in)
        return self.base_layer(h.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
