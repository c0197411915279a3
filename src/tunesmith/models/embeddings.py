"""Frozen-model text embeddings, cached on disk.

`Embedder` loads its own frozen copy of a model (so embeddings stay those of the base model while
another copy is fine-tuned) and returns one vector per text: the last real token, the first token or
the mean over real tokens, read from a chosen layer. Results are stored under
<cache>/embeddings/<key>.npy, the key hashing the model, pooling, layer, length limit and texts.
"""

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..utils.hardware import autocast
from ..utils.modules import transformer_blocks
from .encoders import load_language_model
from .heads import POOLINGS, pool, resolve_pooling
from .loading import cache_root
from .prefix_cache import FrozenPrefix

log = logging.getLogger(__name__)


class Embedder:
    """Embeddings of texts by model `name` (frozen): pooling auto/last/first/mean, layer i = the
    output of block i (0: the token embeddings), -1 = the final (normalised) hidden state."""

    def __init__(
        self,
        name: str,
        pooling: str = "mean",
        layer: int = -1,
        max_length: int = 128,
        batch_size: int = 16,
        bf16: bool = False,
        model=None,
        tokenizer=None,
    ):
        self.name, self.layer, self.max_length, self.batch_size, self.bf16 = (
            name,
            layer,
            max_length,
            batch_size,
            bf16,
        )
        self.pooling_arg = pooling
        self._model, self._tokenizer = model, tokenizer
        self.seconds, self.cache_hits = 0.0, 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, H) float32 embeddings; read from the disk cache when these texts were embedded before.
        One pass stores all three poolings, so switching pooling later costs nothing."""
        path = self._path(texts, self.pooling_arg)
        if path.is_file():
            self.cache_hits += 1
            return np.load(path)
        start = time.perf_counter()
        pooled = self._compute(list(texts))
        self.seconds += time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        for how, vectors in pooled.items():
            target = self._path(texts, how)
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(target)
        return pooled[self.pooling_arg]

    def _load(self):
        if self._model is None:
            self._model, self._tokenizer = load_language_model(self.name)
            self._model.eval().requires_grad_(False)
        return self._model, self._tokenizer

    def _path(self, texts: Sequence[str], pooling: str) -> Path:
        return cache_root() / "embeddings" / f"{self._key(texts, pooling)}.npy"

    def _key(self, texts: Sequence[str], pooling: str) -> str:
        spec = [self.name, _stamp(self.name), pooling, self.layer, self.max_length, self.bf16]
        h = hashlib.sha256(json.dumps(spec).encode())
        for t in texts:
            h.update(t.encode("utf-8") + b"\0")
        return h.hexdigest()[:32]

    @torch.no_grad()
    def _compute(self, texts: list) -> dict:
        """{pooling: (N, H)} for last, first, mean, and for "auto" (last for decoders, first for encoders)."""
        model, tokenizer = self._load()
        encoded = [
            tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in texts
        ]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = {
            how: np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
            for how in POOLINGS
        }
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = _pad([encoded[i] for i in idx], tokenizer.pad_token_id)
            with autocast("bf16" if self.bf16 else "fp32"):
                states = self._states(model.base_model, ids, mask).float()
            for how in POOLINGS:
                out[how][idx] = pool(states, mask, how).numpy()
        log.info("embedded %d texts with %s (layer %d)", len(texts), self.name, self.layer)
        out["auto"] = out[resolve_pooling(model, "auto")]
        return out

    def _states(self, backbone, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.layer == -1:
            return backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        n = len(transformer_blocks(backbone))
        k = self.layer if self.layer >= 0 else n + 1 + self.layer
        if not 0 <= k <= n:
            raise ConfigError(
                f"features.layer={self.layer} is outside this model's layers -1, 0..{n}"
            )
        return FrozenPrefix(backbone, k).capture(ids, mask)


def _stamp(name: str) -> list:
    """Sizes and mtimes of a model directory's files, so a retrained model at one path gets new keys."""
    path = Path(name)
    if not path.is_dir():
        return []
    return sorted(
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir() if f.is_file()
    )


def _pad(seqs: list, pad_id: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return ids, mask
