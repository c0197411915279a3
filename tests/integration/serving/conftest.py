"""A live server on 127.0.0.1 (uvicorn in a thread, a free port) over a tiny Llama with a LoRA and
an IA3 adapter, and a classifier run; sockets are allowed to loopback addresses only."""

import json
import random
import socket
import threading
import time

import pytest
import torch

from tests.tiny import save_tiny_model, tiny_llama, tiny_tokenizer
from tunesmith.methods import apply_method
from tunesmith.methods.ia3 import Ia3Config
from tunesmith.methods.io import save_adapter
from tunesmith.methods.lora import LoraConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    connect = socket.socket.connect

    def loopback_only(sock, address, *args):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise RuntimeError(f"network access in a test: {address}")
        return connect(sock, address, *args)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    torch.manual_seed(0)


def make_adapter(out, method_cfg, seed: int):
    """A saved adapter with seeded non-zero weights, so it changes the model's output."""
    model = tiny_llama()
    apply_method(model, method_cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(p + torch.randn(p.shape, generator=gen) * 0.5)
    save_adapter(model, out, base_model="tiny")
    return str(out)


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """{base, lora, ia3, root, classifier}: directories built once per session."""
    root = tmp_path_factory.mktemp("serving")
    adapters = root / "adapters"
    out = {
        "base": str(save_tiny_model(root / "tiny")),
        "root": str(adapters),
        "lora": make_adapter(
            adapters / "lora", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), 1
        ),
        "lora2": make_adapter(adapters / "lora2", LoraConfig(r=2, target_modules=["o_proj"]), 2),
        "ia3": make_adapter(adapters / "ia3", Ia3Config(), 3),
    }
    out["classifier"] = train_classifier(root, out["base"])
    out["reward"] = make_reward_run(root / "reward-run")
    return out


def make_reward_run(out) -> str:
    """A reward run's files (LoRA adapter + scalar head) with random weights."""
    from tunesmith.models.heads import SequenceClassifier
    from tunesmith.recipes.reward import save_reward_model

    lm = tiny_llama()
    apply_method(lm, LoraConfig(r=2, target_modules=["q_proj"]))
    model = SequenceClassifier(lm, 1, "last")
    save_reward_model(model, out, "tiny")
    return str(out)


def train_classifier(root, model_dir) -> str:
    """A head-mode classifier on the toy spam task: a text ending in ' A' is spam."""
    from tunesmith import load_config
    from tunesmith.recipes import classify

    rng = random.Random(0)
    rows = []
    for i in range(60):
        label = "spam" if i % 2 else "ham"
        body = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(4, 12)))
        rows.append({"text": body + (" A" if label == "spam" else " B"), "label": label})
    (root / "spam.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "spam-run"
    cfg = load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.train={root / 'spam.jsonl'}",
            "data.max_length=32",
            "task.type=classify",
            "train.epochs=4",
            "train.batch_size=8",
            "train.lr=1e-2",
            "eval.batch_size=8",
            f"output.dir={out}",
        ],
    )
    classify.run(cfg)
    return str(out)


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def build(files, **kwargs):
    from tunesmith.serving.server import app_for_model

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    adapters = {
        "lora": files["lora"],
        "ia3": files["ia3"],
        "spam": files["classifier"],
        "judge": files["reward"],
    }
    return app_for_model(
        model, tokenizer, "tiny", adapters, files["root"], base_source=files["base"], **kwargs
    )


@pytest.fixture(scope="session")
def live(files):
    with LiveServer(build(files)) as server:
        yield server


@pytest.fixture
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)
