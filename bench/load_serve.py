"""Load and fault test of the server (loopback only, bounded, self-stopping).

Starts the app in-process on 127.0.0.1 with the base and --adapters random LoRA adapters, then
drives --clients concurrent clients (asyncio + httpx), each sending 2 short requests: a mix of
models, plain and streamed, some streams cancelled after their first chunk. Checks: no failed
request, no 5xx, the server's running and queued requests back to 0 (cancelled streams freed
their slots); reports p50/p95 latency and the RSS growth.

Run: python bench/load_serve.py [--model default] [--clients 200] [--tokens 8]
"""

import argparse
import asyncio
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import set_threads  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_adapters(model_name: str, n: int, root: Path) -> dict:
    import torch

    from tunesmith.methods import apply_method
    from tunesmith.methods.io import save_adapter
    from tunesmith.methods.lora import LoraConfig
    from tunesmith.models import load_base_model

    out = {}
    for i in range(n):
        model, _ = load_base_model(model_name)
        apply_method(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
        out[f"a{i}"] = str(save_adapter(model, root / f"a{i}", base_model=model_name))
    return out


async def client_session(http, url: str, models: list, tokens: int, rng: random.Random):
    """Two requests; returns [(status, seconds, kind)]."""
    results = []
    for _ in range(2):
        body = {
            "model": rng.choice(models),
            "messages": [{"role": "user", "content": rng.choice(["hi", "tell me a joke", "2+2?"])}],
            "max_tokens": tokens,
            "temperature": rng.choice([0, 0.7]),
        }
        kind = rng.choice(["plain", "stream", "cancel"])
        start = time.perf_counter()
        if kind == "plain":
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            status = r.status_code
        else:
            async with http.stream(
                "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}
            ) as r:
                status = r.status_code
                async for line in r.aiter_lines():
                    if kind == "cancel" and line.startswith("data: "):
                        break  # the client goes away mid-stream
        results.append((status, time.perf_counter() - start, kind))
    return results


async def drive(url: str, models: list, clients: int, tokens: int) -> list:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        sessions = [
            client_session(http, url, models, tokens, random.Random(i)) for i in range(clients)
        ]
        return [r for rs in await asyncio.gather(*sessions) for r in rs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--adapters", type=int, default=2)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--tokens", type=int, default=8)
    args = p.parse_args()
    set_threads()
    import uvicorn

    from tunesmith.models import load_base_model
    from tunesmith.serving.app import Limits
    from tunesmith.serving.server import app_for_model

    root = Path(tempfile.mkdtemp(prefix="load-serve-"))
    adapters = make_adapters(args.model, args.adapters, root)
    model, tokenizer = load_base_model(args.model)
    limits = Limits(max_queue=4 * args.clients, timeout=1200)
    app = app_for_model(model, tokenizer, "base", adapters, limits=limits, max_batch=32)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    rss_before = rss_mb()
    start = time.perf_counter()
    results = asyncio.run(drive(url, ["base", *adapters], args.clients, args.tokens))
    wall = time.perf_counter() - start
    engine = app.state.server.engine
    deadline = time.monotonic() + 60
    while engine.pending and time.monotonic() < deadline:  # cancelled rows leave at the next step
        time.sleep(0.1)
    rss_after = rss_mb()
    server.should_exit = True
    statuses = [s for s, _, _ in results]
    lat = sorted(t for s, t, k in results if k != "cancel")
    q = statistics.quantiles(lat, n=20)
    print(
        f"{len(results)} requests from {args.clients} clients in {wall:.1f} s: "
        f"{sum(s == 200 for s in statuses)} ok, {sum(s >= 500 for s in statuses)} 5xx, "
        f"{sum(k == 'cancel' for _, _, k in results)} cancelled mid-stream; "
        f"latency p50 {statistics.median(lat):.2f} s, p95 {q[18]:.2f} s; "
        f"requests left in the engine {engine.pending}; RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    sys.exit(0 if all(s == 200 for s in statuses) and engine.pending == 0 else 1)


if __name__ == "__main__":
    main()
