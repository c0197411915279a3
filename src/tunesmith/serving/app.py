"""The FastAPI application: OpenAI-compatible routes over an Engine and a ModelRegistry.

`create_app(registry, engine, limits)` builds it in-process (tests pass a tiny model); `build_app`
loads the model and adapters as `tunesmith serve` does.
"""

import asyncio
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from ..errors import TunesmithError
from . import schemas
from .adapters import ModelRegistry
from .engine import Engine
from .errors import ApiError, bad_request
from .generation import chat_prompt, check_prompt, run_generation
from .jobs import classify, embed, score
from .metrics import Metrics
from .page import PAGE

OPEN_PATHS = ("/", "/health")  # no API key needed: the page itself and liveness probes


@dataclass
class Limits:
    """What one request may ask for; beyond it the answer is a 4xx."""

    max_tokens: int = 1024  # cap on max_tokens
    default_max_tokens: int = 256  # when a request gives none
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1_000_000
    max_queue: int = 64  # requests waiting or running; beyond: 429 with Retry-After
    timeout: float = 120.0  # seconds per request


@dataclass
class Server:
    """What the routes share."""

    registry: ModelRegistry
    engine: Engine
    limits: Limits
    metrics: Metrics
    api_key: Optional[str] = None


def create_app(
    registry: ModelRegistry,
    engine: Engine,
    limits: Optional[Limits] = None,
    api_key: Optional[str] = None,
) -> FastAPI:
    """The app; the engine thread starts with it and stops at shutdown."""
    metrics = engine.metrics or Metrics()
    engine.metrics = metrics
    server = Server(registry, engine, limits or Limits(), metrics, api_key)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _add_error_handlers(app)
    _add_guard(app, server)
    _add_routes(app, server)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(TunesmithError)
    async def user_error(request, e: TunesmithError):
        return error_response(bad_request(str(e)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(
            bad_request(f"{where or 'body'}: {first.get('msg')}", "invalid_value")
        )

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return error_response(
            ApiError(
                e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error"
            )
        )


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _add_guard(app: FastAPI, server: Server) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.monotonic()
        try:
            _check_request(request, server)
            response = await call_next(request)
        except ApiError as e:
            response = error_response(e)
        path = request.url.path if request.scope.get("route") else "other"
        server.metrics.request(path, response.status_code, time.monotonic() - start)
        return response


def _check_request(request: Request, server: Server) -> None:
    if request.method == "POST":
        length = request.headers.get("content-length")
        if length is None:
            raise ApiError(411, "a request body needs a Content-Length header", "length_required")
        if int(length) > server.limits.max_body_bytes:
            raise ApiError(
                413,
                f"the body has {length} bytes; the limit is {server.limits.max_body_bytes}",
                "body_too_large",
            )
    if server.api_key and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
            raise ApiError(
                401,
                "missing or wrong API key (Authorization: Bearer KEY)",
                "invalid_api_key",
                "authentication_error",
            )


def _add_routes(app: FastAPI, server: Server) -> None:
    registry, engine = server.registry, server.engine

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(registry.entries)}

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

    @app.post("/v1/chat/completions")
    async def chat(body: schemas.ChatRequest, request: Request):
        prompt = chat_prompt(registry.tokenizer, body.messages)
        return await run_generation(server, body, prompt, chat=True, request=request)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, request: Request):
        return await run_generation(server, body, body.prompt, chat=False, request=request)

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


async def _on_engine(server: Server, entry, fn):
    entry.inflight += 1
    try:
        fut = asyncio.wrap_future(server.engine.call(fn))
        return await asyncio.wait_for(fut, server.limits.timeout)
    except asyncio.TimeoutError:
        from .errors import timed_out

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


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
