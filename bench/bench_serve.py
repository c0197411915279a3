"""The server's decode speed on the embedded model, next to HF `generate` in the same run.

Starts `tunesmith serve`'s app in-process (uvicorn on 127.0.0.1, a free port) and streams
chat completions through the openai client: 1, 8 and 32 concurrent streams of --tokens new tokens
each (ignore_eos, so every stream generates all of them). Reports time to first token (median),
per-stream and aggregate tokens/s, for each --dtypes weight setting (`tunesmith serve --dtype`);
HF generate (greedy, batch 1, fp32 weights) as the reference. The engine rows drive the decoder
in-process, eager and with its compiled blocks (`--compile auto`, timed once they are ready).

Run: python bench/bench_serve.py [--tokens 128] [--streams 1,8,32] [--dtypes float32,auto,int8]
     [--server-cpus 1] (the server in a process of its own on CPU 1; pin this one elsewhere)
"""

import argparse
import asyncio
import datetime
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, set_threads, table  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def hf_generate(model, tokenizer, n: int) -> tuple[float, float]:
    """(tokens/s, seconds to the first token) of HF generate at batch 1."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    kw = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, **kw)  # warm-up
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kw)
        first = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        elapsed = time.perf_counter() - t
    return (out.shape[1] - ids.shape[1]) / elapsed, first


def llama_cpp_generate(n: int) -> tuple[float, float] | None:
    """(tokens/s, seconds to the first token) of llama.cpp (llama-cpp-python) on the embedded
    model's own GGUF file, batch 1, greedy, end-of-turn suppressed; None when not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp row", file=sys.stderr)
        return None
    from tunesmith.models.loading import embedded_gguf_path

    llm = Llama(
        str(embedded_gguf_path()), n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False
    )
    no_end = {llm.token_eos(): -1e9}
    messages = [{"role": "user", "content": PROMPT}]

    def run(tokens: int) -> tuple[float, float, int]:
        start, first, count = time.perf_counter(), None, 0
        stream = llm.create_chat_completion(
            messages, max_tokens=tokens, temperature=0, stream=True, logit_bias=no_end
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - start
                count += 1
        return first, time.perf_counter() - start, count

    run(8)  # warm-up
    first, total, _ = run(1)
    _, total, count = run(n)
    llm.reset()
    return count / total, first


async def one_stream(client, n: int) -> tuple[float, float, int]:
    """(seconds to the first token, total seconds, completion tokens) of one streamed chat."""
    start = time.perf_counter()
    first, usage = None, None
    stream = await client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=n,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            usage = chunk.usage
    return first, time.perf_counter() - start, usage.completion_tokens


async def concurrent(url: str, streams: int, n: int) -> list:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, n) for _ in range(streams)))
    wall = time.perf_counter() - start
    await client.close()
    tokens = sum(r[2] for r in results)
    ttft = median([r[0] for r in results])
    per_stream = median([r[2] / r[1] for r in results])
    return [f"{streams} streams", ttft * 1000, per_stream, tokens / wall]


def engine_rate(model, tokenizer, n: int, rows: int, compile: bool = False) -> float:
    """Aggregate tokens/s of the server's engine driven in-process (no HTTP, no client): `rows`
    requests of n tokens prefilled together, then stepped until all are done; with compile, once
    the compiled blocks are ready."""
    from tunesmith.serving.engine import Engine, GenRequest, Sampling, Target

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else list(ids)
    engine = Engine(tokenizer, max_batch=rows, compile=compile)
    if compile:
        with torch.inference_mode():
            compiled = engine._lean_decoder(Target(model)).compiled
        if not compiled.wait(1200):
            raise SystemExit(f"compiled decoding failed: {compiled.error}")
    for _ in range(rows):
        sampling = Sampling(n, temperature=0, ignore_eos=True)
        engine.submit(GenRequest(ids, sampling, Target(model), lambda event: None))
    with torch.inference_mode():
        engine._admit()
        start, steps = time.perf_counter(), 0
        while engine._batches:
            for key in list(engine._batches):
                engine._step(key)
            steps += 1
    return steps * rows / (time.perf_counter() - start)


def wait_for_compiled(url: str, timeout: float = 1200) -> None:
    """Until /health says the server decodes with its compiled blocks (or cannot)."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        mode = httpx.get(f"{url}/health").json()["decode"]
        if mode not in ("starting", "compiling"):
            waited = time.monotonic() - start
            print(f"server decode: {mode} ({waited:.0f} s after start)", file=sys.stderr)
            return
        time.sleep(1)
    raise SystemExit("the server's compiled decoding was not ready in time")


def serve_process(dtype: str, max_batch: int, cpus: str):
    """`tunesmith serve` in a process of its own on `cpus` (taskset), with this run's threads."""
    import subprocess

    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    serve = [sys.executable, "-m", "tunesmith.cli.main", "serve", "--dtype", dtype, "--port", "0"]
    serve += ["--max-batch", str(max_batch)]
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *serve], stdout=subprocess.PIPE, env=env, text=True
    )
    line = proc.stdout.readline()
    if not line.startswith("serving on "):
        proc.kill()
        raise SystemExit(f"tunesmith serve did not start: {line!r}")
    return proc, line.split()[-1]


def stop(server) -> None:
    if hasattr(server, "should_exit"):  # in-process uvicorn
        server.should_exit = True
        time.sleep(1)
    else:
        server.terminate()
        server.wait(60)


def start_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--dtypes", default="float32,auto,int8", help="`tunesmith serve --dtype` values")
    p.add_argument(
        "--server-cpus",
        help="run the serve rows' server as a `tunesmith serve` process pinned to these CPUs "
        "(taskset list), so the client's work does not share its core; default: in-process",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.md"))
    args = p.parse_args()
    set_threads()
    from tunesmith.models import load_base_model
    from tunesmith.serving.app import Limits
    from tunesmith.serving.server import app_for_model, load_for_serving
    from tunesmith.utils.hardware import has_native_bf16

    model, tokenizer = load_base_model("default")
    hf_rate, hf_first = hf_generate(model, tokenizer, args.tokens)
    del model
    rows = [["HF generate (fp32), batch 1", hf_first * 1000, hf_rate, hf_rate, 1.0]]
    print(f"HF generate: {hf_rate:.1f} tok/s", file=sys.stderr)
    llama = llama_cpp_generate(args.tokens)
    if llama is not None:
        rows[0].append(hf_rate / llama[0])
        rows.append(["llama.cpp (Q4_1 GGUF), batch 1", llama[1] * 1000, llama[0], llama[0]])
        rows[-1] += [llama[0] / hf_rate, 1.0]
        print(f"llama.cpp: {llama[0]:.1f} tok/s", file=sys.stderr)
    streams = [int(s) for s in args.streams.split(",")]
    limits = Limits(max_queue=max(streams) * 2, timeout=1200)
    for dtype in args.dtypes.split(","):
        model, tokenizer = load_for_serving("default", dtype)
        for compile in (False, True):
            engine_rate(model, tokenizer, 8, 1, compile)  # warm-up (and the lean step's probe)
            for n in (1, max(streams)):
                rate = engine_rate(model, tokenizer, args.tokens, n, compile)
                step = "compiled" if compile else "eager"
                rows.append([f"engine in-process --dtype {dtype}, {step}, {n} rows", "-"])
                rows[-1] += [rate / n, rate, rate / hf_rate]
                rows[-1] += [rate / llama[0]] if llama is not None else []
        if args.server_cpus:
            del model  # the server loads its own
            server, url = serve_process(dtype, max(streams), args.server_cpus)
        else:
            app = app_for_model(model, tokenizer, "default", limits=limits, max_batch=max(streams))
            server, url = start_server(app)
        wait_for_compiled(url)
        asyncio.run(concurrent(url, 1, 8))  # warm-up
        for n in streams:
            name, first, per_stream, aggregate = asyncio.run(concurrent(url, n, args.tokens))
            rows.append([f"serve --dtype {dtype}, {name}", first, per_stream, aggregate])
            rows[-1].append(aggregate / hf_rate)
            if llama is not None:
                rows[-1].append(aggregate / llama[0])
            print(f"{rows[-1][0]}: {aggregate:.1f} tok/s aggregate", file=sys.stderr)
        stop(server)
    report = [
        f"# Serving benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        machine(),
        f"embedded SmolLM2-135M-Instruct, {args.tokens} new tokens per stream; `auto` weights are "
        f"{'bfloat16' if has_native_bf16() else 'float32'} here; serve rows: "
        + (
            f"`tunesmith serve` in its own process on CPUs {args.server_cpus}, the client here"
            if args.server_cpus
            else "server and client in this process"
        ),
        "",
        table(
            [
                "decoder",
                "time to first token ms",
                "tok/s per stream",
                "tok/s aggregate",
                "x HF generate fp32",
                *(["x llama.cpp batch 1"] if llama is not None else []),
            ],
            rows,
        ),
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
