"""The server under hostile traffic: schemathesis against the app's own OpenAPI schema, then hypothesis-generated
bodies (valid-ish and invalid) for /v1/chat/completions and /v1/completions, all sent over real HTTP to
``edgellm serve`` running a tiny random Llama in a child process (the schema is read from an in-process app built
with ``openapi=True``; the served one does not publish it). At least 2,000 requests in all. Targets: no 5xx (a 503
for overload would be allowed; a sequential client never overloads), no server error inside a 200 stream, the
server still answers afterwards with no job left in flight, and the server process's RSS grows by less than 10%
from after the warm-up to the end (measured on the child, so the fuzzers' own memory does not count)."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import raw_get  # noqa: E402

import fastapi  # noqa: E402, F401
import schemathesis  # noqa: E402

MODEL = "tiny"
SCHEMATHESIS_EXAMPLES = 120     # per operation and mode; the two GETs have few examples -> ~480 requests
BODY_EXAMPLES = 800             # per endpoint -> 1,600 requests
LIMIT = 3                       # max_tokens_limit: keeps each generation to a few tokens of the tiny model


def _fast(n: int):
    return settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(tiny_llama):
    import psutil

    from edgellm.serving.app import ServeConfig, create_app
    from edgellm.serving.server import open_engine, spawn_server

    proc, url = spawn_server(tiny_llama, ["--runtime", "torch", "--threads", 1, "--model-name", MODEL, "--max-queue", 4,
                                          "--max-tokens-limit", LIMIT, "--max-prompt-tokens", 96, "--timeout", 30])
    engine = open_engine(str(tiny_llama), runtime="torch", max_queue=4)     # only to build the app that has the schema
    app = create_app(engine, ServeConfig(model_id=MODEL, max_tokens_limit=LIMIT, max_prompt_tokens=96), openapi=True)
    try:
        yield url, app, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        engine.stop()


# -- hypothesis bodies ---------------------------------------------------------------------------------
JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
TEXT = st.one_of(st.sampled_from(["turn on the light", "", " ", "\n\n", "play music " * 30, "é✓😀\u200b\u0000",
                                  "\ud800 lone surrogate", "</s>", "<s><s>", "{\"json\": 1}"]),
                 st.text(max_size=40))
COUNT = st.one_of(st.none(), st.integers(-3, LIMIT + 2), st.sampled_from([0, 10**6, 2**31, 2**63, 2**64 + 1, 10**30]),
                  st.floats(allow_nan=True), st.sampled_from(["4", "many"]))
FLOAT = st.one_of(st.floats(-3, 3), st.sampled_from([0, 0.0, -0.0, 1e-300, -1, 2.0000001, 1e308]),
                  st.floats(allow_nan=True), st.text(max_size=3), st.none())
SEED = st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=3))
STOP = st.one_of(st.none(), TEXT, st.lists(TEXT, max_size=6), st.integers(), st.lists(JUNK, max_size=2))
SCHEMA = st.sampled_from([{"type": "object"}, {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]},
                          {"type": "string", "maxLength": 3}, {"enum": ["a", "b"]}, {"type": "integer"}, {}, {"type": "nope"},
                          {"$ref": "#/nowhere"}, {"type": "array", "items": {"type": "number"}, "maxItems": 2},
                          {"pattern": "(a|b)*c", "type": "string"}, {"type": "string", "pattern": "["}, 7, []])
RESPONSE_FORMAT = st.one_of(st.none(), st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"},
                                                        {"type": "xml"}, "json"]),
                            st.builds(lambda s, n: {"type": "json_schema", "json_schema": {"name": n, "schema": s}},
                                      SCHEMA, st.sampled_from(["out", "", 5])))
CONTENT = st.one_of(TEXT, st.none(), JUNK,
                    st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, TEXT),
                                       st.just({"type": "image_url", "image_url": {"url": "http://x/y.png"}}),
                                       st.just({"type": "text", "text": 3}), st.just({"type": "text"}), JUNK), max_size=3))
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]),
                                           "content": CONTENT}),
                    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["wizard", "", "USER"]), JUNK), "content": CONTENT}),
                    st.fixed_dictionaries({"content": TEXT}), JUNK)
COMMON = {"model": st.one_of(st.just(MODEL), st.just(MODEL), st.just(MODEL), st.sampled_from(["gpt-4", "", "TINY"]), JUNK),
          "max_tokens": COUNT, "temperature": FLOAT, "top_p": FLOAT, "seed": SEED, "stop": STOP,
          "stream": st.one_of(st.booleans(), st.booleans(), JUNK),
          "stream_options": st.one_of(st.none(), st.just({"include_usage": True}), JUNK),
          "n": st.one_of(st.just(1), st.integers(-1, 3), JUNK), "logprobs": st.one_of(st.none(), st.booleans(), st.integers(0, 5), JUNK),
          "top_logprobs": st.one_of(st.none(), st.integers(0, 5)), "user": JUNK, "frequency_penalty": FLOAT,
          "response_format": RESPONSE_FORMAT, "zzz_extra": JUNK}
CHAT_FIELDS = {**COMMON, "messages": st.one_of(st.lists(MESSAGE, max_size=4), JUNK), "max_completion_tokens": COUNT,
               "tools": st.one_of(st.none(), st.just([]), JUNK)}
COMPLETION_FIELDS = {**COMMON, "prompt": st.one_of(TEXT, st.lists(TEXT, max_size=3), st.lists(st.integers(0, 400), max_size=5), JUNK),
                     "echo": st.one_of(st.booleans(), JUNK), "suffix": JUNK, "best_of": JUNK}
# valid bodies (any unicode, stop strings, streaming, seeds, extra fields) reach the model; each is also sent with
# one or two fields replaced by hostile values or removed, and fully random bodies come too
SAFE = st.one_of(st.sampled_from(["turn on the light", " ", "\n\n", "play music " * 12, "é✓😀\u200b\u0000", "</s>", "{\"a\": 1}"]),
                 st.text(min_size=1, max_size=40))
GOOD = {"max_tokens": st.integers(1, LIMIT), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
        "seed": st.integers(-(2**63), 2**63 - 1), "stop": st.one_of(st.none(), SAFE, st.lists(SAFE, max_size=4)),
        "stream": st.booleans(), "stream_options": st.just({"include_usage": True}), "n": st.just(1),
        "logprobs": st.sampled_from([None, False]), "user": st.text(max_size=8), "zzz_extra": JUNK,
        "response_format": st.sampled_from([None, {"type": "text"}])}
PART = st.builds(lambda t: {"type": "text", "text": t}, SAFE)
GOOD_CHAT = st.fixed_dictionaries({"model": st.just(MODEL), "messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]),
     "content": st.one_of(SAFE, st.lists(PART, min_size=1, max_size=2))}), min_size=1, max_size=3)}, optional=GOOD)
GOOD_COMPLETION = st.fixed_dictionaries({"model": st.just(MODEL), "prompt": st.one_of(SAFE, st.lists(SAFE, min_size=1, max_size=1))},
                                        optional={**GOOD, "echo": st.booleans()})


def _mutated(good, fields: dict):
    def swap(body_keys):
        body, keys = body_keys
        out = dict(body)
        for k in keys:
            out.pop(k, None)
        return st.fixed_dictionaries({k: st.one_of(fields[k], fields[k], st.just(None)) for k in keys}).map(
            lambda new: {**out, **{k: v for k, v in new.items() if v is not None}})
    return st.tuples(good, st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True)).flatmap(swap)


CHAT = st.one_of(GOOD_CHAT, _mutated(GOOD_CHAT, CHAT_FIELDS), st.fixed_dictionaries({}, optional=CHAT_FIELDS))
COMPLETION = st.one_of(GOOD_COMPLETION, _mutated(GOOD_COMPLETION, COMPLETION_FIELDS),
                       st.fixed_dictionaries({}, optional=COMPLETION_FIELDS))


def _encode(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


RAW = st.sampled_from([b"", b"{", b"null", b"[]", b"\"x\"", b"{\"model\": \"tiny\", \"messages\": [}", b"\xff\xfe{}",
                       b"{\"model\": \"tiny\", \"prompt\": \"a\", \"max_tokens\": 1e999}", b"{" * 5000 + b"}" * 5000,
                       b"{\"prompt\": \"a\", \"prompt\": 1, \"model\": \"tiny\"}"])


class Http:
    """A keep-alive HTTP/1.1 connection that counts its requests and reconnects when the server closes it."""

    def __init__(self, url: str):
        u = urlparse(url)
        self.host, self.port, self.conn, self.sent = u.hostname, u.port, None, 0

    def post(self, path: str, data: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request("POST", path, body=data, headers={"Content-Type": ctype})
                resp = self.conn.getresponse()
                self.sent += 1
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _is_error_object(text: str) -> bool:
    try:
        err = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str) and bool(err["message"])


def _check(tally: Counter, failures: list, what: str, status: int, payload: bytes, sent) -> None:
    tally[status] += 1
    text = payload.decode("utf-8", "replace")
    if status >= 500 and status != 503:
        failures.append((what, status, repr(sent)[:300], text[:300]))
    elif status >= 400 and not _is_error_object(text):
        failures.append((what, status, repr(sent)[:300], "not an OpenAI error object: " + text[:200]))
    elif status == 200 and "server_error" in text:     # an error inside a 200 stream
        failures.append((what, status, repr(sent)[:300], text[-300:]))


def test_fuzz_api(served):
    url, app, server = served
    root = url[:-len("/v1")]
    http_client, tally, failures = Http(url), Counter(), []
    # the schema as the app publishes it, detached from the in-process app so that every call goes to the child
    schema = schemathesis.openapi.from_dict(schemathesis.openapi.from_asgi("/openapi.json", app).raw_schema)
    calls = Counter()

    def schemathesis_phase(n: int) -> None:
        """Every operation of the published schema, positive and (where there is a body) negative."""
        for op in (o.ok() for o in schema.get_all_operations()):
            post = op.method.upper() == "POST"
            for mode in [schemathesis.GenerationMode.POSITIVE] + ([schemathesis.GenerationMode.NEGATIVE] if post else []):
                @_fast(n)
                @given(case=op.as_strategy(generation_mode=mode), ours=st.booleans())
                def run(case, ours):
                    if ours and isinstance(case.body, dict):          # reach the model, not only the 404 on 'model'
                        case.body["model"] = MODEL
                    r = case.call(base_url=root, timeout=60)
                    calls["schemathesis"] += 1
                    _check(tally, failures, f"schemathesis {mode.value} {op.label}", r.status_code, r.content, case.body)

                run()

    def body_phase(n: int) -> None:
        """Hypothesis bodies over real HTTP: JSON (with NaN, huge numbers, unicode, ...) and raw bytes."""
        for path, bodies in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
            @_fast(n)
            @given(body=st.one_of(bodies, bodies, bodies, RAW), ctype=st.sampled_from(["application/json"] * 9 + ["text/plain"]))
            def post(body, ctype):
                data = body if isinstance(body, bytes) else _encode(body)
                status, payload = http_client.post(path, data, ctype)
                calls["bodies"] += 1
                _check(tally, failures, f"body {path}", status, payload, body)

            post()

    schemathesis_phase(8)                   # warm-up: imports, strategy and allocator caches, the model's first calls
    body_phase(30)
    warm, rss_start, t0 = sum(calls.values()), server.memory_info().rss, time.monotonic()
    schemathesis_phase(SCHEMATHESIS_EXAMPLES)
    body_phase(BODY_EXAMPLES)
    status, health = raw_get(url, "/health")
    rss_end = server.memory_info().rss
    growth, total = (rss_end - rss_start) / rss_start, sum(calls.values()) - warm
    print(f"\nfuzz: {total} requests after {warm} warm-up in {time.monotonic() - t0:.1f} s ({dict(calls)} with warm-up), "
          f"status codes {dict(sorted(tally.items()))}, RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB "
          f"({100 * growth:+.2f}%), failures {len(failures)}")
    kinds = Counter((what, status, text[:70]) for what, status, _, text in failures)
    assert not failures, "\n".join([*map(str, kinds.most_common()), *map(str, failures[:8])])
    assert total >= 2000, total
    assert tally[200] >= 300, tally                 # valid requests did reach the model
    assert status == 200 and health["in_flight"] == 0 and health["waiting"] == 0 and not health["busy"], health
    assert health["submitted"] == health["finished"] > 0, health
    assert growth < 0.10, f"RSS grew {100 * growth:.1f}% over the fuzz"
