"""Every endpoint through the official openai client (or httpx where it has no method) on a live
server; generated text is checked against tunesmith's own greedy decoder on the same weights."""

import json
import shutil

import httpx
import openai
import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.data.templates import render
from tunesmith.evaluation.decode import greedy_decode
from tunesmith.methods.io import load_adapter

TOK = tiny_tokenizer()
CHAT = [{"role": "user", "content": "hello there"}]


def reference(adapter_dir, prompt: str, n: int) -> str:
    """Greedy text of the tiny model (+ adapter) for prompt, up to EOS or n tokens."""
    model = tiny_llama()
    if adapter_dir:
        load_adapter(model, adapter_dir, "ref")
    ids = torch.tensor([TOK(prompt, add_special_tokens=False)["input_ids"]])
    new = greedy_decode(model, ids, max_new_tokens=n, eos_token_id=TOK.eos_token_id)[0].tolist()
    if TOK.eos_token_id in new:
        new = new[: new.index(TOK.eos_token_id)]
    return TOK.decode(new, skip_special_tokens=True)


def chat_prompt(messages=CHAT) -> str:
    return render(TOK, messages, add_generation_prompt=True)


def test_models_lists_the_base_and_each_adapter_with_its_method(client):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"tiny", "lora", "ia3", "spam", "judge"}
    assert (cards["lora"].method, cards["lora"].parent, cards["lora"].kind) == (
        "lora",
        "tiny",
        "generate",
    )
    assert (cards["ia3"].method, cards["spam"].kind, cards["judge"].kind) == (
        "ia3",
        "classify",
        "score",
    )
    assert cards["tiny"].parent is None


@pytest.mark.parametrize("model, adapter", [("tiny", None), ("lora", "lora"), ("ia3", "ia3")])
def test_chat_at_temperature_0_is_the_greedy_text_of_base_or_adapter(client, files, model, adapter):
    r = client.chat.completions.create(model=model, messages=CHAT, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == reference(adapter and files[adapter], chat_prompt(), 12)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(TOK(chat_prompt(), add_special_tokens=False)["input_ids"])


def test_adapters_change_the_output(client):
    texts = {
        m: client.completions.create(model=m, prompt="abc", temperature=0, max_tokens=12)
        .choices[0]
        .text
        for m in ("tiny", "lora")
    }
    assert texts["tiny"] != texts["lora"]


def test_stream_contract(client):
    kwargs = dict(model="lora", messages=CHAT, temperature=0, max_tokens=10)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert (
        finishes[-1] == whole.choices[0].finish_reason and finishes.count(None) == len(finishes) - 1
    )
    joined = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert joined == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert whole.usage.completion_tokens == 10 and whole.choices[0].finish_reason == "length"


def test_stream_ends_with_done_and_has_no_usage_unless_asked(live):
    body = {"model": "tiny", "prompt": "ab", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_completion_stop_string_cuts_the_text(client):
    full = client.completions.create(model="lora", prompt="abc", temperature=0, max_tokens=12)
    text = full.choices[0].text
    stop = text.strip()[1:3] or text[:1]
    cut = client.completions.create(
        model="lora", prompt="abc", temperature=0, max_tokens=12, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_top_p_narrow_is_greedy(client):
    kw = dict(model="tiny", prompt="abc", temperature=1.0, max_tokens=8)
    one = client.completions.create(**kw, seed=5).choices[0].text
    assert one == client.completions.create(**kw, seed=5).choices[0].text
    greedy = client.completions.create(**{**kw, "temperature": 0}).choices[0].text
    assert client.completions.create(**kw, top_p=1e-6, seed=1).choices[0].text == greedy


def test_embeddings_mean_pool_hidden_states(client):
    floats = client.embeddings.create(model="tiny", input=["ab", "abc"], encoding_format="float")
    packed = client.embeddings.create(model="tiny", input=["ab", "abc"])  # base64 on the wire
    assert [len(d.embedding) for d in floats.data] == [16, 16]
    assert floats.data[0].embedding != floats.data[1].embedding
    assert torch.allclose(
        torch.tensor(packed.data[1].embedding), torch.tensor(floats.data[1].embedding)
    )
    model = tiny_llama()
    ids = torch.tensor([TOK("ab", add_special_tokens=False)["input_ids"]])
    h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert torch.allclose(torch.tensor(floats.data[0].embedding), h, atol=1e-5)
    assert floats.usage.prompt_tokens == 5


def test_an_embedding_input_over_the_length_cap_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input=["ok", "x" * 300])
    assert e.value.body["code"] == "context_length_exceeded"


def test_classify_gives_label_and_class_probabilities(live):
    r = httpx.post(f"{live.url}/v1/classify", json={"model": "spam", "input": ["xyz A", "xyz B"]})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["label"] for d in data] == ["spam", "ham"]
    assert sum(data[0]["probabilities"].values()) == pytest.approx(1.0)
    assert data[0]["probability"] == data[0]["probabilities"]["spam"] > 0.5
    single = httpx.post(f"{live.url}/v1/classify", json={"model": "spam", "input": "xyz A"})
    assert single.json()["data"][0]["probability"] == pytest.approx(data[0]["probability"])


def test_score_matches_the_reward_recipe(live, files):
    from tunesmith.recipes.reward import load_reward_model, score

    body = {"model": "judge", "prompt": ["hi", "hi"], "response": ["yes", "no thanks"]}
    got = [d["score"] for d in httpx.post(f"{live.url}/v1/score", json=body).json()["data"]]
    model, tok = load_reward_model(files["reward"], files["base"])
    assert got == pytest.approx(score(model, tok, ["hi", "hi"], ["yes", "no thanks"]), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        (dict(model="nope"), 404, "model_not_found"),
        (dict(model="spam"), 400, "wrong_model_kind"),
        (dict(model="tiny", temperature=5), 400, "invalid_value"),
        (dict(model="tiny", max_tokens=100000), 400, "max_tokens_too_large"),
        (
            dict(model="tiny", messages=[{"role": "user", "content": "x" * 300}]),
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_client_mistakes_are_4xx_openai_errors(client, kwargs, status, code):
    args = {"messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status
    assert e.value.body["code"] == code and e.value.body["message"]


def test_unknown_route_and_bad_json_are_openai_errors(live):
    r = httpx.get(f"{live.url}/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(
        f"{live.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_load_use_and_unload_an_adapter_at_run_time(live, client, files):
    url = live.url
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "o", "lora_path": "lora2"})
    assert r.status_code == 200, r.text
    assert "o" in {m.id for m in client.models.list().data}
    got = client.chat.completions.create(model="o", messages=CHAT, temperature=0, max_tokens=10)
    assert got.choices[0].message.content == reference(files["lora2"], chat_prompt(), 10)
    again = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "o", "lora_path": "lora2"})
    assert again.status_code == 400
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "o"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="o", messages=CHAT, max_tokens=2)
    # an adapter of another method (a model of its own) loads and unloads the same way
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "i", "lora_path": "ia3"})
    assert r.status_code == 200 and r.json()["method"] == "ia3"
    got = client.completions.create(model="i", prompt="abc", temperature=0, max_tokens=6)
    assert got.choices[0].text == reference(files["ia3"], "abc", 6)
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "i"}).status_code == 200
    assert "i" not in {m.id for m in client.models.list().data}
    # the other adapters still answer as before
    lora = client.chat.completions.create(model="lora", messages=CHAT, temperature=0, max_tokens=8)
    assert lora.choices[0].message.content == reference(files["lora"], chat_prompt(), 8)


def test_run_time_loading_refuses_paths_outside_the_root_and_bad_files(live, files, tmp_path):
    from pathlib import Path

    def load(path):
        return httpx.post(
            f"{live.url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(path)}
        )

    outside = load(files["lora"] + "/../../tiny")
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "path_outside_root"
    broken = Path(files["root"]) / "broken"
    shutil.copytree(files["lora"], broken, dirs_exist_ok=True)
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    r = load(broken)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_adapter"
    pickled = Path(files["root"]) / "pickled"
    pickled.mkdir(exist_ok=True)
    shutil.copy(Path(files["lora"]) / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"pickle")
    r = load(pickled)
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    assert (
        httpx.post(f"{live.url}/v1/unload_lora_adapter", json={"lora_name": "tiny"}).status_code
        == 400
    )


def test_health_and_metrics(live, client):
    client.completions.create(model="tiny", prompt="a", max_tokens=3, temperature=0)
    health = httpx.get(f"{live.url}/health").json()
    assert health["status"] == "ok"
    assert health["decode"] == "eager"  # the base holds LoRA adapters: the lean step, uncompiled
    text = httpx.get(f"{live.url}/metrics").text
    assert 'tunesmith_requests_total{endpoint="/v1/completions",status="200"}' in text
    for name in ("completion_tokens_total", "request_seconds_bucket", "queue_depth"):
        assert f"tunesmith_{name}" in text


def test_page_is_served_without_external_resources(live):
    r = httpx.get(live.url + "/")
    assert r.status_code == 200 and "<html" in r.text
    assert "http://" not in r.text and "https://" not in r.text
