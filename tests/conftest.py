"""Shared fixtures: offline mode, no sockets, tiny random models and a local tokenizer."""

import os
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    # Tiny models gain nothing from threads, and on a shared 2-core machine threads thrash.
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, request):
    if request.node.get_closest_marker("integration") is None:

        def refuse(*args, **kwargs):
            raise RuntimeError("network access in a unit test")

        monkeypatch.setattr(socket.socket, "connect", refuse)
    torch.manual_seed(0)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
