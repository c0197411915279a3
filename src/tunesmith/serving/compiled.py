"""The lean step's blocks compiled into one graph, for base models served without adapters.

At batch 1 a decode step of the embedded model with int4 weights spends ~12 ms in its matmuls
and about as much again on the ~80 small ops per block around them (norms, rotary, casts,
softmax) and on Python. torch.compile (inductor's C++ backend) fuses those ops and runs the 30
blocks as one call. Two things make it pay on a CPU:
- guards: checking the 30 blocks' modules and tensors before every call costs ~1.6 ms a token;
  the graph is compiled once for batch 1 and once for any other batch (every length dynamic), so
  the calls run with `skip_guard_eval_unsafe`, which checks only what tells those two apart. That
  is safe only while the blocks are the ones compiled: `usable()` checks on every call that they
  still hold plain linear layers (an adapter loaded at run time wraps them: the eager step
  serves from then on);
- rounding: inductor keeps a bf16 model's intermediate values in fp32 between fused ops;
  `emulate_precision_casts` rounds where the eager ops do, so the compiled step gives the eager
  step's logits (checked before use, `verify`).

Compiling the embedded model's blocks takes ~2 min the first time on this 2-core CPU (inductor
caches the result on disk; the server then reports "compiled" ~30 s after start), so it runs on
a thread of its own and the eager step serves until it is ready. A process that ends
while that thread is inside torch aborts ("terminate called without an active exception"): at
exit Python waits for it (`_wait_for_compiles`), and `tunesmith serve` leaves at once instead
(`compiling()`, server.py).
"""

import atexit
import logging
import threading
import weakref
from typing import Optional

import torch
from torch import nn

from ..models.weight_only import Int4WeightLinear, Int8WeightLinear
from .lean import PROBE_TOLERANCE, LeanDecoder, run_blocks

log = logging.getLogger(__name__)

PLAIN_LINEARS = (nn.Linear, Int8WeightLinear, Int4WeightLinear)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# Warm-up sizes: prime, so no size equals one of the model's own (heads, widths) when traced.
WARM_BATCH, WARM_CACHE = 11, 13
# Seconds the interpreter waits at exit for a compilation still running.
EXIT_WAIT = 600

_threads: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def compiling() -> bool:
    """True while a compilation thread is running."""
    return any(thread.is_alive() for thread in _threads)


@atexit.register
def _wait_for_compiles() -> None:
    for thread in list(_threads):
        if thread.is_alive():
            log.info("waiting for the decode step's compilation to finish before exiting")
            thread.join(EXIT_WAIT)


class CompiledBlocks:
    """run(x, cos, sin, keys, values, keep) as `run_blocks`, compiled; keep is always a tensor."""

    def __init__(self, lean: LeanDecoder):
        self.lean = lean
        self.linears = _linears(lean)
        self._kinds = [type(getattr(m, n)) for m, n in self.linears]
        self._run = torch.compile(
            self._blocks, dynamic=True, options={"emulate_precision_casts": True}
        )
        self._ready = threading.Event()
        self.error: Optional[str] = None

    @staticmethod
    def fits(lean: LeanDecoder) -> bool:
        """True for blocks whose every projection is a plain (or int8/int4) linear layer."""
        if not all(hasattr(block.mlp, n) for block in lean.blocks for n in MLP):
            return False
        return all(isinstance(getattr(m, n), PLAIN_LINEARS) for m, n in _linears(lean))

    def start(self) -> threading.Thread:
        """Compile and verify on a thread of its own; `usable()` turns true when that succeeds."""
        thread = threading.Thread(target=self.prepare, name="tunesmith-compile", daemon=True)
        _threads.add(thread)
        thread.start()
        return thread

    def prepare(self) -> bool:
        try:
            with torch.inference_mode():
                for batch in (1, WARM_BATCH):
                    self._run(*self._inputs(batch, WARM_CACHE))
                ok = self.verify()
        except Exception as e:  # no C++ compiler, an op inductor cannot take: stay eager
            self.error = f"{type(e).__name__}: {e}"
            log.warning("compiled decoding unavailable, decoding eagerly: %s", self.error)
            return False
        if ok:
            self._ready.set()
            log.info("compiled decoding ready")
        return ok

    def verify(self) -> bool:
        """The compiled blocks give the eager ones' logits (to the lean step's probe tolerance) on
        a fixed probe: two rows, a cache the eager blocks built from four tokens, then one step
        with the first column of row 0 masked as padding."""
        lean, rows = self.lean, 2
        _, _, _, *cache, _ = self._inputs(rows, 0)  # [keys, values]: empty, per block
        for position, token in enumerate((5, 6, 7, 8)):
            x, cos, sin = self._embedded(torch.full((rows, 1), token), position)
            _, *cache = run_blocks(lean.blocks, lean.shape, x, cos, sin, *cache, None)
        x, cos, sin = self._embedded(torch.tensor([[9], [10]]), 4)
        keep = torch.ones(rows, 1, 1, 5, dtype=torch.bool)
        keep[0, ..., 0] = False
        want = lean.head(
            lean.norm(run_blocks(lean.blocks, lean.shape, x, cos, sin, *cache, keep)[0])
        )
        got = lean.head(lean.norm(self._run(x, cos, sin, *cache, keep)[0]))
        worst, scale = float((want - got).abs().max()), max(1.0, float(want.abs().max()))
        if worst > PROBE_TOLERANCE.get(x.dtype, 5e-2) * scale:
            self.error = f"compiled blocks' logits differ from the eager ones' by {worst:.3g}"
            log.warning("compiled decoding not used: %s", self.error)
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """True once the compiled blocks are ready (False: still compiling, or they failed)."""
        return self._ready.wait(timeout)

    def usable(self) -> bool:
        return self._ready.is_set() and all(
            type(getattr(m, n)) is kind for (m, n), kind in zip(self.linears, self._kinds)
        )

    def __call__(self, x, cos, sin, keys, values, keep):
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return self._run(x, cos, sin, keys, values, keep)

    def _blocks(self, x, cos, sin, keys, values, keep):
        return run_blocks(self.lean.blocks, self.lean.shape, x, cos, sin, keys, values, keep)

    def _embedded(self, ids, position: int):
        """(x, cos, sin) of one new token per row at `position`."""
        x = self.lean.embed(ids % self.lean.embed.num_embeddings)
        cos, sin = self.lean.rotary(x, torch.full((ids.shape[0], 1), position))
        return x, cos[:, None], sin[:, None]

    def _inputs(self, batch: int, cached: int):
        """Decode inputs for warming up: batch rows, `cached` random columns in the cache, every
        column kept."""
        lean, (_, kv_heads, dim) = self.lean, self.lean.shape
        x, cos, sin = self._embedded(torch.arange(batch)[:, None], cached)
        dtype = x.dtype
        keys = [torch.randn(batch, kv_heads, cached, dim, dtype=dtype) for _ in lean.blocks]
        values = [torch.randn(batch, kv_heads, cached, dim, dtype=dtype) for _ in lean.blocks]
        keep = torch.ones(batch, 1, 1, cached + 1, dtype=torch.bool)
        return x, cos, sin, keys, values, keep


def _linears(lean: LeanDecoder) -> list:
    """(module, attribute) of every projection of the blocks: what an adapter would wrap."""
    attention = [(b.self_attn, n) for b in lean.blocks for n in PROJECTIONS]
    return attention + [(b.mlp, n) for b in lean.blocks for n in MLP]
