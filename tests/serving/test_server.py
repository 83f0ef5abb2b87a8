"""A live server on localhost (tiny random Llama, PyTorch runtime), driven by the official openai client and by
raw HTTP for malformed requests. Every bad request must get a 4xx OpenAI error object, and the server must
keep answering afterwards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import assert_openai_error, raw_get, raw_post  # noqa: E402

import openai
import fastapi  # noqa: E402, F401

KEY = "test-key-123"
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llama):
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.server import open_engine, start_server

    engine = open_engine(str(tiny_llama), runtime="torch", max_queue=4)
    srv = start_server(engine, ServeConfig(model_id=MODEL, api_key=KEY, max_tokens_limit=64, max_prompt_tokens=48))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def _still_up(client) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "turn on the light"}],
                                       max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, body = raw_get(server.url, "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL and body["runtime"] == "torch"


def test_chat_usage_counts_tokens(server, client):
    from edgellm.serving.app import render_chat

    msgs = [{"role": "user", "content": "play some music in the kitchen"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=7, temperature=0)
    tok = server.engine.tokenizer
    expected_prompt = len(tok(render_chat(tok, msgs)[0], add_special_tokens=False)["input_ids"])
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == expected_prompt
    assert r.usage.completion_tokens == 7 and r.usage.total_tokens == expected_prompt + 7
    # greedy is deterministic: the same request gives the same text
    again = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=7, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_streaming_equals_non_streaming(client):
    msgs = [{"role": "user", "content": "close the garden door"}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_stop_seed_and_stream(client):
    kw = dict(model=MODEL, prompt="the light in the", max_tokens=20, temperature=1.0, seed=5)
    base = client.completions.create(**kw)
    text = base.choices[0].text
    assert base.object == "text_completion" and base.usage.completion_tokens == 20
    stop = next((text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].isprintable()
                 and text[i:i + 2].strip()), None)
    assert stop, text
    cut = client.completions.create(**kw, stop=[stop])       # same seed: same tokens until the stop string
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kw, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    a, b = (client.completions.create(model=MODEL, prompt="one two", max_tokens=15, temperature=1.0, seed=11)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


@pytest.mark.parametrize("body, fragment", [
    (b'{"model": "tiny", "messages": [', "not valid JSON"),
    (json.dumps({"model": MODEL, "messages": "hello"}), "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}), "temperature"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}), "max_tokens"),
    (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}), "role"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "model"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3}), "n"),
])
def test_malformed_and_wrong_types_are_400(server, client, body, fragment):
    status, resp = raw_post(server.url, "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    err = assert_openai_error(status, resp, 400)
    assert fragment in err["message"] and err["type"] == "invalid_request_error"
    _still_up(client)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and "tiny" in e.value.body["message"]
    _still_up(client)


def test_too_long_prompt_and_max_tokens_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="light " * 200, max_tokens=2)
    assert e.value.body["code"] == "prompt_too_long" and "at most 48" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=65)
    assert e.value.body["code"] == "max_tokens_too_large" and "64" in e.value.body["message"]
    _still_up(client)


def test_bad_or_missing_api_key_is_401(server, client):
    bad = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    status, body = raw_post(server.url, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}))
    assert_openai_error(status, body, 401)
    _still_up(client)


def test_unknown_route_is_openai_error(server, client):
    status, body = raw_get(server.url, "/v1/nothing-here", {"Authorization": f"Bearer {KEY}"})
    assert_openai_error(status, body, 404)
    _still_up(client)


def test_cli_refuses_bad_limits(tiny_llama):
    from conftest import run_cli

    code, _, err = run_cli("serve", tiny_llama, "--max-queue", "0", "--runtime", "torch")
    assert code == 2 and "max_queue" in err

