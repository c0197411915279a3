"""Safety limits on a live server: API key, body size, queue bound (429 + Retry-After), timeout;
and `tunesmith serve` itself: prints the URL when ready, stops cleanly on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.integration.serving.conftest import LiveServer, build
from tunesmith.serving.app import Limits

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def guarded(files):
    limits = Limits(max_body_bytes=2000, max_queue=1, timeout=5.0)
    with LiveServer(build(files, limits=limits, api_key="s3cret")) as server:
        yield server


def test_api_key_is_required_except_for_page_and_health(guarded):
    from openai import OpenAI

    wrong = OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = OpenAI(base_url=f"{guarded.url}/v1", api_key="s3cret", max_retries=0)
    assert "tiny" in {m.id for m in right.models.list().data}
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert httpx.get(f"{guarded.url}/").status_code == 200


def test_a_body_over_the_cap_is_413(guarded):
    r = httpx.post(
        f"{guarded.url}/v1/completions",
        json={"model": "tiny", "prompt": "x" * 5000},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_beyond_the_queue_bound_is_429_with_retry_after(guarded):
    auth = {"Authorization": "Bearer s3cret"}
    body = {"model": "tiny", "prompt": "ab", "max_tokens": 3, "temperature": 0}
    engine = guarded.app.state.server.engine
    release = threading.Event()
    engine.call(lambda: release.wait(30))  # the engine is busy: requests wait in the queue
    first = {}
    waiter = threading.Thread(
        target=lambda: first.update(
            r=httpx.post(f"{guarded.url}/v1/completions", json=body, headers=auth)
        )
    )
    waiter.start()
    while engine.pending < 1:
        time.sleep(0.01)
    again = httpx.post(f"{guarded.url}/v1/completions", json=body, headers=auth)
    release.set()
    waiter.join(30)
    assert again.status_code == 429 and again.headers["retry-after"] == "1"
    assert again.json()["error"]["type"] == "rate_limit_error"
    assert first["r"].status_code == 200  # the queued one is served once the engine is free


def test_a_request_over_the_timeout_is_408(files):
    with LiveServer(build(files, limits=Limits(timeout=0.0))) as server:
        r = httpx.post(
            f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "ab", "max_tokens": 5}
        )
    assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"


def test_the_serve_command_prints_its_url_and_stops_on_sigterm(files):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunesmith.cli.main", "serve", "--model", files["base"],
           "--adapter", f"lora={files['lora']}", "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert {m["id"] for m in models} == {files["base"], "lora"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_serve_stopped_while_its_decode_step_compiles_exits_cleanly(files):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tunesmith.cli.main",
        "serve",
        "--model",
        files["base"],
        "--port",
        "0",
    ]  # fmt: skip  (the plain base: its blocks compile in the background)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().split()[-1]
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["decode"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"{url}/health").json()["decode"] in ("compiling", "compiled")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "terminate called" not in proc.stderr.read()
    finally:
        proc.kill()


def test_serve_refuses_a_bad_adapter_argument(files):
    from tunesmith.cli.main import main

    assert main(["serve", "--model", files["base"], "--adapter", "no-equals-sign"]) == 2


def test_loads_during_a_stream_leave_it_untouched(files):
    """A good load (new LoRA layers wrapped into the shared model) and a failed one happen while
    a LoRA stream runs; the stream's text is still the greedy text of its adapter."""
    import shutil
    from pathlib import Path

    from tests.integration.serving.test_api import CHAT, chat_prompt, reference

    broken = Path(files["root"]) / "broken-mid"
    shutil.copytree(files["lora2"], broken, dirs_exist_ok=True)
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    app = build(files)
    engine = app.state.server.engine
    inner = engine._forward

    def slow_forward(*args, **kwargs):  # ~1 s for the stream, so the loads land mid-way
        time.sleep(0.01)
        return inner(*args, **kwargs)

    engine._forward = slow_forward
    body = {"model": "lora", "messages": CHAT, "max_tokens": 80, "temperature": 0, "stream": True}
    with LiveServer(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            loads = [("o", "lora2"), ("bad", "broken-mid")]
            codes = [
                httpx.post(
                    f"{server.url}/v1/load_lora_adapter",
                    json={"lora_name": n, "lora_path": p},
                    timeout=30,
                ).status_code
                for n, p in loads
            ]
            assert engine.pending == 1, "the stream ended before the loads"
            rest = [line for line in lines if line]
    chunks = [json.loads(x.removeprefix("data: ")) for x in [first, *rest[:-1]]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert codes == [200, 400]
    assert text == reference(files["lora"], chat_prompt(), 80)
