"""The FastAPI application: OpenAI-compatible routes over an Engine and a ModelRegistry.

`create_app(registry, engine, limits)` builds it in-process (tests pass a tiny model); `build_app`
loads the model and adapters as `tunesmith serve` does.
"""

import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import TunesmithError
from .adapters import ModelRegistry
from .engine import Engine
from .errors import ApiError, bad_request
from .metrics import Metrics
from .routes import add_routes

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
    add_routes(app, server)
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
        if not length.isdigit():
            raise bad_request(f"Content-Length {length!r} is not a number of bytes")
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
