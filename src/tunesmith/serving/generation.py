"""Chat and text completions: checks, submit to the engine, answer whole or as server-sent events.

Both answers are built from the same engine events ("delta", "done", "error"), so the streamed
deltas joined are the non-streamed text. A stream: a first chunk with role "assistant", content
chunks, one chunk with finish_reason, then (stream_options.include_usage) a chunk with empty
choices and the usage, then `data: [DONE]`.
"""

import asyncio
import json
import time
import uuid
from typing import Optional

from fastapi.responses import StreamingResponse

from ..data.templates import render
from .engine import GenRequest, Sampling
from .errors import ApiError, bad_request, queue_full


def chat_prompt(tokenizer, messages) -> str:
    return render(tokenizer, [m.model_dump() for m in messages], add_generation_prompt=True)


async def run_generation(server, body, prompt: str, chat: bool):
    entry = server.registry.get(body.model, "generate")
    ids = server.registry.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sampling = _sampling(server.limits, body)
    check_prompt(server, ids)
    if server.engine.pending >= server.limits.max_queue:
        raise queue_full(server.limits.max_queue)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    req = GenRequest(
        ids,
        sampling,
        entry.target,
        lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
        timeout=server.limits.timeout,
    )
    entry.inflight += 1
    server.engine.submit(req)
    meta = _Meta(body.model, chat)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream(events, req, entry, meta, usage)
        return StreamingResponse(stream, media_type="text/event-stream")
    try:
        return await _collect(events, meta)
    finally:
        req.cancelled = True  # a no-op once finished; frees the slot if the client went away
        entry.inflight -= 1


class _Meta:
    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def chunk(self, text=None, finish=None, role=False) -> dict:
        if self.chat:
            delta = (
                {"role": "assistant", "content": ""}
                if role
                else ({"content": text} if text else {})
            )
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        obj = f"{self.object}.chunk" if self.chat else self.object
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update(
            {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        )
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _collect(events: asyncio.Queue, meta: _Meta) -> dict:
    parts = []
    while True:
        event = await events.get()
        if event[0] == "delta":
            parts.append(event[1])
        elif event[0] == "error":
            raise event[1]
        else:
            _, finish, n_prompt, n_completion = event
            return meta.whole("".join(parts), finish, _usage(n_prompt, n_completion))


async def _stream(events: asyncio.Queue, req: GenRequest, entry, meta: _Meta, include_usage: bool):
    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        if meta.chat:
            yield sse(meta.chunk(role=True))
        while True:
            event = await events.get()
            if event[0] == "delta":
                text, event = _coalesce(events, event[1])
                yield sse(meta.chunk(text))
                if event is None:
                    continue
            if event[0] == "error":
                yield sse(event[1].body())
                break
            _, finish, n_prompt, n_completion = event
            yield sse(meta.chunk(finish=finish))
            if include_usage:
                yield sse({**meta.chunk(), "choices": [], "usage": _usage(n_prompt, n_completion)})
            break
        yield "data: [DONE]\n\n"
    finally:
        req.cancelled = True  # the client left mid-stream: the engine drops the row next step
        entry.inflight -= 1


def _coalesce(events: asyncio.Queue, text: str) -> tuple[str, Optional[tuple]]:
    """text joined with the deltas already waiting (a client slower than the decoder gets fewer,
    longer chunks instead of a growing backlog), and the first waiting non-delta event if any."""
    while not events.empty():
        event = events.get_nowait()
        if event[0] != "delta":
            return text, event
        text += event[1]
    return text, None


def _sampling(limits, body) -> Sampling:
    max_tokens = body.max_tokens or body.max_completion_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens={max_tokens} is above this server's limit of {limits.max_tokens}",
            "max_tokens_too_large",
        )
    return Sampling(
        max_tokens, body.temperature, body.top_p, body.seed, body.stop_list(), body.ignore_eos
    )


def check_prompt(server, ids: list) -> None:
    if not ids:
        raise bad_request("the prompt is empty")
    limit = min(server.limits.max_prompt_tokens, server.engine.max_context - 1)
    if len(ids) > limit:
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens; this server takes at most {limit}",
            "context_length_exceeded",
        )
