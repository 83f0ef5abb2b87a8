"""The bounded queue (429 when full), the per-request timeout (504), client disconnects stopping generation,
and the incremental detokenizer's stop-string handling."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import GatedRuntime, assert_openai_error, raw_post  # noqa: E402

import fastapi  # noqa: F401


@pytest.fixture(scope="module")
def torch_rt(tiny_llama):
    from edgellm.runtimes import open_runtime

    return open_runtime(str(tiny_llama), runtime="torch")


def _start(rt, **cfg):
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.engine import Engine
    from edgellm.serving.server import start_server

    return start_server(Engine(rt, rt.tokenizer, max_queue=cfg.pop("max_queue", 4)).start(),
                        ServeConfig(model_id="tiny", **cfg))


def _body(max_tokens=5, stream=False):
    return json.dumps({"model": "tiny", "prompt": "open the door", "max_tokens": max_tokens, "temperature": 0,
                       "stream": stream})


def test_full_queue_answers_429_and_recovers(torch_rt):
    gated = GatedRuntime(torch_rt)
    gated.gate.clear()                                   # the first request holds the model
    srv = _start(gated, max_queue=1)
    results = []
    try:
        first = threading.Thread(target=lambda: results.append(raw_post(srv.url, "/v1/completions", _body())))
        first.start()
        assert gated.started.wait(10)
        second = threading.Thread(target=lambda: results.append(raw_post(srv.url, "/v1/completions", _body())))
        second.start()
        deadline = time.monotonic() + 10
        while srv.engine.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body = raw_post(srv.url, "/v1/completions", _body())
        err = assert_openai_error(status, body, 429)
        assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
        gated.gate.set()
        first.join(30)
        second.join(30)
        assert sorted(s for s, _ in results) == [200, 200]
        status, body = raw_post(srv.url, "/v1/completions", _body())
        assert status == 200 and body["usage"]["completion_tokens"] == 5
    finally:
        gated.gate.set()
        srv.stop()


def test_timeout_answers_504_and_stops(torch_rt):
    gated = GatedRuntime(torch_rt, delay=0.3)            # 200 tokens would take a minute
    srv = _start(gated, timeout_s=3.0, max_tokens_limit=200)
    try:
        t0 = time.monotonic()
        status, body = raw_post(srv.url, "/v1/completions", _body(max_tokens=200))
        err = assert_openai_error(status, body, 504)
        assert err["code"] == "timeout" and "timed out" in err["message"]
        assert time.monotonic() - t0 < 15 and gated.produced < 50
        gated.delay = 0.0
        status, body = raw_post(srv.url, "/v1/completions", _body(max_tokens=2))
        assert status == 200
    finally:
        srv.stop()


def test_client_disconnect_stops_generation(torch_rt):
    gated = GatedRuntime(torch_rt, delay=0.05)
    srv = _start(gated, max_tokens_limit=200)
    try:
        u = urlparse(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", "/v1/completions", body=_body(max_tokens=200, stream=True),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.fp.readline()                               # the first event arrived: generation is running
        conn.sock.close()
        conn.close()
        deadline = time.monotonic() + 10
        while srv.engine.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not srv.engine.busy
        assert gated.produced < 100, gated.produced      # 200 tokens would take 10 s; it stopped early
        gated.delay = 0.0
        status, _ = raw_post(srv.url, "/v1/completions", _body())
        assert status == 200
    finally:
        srv.stop()


def test_client_disconnect_stops_non_streaming_generation(torch_rt):
    gated = GatedRuntime(torch_rt, delay=0.05)
    srv = _start(gated, max_tokens_limit=200)
    try:
        u = urlparse(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", "/v1/completions", body=_body(max_tokens=200), headers={"Content-Type": "application/json"})
        assert gated.started.wait(10)
        time.sleep(0.3)
        conn.sock.close()                                # hang up without reading the answer
        conn.close()
        deadline = time.monotonic() + 10
        while srv.engine.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not srv.engine.busy and gated.produced < 100, gated.produced
    finally:
        srv.stop()


class _CharTokenizer:
    """Each id is one character: enough to test the detokenizer."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_text_decoder_holds_back_possible_stop_prefix():
    from edgellm.serving.engine import TextDecoder

    d = TextDecoder(_CharTokenizer(), stop=["END"])
    out = [d.push(ord(c)) for c in "abEN"]
    assert "".join(out) == "ab"                          # "EN" may start "END": held back
    assert d.push(ord("x")) == "ENx"                     # it did not
    d2 = TextDecoder(_CharTokenizer(), stop=["END"])
    text = "".join(d2.push(ord(c)) for c in "okEND and more")
    assert text == "ok" and d2.stopped and d2.flush() == ""
    d3 = TextDecoder(_CharTokenizer(), stop=[])
    assert "".join(d3.push(ord(c)) for c in "plain") + d3.flush() == "plain"
