"""The engine: one thread that owns the models and decodes every running request together.

Continuous batching: each model (the base with its LoRA adapters, or one model per adapter of a
method that cannot share a forward) has one running batch. New requests for one model are prefilled
together and join its model's batch at the next step; a finished or cancelled one leaves it at once. Rows of
the base and of different LoRA adapters share one forward pass (`mixed_adapters`: each row
through its own adapter). Anything else that touches a model (embeddings, classify, adapter
loading) runs as a job on the same thread between two steps, so it never races a forward.
"""

import inspect
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from transformers import DynamicCache

from ..methods.lora import mixed_adapters
from ..models.compat import cache_kwarg
from .compiled import CompiledBlocks
from .errors import ApiError, timed_out
from .kv import check_dynamic, concat_rows, keep_rows
from .lean import LeanDecoder
from .text import TextTracker

log = logging.getLogger(__name__)


@dataclass
class Target:
    """Where a request's tokens come from: a model and, for a model holding LoRA adapters that
    mix per row, the row's adapter (None: the base)."""

    model: torch.nn.Module
    row: Optional[str] = None
    mixed: bool = False


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: list = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class GenRequest:
    """One generation. `emit(event)` is called from the engine thread with ("delta", text),
    then ("done", finish_reason, prompt_tokens, completion_tokens) or ("error", ApiError)."""

    prompt_ids: list
    sampling: Sampling
    target: Target
    emit: Callable
    timeout: float = 120.0
    cancelled: bool = False
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    text: Optional[TextTracker] = None
    generator: Optional[torch.Generator] = None


@dataclass
class _Batch:
    """The running rows of one model: their cache (left-padded), mask (B, T) and next logits (B, V)."""

    target: Target
    rows: list
    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor


class Engine:
    def __init__(
        self, tokenizer, max_batch: int = 16, max_context: int = 2048, metrics=None, compile=False
    ):
        """compile: also compile the lean step's blocks (serving/compiled.py) where they fit."""
        self.tokenizer, self.max_batch, self.max_context = tokenizer, max_batch, max_context
        self.compile = compile
        self.metrics = metrics
        self.eos = _eos_ids(tokenizer)
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._batches: dict[int, _Batch] = {}
        self._lean = weakref.WeakKeyDictionary()  # model -> LeanDecoder or None (probe failed)
        self._base: Optional[weakref.ref] = None  # the model `prepare` was given
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.pending = 0  # requests submitted and not finished (for the queue bound)
        self._count = threading.Lock()  # pending changes on the server's and the engine's thread

    # --- public, any thread ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="tunesmith-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current step; running requests end with a 'server stopping' error."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, req: GenRequest) -> None:
        req.text = TextTracker(self.tokenizer, req.sampling.stop)
        if req.sampling.seed is not None:
            req.generator = torch.Generator().manual_seed(req.sampling.seed)
        with self._count:
            self.pending += 1
        self._waiting.put(req)
        self._wake.set()

    def call(self, fn: Callable) -> Future:
        """Run fn() on the engine thread between two steps; its result or exception in the future."""
        fut: Future = Future()
        self._jobs.put((fn, fut))
        self._wake.set()
        return fut

    def prepare(self, model) -> Future:
        """Probe model's lean decode step on the engine thread (and start compiling its blocks
        when `compile`), so the first request does not wait for it; `decode_mode` reports on it."""
        self._base = weakref.ref(model)
        return self.call(lambda: self._lean_decoder(Target(model)))

    def decode_mode(self) -> str:
        """How the base model decodes: "compiled", "compiling", "eager" (the lean step) or
        "forward" (the model's own forward); "starting" before the first probe."""
        base = self._base() if self._base is not None else None
        if base is None or base not in self._lean:
            return "starting"
        lean = self._lean.get(base)
        if lean is None:
            return "forward"
        if lean.compiled is None or lean.compiled.error:
            return "eager"
        return "compiled" if lean.compiled.usable() else "compiling"

    def running_for(self, model) -> int:
        batch = self._batches.get(id(model))
        return len(batch.rows) if batch else 0

    def queue_depth(self) -> int:
        return self._waiting.qsize()

    # --- engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop:
                self._run_jobs()
                self._admit()
                if not self._batches:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for key in list(self._batches):
                    self._step_or_fail(key)
        self._abort_all()

    def _run_jobs(self) -> None:
        while not self._jobs.empty():
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as e:  # the caller gets it; the engine goes on
                fut.set_exception(e)

    def _admit(self) -> None:
        """Move waiting requests into their model's batch; those for one model prefill together."""
        running = sum(len(b.rows) for b in self._batches.values())
        joining: dict[int, list] = {}
        while running < self.max_batch and not self._waiting.empty():
            req = self._waiting.get()
            if req.cancelled:
                self._finish(req)
                continue
            joining.setdefault(id(req.target.model), []).append(req)
            running += 1
        for reqs in joining.values():
            try:
                self._join(reqs, *self._prefill(reqs))
            except Exception as e:  # a bad model must not stop the engine
                error = e if isinstance(e, ApiError) else _engine_error(e)
                for req in reqs:
                    self._finish(req, ("error", error))

    def _prefill(self, reqs: list):
        """(cache, mask, last logits) of the prompts of reqs, left-padded into one forward."""
        t = max(len(r.prompt_ids) for r in reqs)
        ids = torch.tensor([[0] * (t - len(r.prompt_ids)) + r.prompt_ids for r in reqs])  # (B, T)
        mask = (
            torch.arange(t)[None] >= torch.tensor([[t - len(r.prompt_ids)] for r in reqs])
        ).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a left-padded row starts at position 0
        target = reqs[0].target
        cache = DynamicCache(config=target.model.config)
        rows = [r.target.row for r in reqs]
        logits = self._forward(target, rows, ids, mask, cache, positions)
        check_dynamic(cache)
        return cache, mask, logits

    def _join(self, reqs: list, cache, mask, logits) -> None:
        key = id(reqs[0].target.model)
        batch = self._batches.get(key)
        if batch is None:
            self._batches[key] = _Batch(reqs[0].target, list(reqs), cache, mask, logits)
            return
        batch.cache, batch.mask = concat_rows(batch.cache, batch.mask, cache, mask)
        batch.logits = torch.cat([batch.logits, logits])
        batch.rows.extend(reqs)

    def _step_or_fail(self, key: int) -> None:
        # A bug in one batch (a model that cannot run these rows) must not stop the engine.
        try:
            self._step(key)
        except Exception as e:
            log.exception(
                "decode step failed; ending its %d requests", len(self._batches[key].rows)
            )
            failed = _engine_error(e)
            for req in self._batches.pop(key).rows:
                self._finish(req, ("error", failed))

    def _step(self, key: int) -> None:
        """Sample one token per row, drop the rows that finished, run the rest one position on."""
        batch = self._batches[key]
        tokens, keep = [], []
        for i, req in enumerate(batch.rows):
            token = _pick(batch.logits[i], req.sampling, req.generator)
            if self._advance(req, token, int(batch.mask[i].sum())):
                tokens.append(token)
                keep.append(i)
        if not keep:
            del self._batches[key]
            return
        if len(keep) < len(batch.rows):
            batch.cache, batch.mask = keep_rows(batch.cache, batch.mask, keep)
            batch.logits = batch.logits[keep]
            batch.rows = [batch.rows[i] for i in keep]
        ids = torch.tensor(tokens, dtype=torch.long)[:, None]  # (B, 1)
        positions = batch.mask.sum(1, keepdim=True)  # (B, 1): real tokens so far
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(keep), 1))], dim=1)
        rows = [r.target.row for r in batch.rows]
        lean = self._lean_decoder(batch.target)
        batch.logits = self._forward(
            batch.target, rows, ids, batch.mask, batch.cache, positions, lean
        )

    def _advance(self, req: GenRequest, token: int, length: int) -> bool:
        """Emit token's text; False when req is finished (and told so)."""
        if req.cancelled:
            return self._finish(req)
        if time.monotonic() - req.started > req.timeout:
            return self._finish(req, ("error", timed_out(req.timeout)))
        req.tokens += 1
        if token in self.eos and not req.sampling.ignore_eos:
            return self._finish(req, self._done(req, "stop"))
        delta, stopped = req.text.add(token)
        if delta:
            req.emit(("delta", delta))
        if stopped:
            return self._finish(req, self._done(req, "stop", flush=False))
        if req.tokens >= req.sampling.max_tokens or length + 1 >= self.max_context:
            return self._finish(req, self._done(req, "length"))
        return True

    def _done(self, req: GenRequest, reason: str, flush: bool = True) -> tuple:
        tail = req.text.flush() if flush else ""
        if tail:
            req.emit(("delta", tail))
        return ("done", reason, len(req.prompt_ids), req.tokens)

    def _finish(self, req: GenRequest, event: Optional[tuple] = None) -> bool:
        if req.finished:
            return False
        req.finished = True
        with self._count:
            self.pending -= 1
        if self.metrics is not None:
            self.metrics.finished(req)
        if event is not None:
            req.emit(event)
        return False

    def _forward(self, target: Target, rows, ids, mask, cache, positions, lean=None):
        """Logits (B, V) at the last position: the lean step for one new token where it fits
        the model, else the model's forward."""
        kwargs = {cache_kwarg(target.model): cache, "use_cache": True}
        if _keeps_logits(target.model):  # the head on the last position only: (B, 1, V)
            kwargs["logits_to_keep"] = 1
        with mixed_adapters(target.model, rows) if target.mixed else nullcontext():
            if lean is not None:
                return lean.decode(ids, mask, cache, positions)
            out = target.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].float()

    def _lean_decoder(self, target: Target) -> Optional[LeanDecoder]:
        """The model's lean decode step, probed once against its forward (None: it does not fit)."""
        if target.model not in self._lean:
            lean = LeanDecoder.build(target.model)
            if lean is not None:
                rows = [None, None]  # the probe's two rows, base weights

                def forward(*args):
                    return self._forward(target, rows, *args)

                def decode(*args):
                    return self._forward(target, rows, *args, lean=lean)

                lean = lean if lean.fits(forward, decode) else None
            if lean is not None and self.compile and CompiledBlocks.fits(lean):
                lean.compiled = CompiledBlocks(lean)
                lean.compiled.start()  # the eager step serves until it is ready
            self._lean[target.model] = lean
        return self._lean[target.model]

    def _abort_all(self) -> None:
        stopping = ApiError(503, "the server is stopping", "server_stopping", "server_error")
        for batch in self._batches.values():
            for req in batch.rows:
                self._finish(req, ("error", stopping))
        self._batches.clear()
        while not self._waiting.empty():
            self._finish(self._waiting.get(), ("error", stopping))


def _engine_error(e: Exception) -> ApiError:
    log.error("model forward failed: %s", e)
    return ApiError(500, f"the model failed on this request: {e}", "engine_error", "server_error")


def _pick(logits: torch.Tensor, s: Sampling, generator) -> int:
    """Greedy at temperature 0, else a sample from the top-p nucleus of softmax(logits / T)."""
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)  # (V,)
    if s.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        outside = sorted_p.cumsum(0) - sorted_p > s.top_p  # keeps at least the top token
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p.masked_fill(outside, 0))
    return int(torch.multinomial(probs, 1, generator=generator))


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _eos_ids(tokenizer) -> set:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return ids
