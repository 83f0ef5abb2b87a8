"""Helpers shared by the serve tests (imported explicitly; conftest.py is shared and left alone)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse


class GatedRuntime:
    """Wraps a real runtime: each generated token waits *delay* seconds, and generation starts only once
    ``gate`` is set. Counts the tokens it produced, so tests can see that generation really stopped."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner = inner
        self.name = inner.name
        self.model = getattr(inner, "model", None)
        self.max_positions = inner.max_positions
        self.tokenizer = inner.tokenizer
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.produced = 0
        self.started = threading.Event()

    def generate(self, ids, max_new_tokens, temperature=0.0, top_p=1.0, seed=None, stop_ids=(), logits_processor=None):
        self.started.set()
        self.gate.wait(timeout=30)
        for tok in self.inner.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                       stop_ids=stop_ids, logits_processor=logits_processor):
            time.sleep(self.delay)
            self.produced += 1
            yield tok


def _request(method: str, url: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """*path* is absolute from the server root ("/health", "/v1/models"); returns (status, parsed JSON)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    if isinstance(body, str):
        body = body.encode()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def raw_post(url: str, path: str, body: bytes | str, headers: dict | None = None):
    return _request("POST", url, path, body, headers)


def raw_get(url: str, path: str, headers: dict | None = None):
    return _request("GET", url, path, None, headers)


def assert_openai_error(status: int, body: dict, expected_status: int) -> dict:
    assert status == expected_status, (status, body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err
