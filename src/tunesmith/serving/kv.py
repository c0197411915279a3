"""Row operations on a batch's KV cache, for continuous batching.

A running batch keeps one DynamicCache whose rows are left-padded to a common length (the
attention mask hides the padding). Requests that join are prefilled together (left-padded) and
then concatenated as new rows; a finished request's row is dropped, and columns that became
padding in every row are trimmed. Each layer holds keys and values of shape (B, H, T, D).

A prompt-based adapter (prefix / prompt tuning) keeps `front` columns of virtual tokens at the
start of every row that the caller's mask does not cover (its hook prepends them to the mask):
padding goes after them, so each row reads [virtual][padding][real tokens].
"""

import torch
from transformers import DynamicCache

from ..errors import ConfigError


def check_dynamic(cache: DynamicCache) -> None:
    """Raise ConfigError for caches whose layers are not plain growing layers (sliding windows)."""
    odd = {type(layer).__name__ for layer in cache.layers if getattr(layer, "is_sliding", False)}
    if odd:
        raise ConfigError(
            f"the server batches models with a plain KV cache; this one uses {', '.join(odd)}"
        )


def concat_rows(a: DynamicCache, mask_a: torch.Tensor, b: DynamicCache, mask_b: torch.Tensor):
    """(cache, mask): the rows of a then b, the shorter side left-padded. Masks are (B, T)."""
    t = max(mask_a.shape[1], mask_b.shape[1])
    for la, lb in zip(a.layers, b.layers):
        front = la.keys.shape[2] - mask_a.shape[1]
        assert front == lb.keys.shape[2] - mask_b.shape[1], "rows of one model, one front"
        la.keys = torch.cat([_pad(la.keys, t, front), _pad(lb.keys, t, front)], dim=0)
        la.values = torch.cat([_pad(la.values, t, front), _pad(lb.values, t, front)], dim=0)
    mask = torch.cat([_pad_mask(mask_a, t), _pad_mask(mask_b, t)], dim=0)
    return a, mask


def keep_rows(cache: DynamicCache, mask: torch.Tensor, rows: list[int]):
    """(cache, mask) with only `rows`, and the leading all-padding columns trimmed."""
    idx = torch.tensor(rows, dtype=torch.long)
    mask = mask[idx]
    start = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns no row uses
    for layer in cache.layers:
        front = layer.keys.shape[2] - mask.shape[1]
        layer.keys = _drop_columns(layer.keys[idx], front, start)
        layer.values = _drop_columns(layer.values[idx], front, start)
    return cache, mask[:, start:]


def _pad(x: torch.Tensor, t: int, front: int) -> torch.Tensor:
    pad = t + front - x.shape[2]
    if pad == 0:
        return x
    zeros = x.new_zeros((*x.shape[:2], pad, x.shape[3]))
    return torch.cat([x[:, :, :front], zeros, x[:, :, front:]], dim=2)  # (B, H, front + t, D)


def _drop_columns(x: torch.Tensor, front: int, n: int) -> torch.Tensor:
    return torch.cat([x[:, :, :front], x[:, :, front + n :]], dim=2) if n else x


def _pad_mask(mask: torch.Tensor, t: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], t - mask.shape[1])), mask], dim=1)
