"""The routes, in OpenAI's shapes; each reads the shared Server (app.py) it is given."""

import asyncio

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse

from . import schemas
from .errors import bad_request, timed_out
from .generation import chat_prompt, check_prompt, run_generation
from .jobs import classify, embed, score
from .page import PAGE


def add_routes(app: FastAPI, server) -> None:
    """Every route: the page and status, generation, the task models, adapter loading."""
    for add in (_info_routes, _generation_routes, _task_routes, _adapter_routes):
        add(app, server)


def _info_routes(app: FastAPI, server) -> None:
    registry, engine = server.registry, server.engine

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(registry.entries), "decode": engine.decode_mode()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        running = engine.pending - engine.queue_depth()
        return server.metrics.render(engine.queue_depth(), running)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [_model_card(e, registry.base_name) for e in registry.entries.values()],
        }


def _generation_routes(app: FastAPI, server) -> None:
    registry = server.registry

    @app.post("/v1/chat/completions")
    async def chat(body: schemas.ChatRequest):
        prompt = chat_prompt(registry.tokenizer, body.messages)
        return await run_generation(server, body, prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest):
        return await run_generation(server, body, body.prompt, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(body: schemas.EmbeddingRequest):
        entry = registry.get(body.model, "generate")
        texts = _texts(body.input, "input")
        for ids in registry.tokenizer(texts, add_special_tokens=False)["input_ids"]:
            check_prompt(server, ids)
        vectors, tokens = await _on_engine(
            server, entry, lambda: embed(entry.target, registry.tokenizer, texts)
        )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "model": body.model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _task_routes(app: FastAPI, server) -> None:
    registry = server.registry

    @app.post("/v1/classify")
    async def classify_route(body: schemas.ClassifyRequest):
        entry = registry.get(body.model, "classify")
        texts = _texts(body.input, "input")
        results = await _on_engine(server, entry, lambda: classify(entry.scorer, texts))
        return {
            "object": "list",
            "model": body.model,
            "data": [{"index": i, **r} for i, r in enumerate(results)],
        }

    @app.post("/v1/score")
    async def score_route(body: schemas.ScoreRequest):
        entry = registry.get(body.model, "score")
        prompts, responses = _texts(body.prompt, "prompt"), _texts(body.response, "response")
        if len(prompts) != len(responses):
            raise bad_request(
                f"{len(prompts)} prompts but {len(responses)} responses; give one each"
            )
        scores = await _on_engine(server, entry, lambda: score(entry.scorer, prompts, responses))
        return {
            "object": "list",
            "model": body.model,
            "data": [{"index": i, "score": s} for i, s in enumerate(scores)],
        }


def _adapter_routes(app: FastAPI, server) -> None:
    registry, engine = server.registry, server.engine

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(body: schemas.LoadAdapterRequest):
        path = registry.check_under_root(body.lora_path)
        entry = await asyncio.to_thread(registry.prepare, body.lora_name, path)
        await asyncio.wrap_future(engine.call(lambda: registry.commit(entry)))
        return {"object": "adapter", **_model_card(entry, registry.base_name)}

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(body: schemas.UnloadAdapterRequest):
        await asyncio.wrap_future(engine.call(lambda: registry.remove(body.lora_name)))
        return {"object": "adapter", "id": body.lora_name, "deleted": True}


async def _on_engine(server, entry, fn):
    entry.inflight += 1
    try:
        fut = asyncio.wrap_future(server.engine.call(fn))
        return await asyncio.wait_for(fut, server.limits.timeout)
    except asyncio.TimeoutError:
        raise timed_out(server.limits.timeout) from None
    finally:
        entry.inflight -= 1


def _texts(value, field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts or any(not t for t in texts):
        raise bad_request(f"{field} must be a non-empty string or a list of non-empty strings")
    return texts


def _encode(vector: list[float], encoding_format: str):
    if encoding_format == "float":
        return vector
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _model_card(entry, base_name: str) -> dict:
    return {
        "id": entry.name,
        "object": "model",
        "created": entry.created,
        "owned_by": "tunesmith",
        "kind": entry.kind,
        "method": entry.method,
        "parent": None if entry.name == base_name else base_name,
        "root": entry.path,
    }
