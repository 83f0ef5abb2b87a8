"""Regression tests for what the API fuzz (test_fuzz_api.py) found: each request below once got a 500 (or would
have, on a model whose chat template raises); now each gets a 400 OpenAI error naming the problem, and the
server keeps answering."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import assert_openai_error, raw_post  # noqa: E402

import fastapi  # noqa: E402, F401

MSG = [{"role": "user", "content": "turn on the light"}]


@pytest.fixture(scope="module")
def rt(tiny_llama):
    from edgellm.runtimes import open_runtime

    return open_runtime(str(tiny_llama), runtime="torch")


@pytest.fixture(scope="module")
def server(rt):
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.engine import Engine
    from edgellm.serving.server import start_server

    srv = start_server(Engine(rt, rt.tokenizer, max_queue=4).start(), ServeConfig(model_id="tiny", max_tokens_limit=8))
    yield srv
    srv.stop()


def _ok(server) -> None:
    status, body = raw_post(server.url, "/v1/completions", json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}))
    assert status == 200 and body["usage"]["completion_tokens"] == 2, body


@pytest.mark.parametrize("seed", [2**63, 2**64 + 1, -(2**63) - 1, 10**30])
def test_seed_outside_int64_is_400(server, seed):
    # was: torch.Generator.manual_seed overflowed in the worker -> 500 "generation failed"
    for path, extra in (("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions", {"messages": MSG})):
        status, body = raw_post(server.url, path, json.dumps({"model": "tiny", "max_tokens": 2, "seed": seed, **extra}))
        assert "seed" in assert_openai_error(status, body, 400)["message"]
    for seed in (2**63 - 1, -(2**63)):                  # the ends of the range still work
        status, body = raw_post(server.url, "/v1/completions",
                                json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2, "seed": seed}))
        assert status == 200, body
    _ok(server)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "tiny", "prompt": "light \ud800"}),
    ("/v1/completions", {"model": "tiny", "prompt": ["\udfff"]}),
    ("/v1/completions", {"model": "tiny\ud83d", "prompt": "hi"}),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "stop": ["\ud800"]}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a\ud800b"}]}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "extra\ud800": 1}),
])
def test_lone_surrogates_are_400(server, path, body):
    # was: the tokenizer (or the error response's UTF-8 encoding) raised -> 500
    status, resp = raw_post(server.url, path, json.dumps(body))      # json.dumps writes them as \\udXXX escapes
    assert "not valid Unicode" in assert_openai_error(status, resp, 400)["message"]
    _ok(server)


@pytest.mark.parametrize("prompt, stream", [("", False), ([""], False), ("", True)])
def test_empty_prompt_is_400(server, prompt, stream):
    # was: zero prompt tokens reached the runtime, whose prefill failed -> 500 (or an error inside a 200 stream)
    status, body = raw_post(server.url, "/v1/completions",
                            json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 2, "stream": stream}))
    err = assert_openai_error(status, body, 400)
    assert err["code"] == "empty_prompt" and err["param"] == "prompt"
    _ok(server)


def test_chat_template_that_raises_is_400(rt):
    # a model whose template refuses some conversations (raise_exception), as many chat templates do
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.engine import Engine
    from edgellm.serving.server import start_server

    tok = copy.deepcopy(rt.tokenizer)
    tok.chat_template = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation must start with "
                         "the user') }}{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    srv = start_server(Engine(rt, tok, max_queue=2).start(), ServeConfig(model_id="tiny", max_tokens_limit=4))
    try:
        status, body = raw_post(srv.url, "/v1/chat/completions", json.dumps(
            {"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]}))
        err = assert_openai_error(status, body, 400)
        assert "chat template" in err["message"] and "start with the user" in err["message"]
        status, body = raw_post(srv.url, "/v1/chat/completions", json.dumps({"model": "tiny", "messages": MSG,
                                                                               "max_tokens": 2}))
        assert status == 200 and body["usage"]["completion_tokens"] == 2, body
    finally:
        srv.stop()


@pytest.mark.parametrize("temperature", [5e-324, 7.968397688233721e-193, 1e-6])
@pytest.mark.parametrize("stream", [False, True])
def test_tiny_positive_temperature_is_400(server, temperature, stream):
    # was: logits / temperature overflowed to inf, sampling raised on NaN probabilities -> 500 (or an error
    # event inside a 200 stream)
    status, body = raw_post(server.url, "/v1/chat/completions", json.dumps(
        {"model": "tiny", "messages": MSG, "max_tokens": 2, "temperature": temperature, "stream": stream}))
    assert "temperature" in assert_openai_error(status, body, 400)["message"]
    for ok in (0, 0.001):                                   # greedy, and the smallest temperature accepted, both work
        status, body = raw_post(server.url, "/v1/chat/completions", json.dumps(
            {"model": "tiny", "messages": MSG, "max_tokens": 2, "temperature": ok, "seed": 1}))
        assert status == 200 and body["usage"]["completion_tokens"] == 2, body
