"""Build the app from a model name and adapter directories, and run it under uvicorn."""

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

from ..errors import ConfigError
from .adapters import ModelRegistry
from .engine import Engine

log = logging.getLogger(__name__)


def serve_from_args(args, on_ready: Optional[Callable] = None) -> int:
    """`tunesmith serve`: build the app from the parsed arguments (options.py) and run it."""
    _check_extra()  # before the slow model load
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {args.max_batch}")
    app = build_app(
        args.model,
        parse_adapters(args.adapter),
        args.adapter_dir,
        api_key=args.api_key,
        max_batch=args.max_batch,
        dtype=args.dtype,
        compile=args.compile,
    )
    serve(app, args.host, args.port, on_ready)
    return 0


def build_app(
    model_name: str,
    adapters: dict,
    adapter_dir: Optional[str] = None,
    limits=None,
    api_key: Optional[str] = None,
    max_batch: int = 16,
    dtype: str = "auto",
    compile: str = "auto",
):
    """The app serving `model_name` and `adapters` ({name: directory}); raises TunesmithError
    when the model or an adapter does not load. dtype, compile: --dtype, --compile."""
    model, tokenizer = load_for_serving(model_name, dtype)
    return app_for_model(
        model,
        tokenizer,
        model_name,
        adapters,
        adapter_dir,
        limits,
        api_key,
        max_batch,
        compile=compile,
    )


def load_for_serving(model_name: str, dtype: str):
    """(model, tokenizer) with the weights --dtype asks for."""
    import torch

    from ..models import load_base_model
    from ..models.weight_only import quantize_for_decoding
    from ..utils.hardware import has_native_bf16

    compute = "bfloat16" if has_native_bf16() else "float32"
    bits = {"int8": 8, "int4": 4}.get(dtype)
    # int8/int4 quantize from the float32 weights, so their rounding is the only one
    load_dtype = "float32" if bits else (compute if dtype == "auto" else dtype)
    model, tokenizer = load_base_model(model_name, load_dtype)
    if bits:
        # The int kernels take bf16 activations on every CPU (see quantize_for_decoding).
        layers = quantize_for_decoding(model, getattr(torch, compute), bits, torch.bfloat16)
        log.info("%s weight-only decoding: %d linear layers, model in %s", dtype, layers, compute)
    return model, tokenizer


def app_for_model(
    model,
    tokenizer,
    name,
    adapters=None,
    adapter_dir=None,
    limits=None,
    api_key=None,
    max_batch=16,
    base_source=None,
    compile="auto",
):
    """The app for a model object already loaded (tests build one from a tiny config);
    base_source is where a reward run's copy of the base loads from (default: name); compile:
    --compile (auto: the base model's decode blocks compiled in the background where they fit)."""
    _check_extra()
    from .app import create_app
    from .errors import ApiError

    registry = ModelRegistry(model, tokenizer, name, adapter_dir, base_source)
    for adapter_name, path in (adapters or {}).items():
        try:
            registry.add(adapter_name, path)
        except ApiError as e:
            raise ConfigError(f"--adapter {adapter_name}={path}: {e.message}") from None
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    if compile not in ("auto", "off"):
        raise ConfigError(f"--compile must be auto or off, got {compile!r}")
    engine = Engine(tokenizer, max_batch, context, compile=compile == "auto")
    # Probe the base's lean step (and start compiling it) before the first request.
    engine.prepare(registry.get(name, "generate").target.model)
    return create_app(registry, engine, limits, api_key)


def serve(app, host: str = "127.0.0.1", port: int = 8000, on_ready: Optional[Callable] = None):
    """Run app until SIGINT/SIGTERM (uvicorn's handlers: in-flight requests end, then shutdown);
    on_ready(url) is called once the socket listens."""
    _check_extra()
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    )
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, on_ready), daemon=True).start()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler
    # it found: make that a quiet return, not a KeyboardInterrupt or a death by SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    _leave_unfinished_compiles()


def _leave_unfinished_compiles() -> None:
    """Exit now when the decode step is still compiling: waiting could take a minute, and a
    process ending around a running compilation aborts (serving/compiled.py)."""
    from .compiled import compiling

    if compiling():
        log.info("stopped while the decode step was compiling; leaving it unfinished")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _check_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "serving needs FastAPI and uvicorn: pip install 'tunesmith[serve]'"
        ) from None


def _announce(server, on_ready: Callable) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    on_ready(f"http://{host}:{port}")


def parse_adapters(values: list[str]) -> dict:
    """{name: dir} from NAME=DIR arguments; ConfigError for one without '='."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter {value!r}: give NAME=DIR, e.g. --adapter spam=runs/spam")
        out[name] = path
    return out
