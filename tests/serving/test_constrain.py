"""Constrained decoding: sampled output of a random model always parses and matches the schema, even when
``max_tokens`` is just enough; schemas we cannot enforce are refused; over HTTP the same holds."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

import outlines_core  # noqa: F401

from edgellm.errors import EdgeLLMError  # noqa: E402
from edgellm.runtimes.constrain import SchemaCompiler, check_schema, token_bytes  # noqa: E402

ACTION = {
    "type": "object",
    "properties": {
        "device": {"type": "string", "enum": ["light", "speaker", "heater", "door"]},
        "action": {"type": "string", "enum": ["turn_on", "turn_off", "set", "open", "close"]},
        "room": {"type": "string", "maxLength": 12},
        "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["device", "action", "room", "value", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def rt(tiny_llama):
    from edgellm.runtimes import open_runtime

    return open_runtime(str(tiny_llama), runtime="torch")


@pytest.fixture(scope="module")
def compiler(rt):
    return SchemaCompiler(rt.tokenizer, vocab_rows=rt.model.config.vocab_size)


def _generate(rt, proc, max_tokens: int, seed: int) -> tuple[str, int]:
    ids = torch.tensor(rt.tokenizer("turn on the light")["input_ids"])
    out = []
    for tok in rt.generate(ids, max_tokens, temperature=1.0, seed=seed, stop_ids=(rt.tokenizer.eos_token_id,),
                           logits_processor=proc):
        if tok == rt.tokenizer.eos_token_id:
            break
        out.append(tok)
        proc.update(out)
        if proc.finished():
            break
    return rt.tokenizer.decode(out), len(out)


def test_token_bytes_round_trip(rt):
    tb = token_bytes(rt.tokenizer)
    ids = rt.tokenizer("the living room light", add_special_tokens=False)["input_ids"]
    assert b"".join(tb[i] for i in ids).decode() == "the living room light"
    assert rt.tokenizer.eos_token_id not in tb


@pytest.mark.parametrize("seed", range(4))
def test_sampled_output_always_valid(rt, compiler, seed):
    compiled = compiler.compile(ACTION)
    text, n = _generate(rt, compiler.processor(compiled, 120), 120, seed)
    jsonschema.validate(json.loads(text), ACTION)
    assert n <= 120


@pytest.mark.parametrize("seed", range(3))
def test_tight_budget_still_closes_the_json(rt, compiler, seed):
    compiled = compiler.compile(ACTION)
    budget = compiled.min_tokens() + 2
    text, n = _generate(rt, compiler.processor(compiled, budget), budget, seed)
    jsonschema.validate(json.loads(text), ACTION)
    assert n <= budget


def test_budget_below_minimum_refused(compiler):
    compiled = compiler.compile(ACTION)
    with pytest.raises(EdgeLLMError, match="too small"):
        compiler.processor(compiled, compiled.min_tokens() - 1)


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "integer", "minimum": 3}, "minimum"),
    ({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}}, "multipleOf"),
    ({"type": "nonsense"}, "invalid JSON schema"),
    ([1, 2], "must be an object"),
])
def test_unenforceable_schemas_refused(schema, fragment):
    with pytest.raises(EdgeLLMError, match=fragment):
        check_schema(schema)


def test_over_http_json_schema_and_json_object(tiny_llama):
    import openai
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.server import open_engine, start_server

    srv = start_server(open_engine(str(tiny_llama), runtime="torch"), ServeConfig(model_id="tiny"))
    try:
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        fmt = {"type": "json_schema", "json_schema": {"name": "action", "schema": ACTION, "strict": True}}
        msgs = [{"role": "user", "content": "heater to 21 in the bedroom"}]
        for seed in range(3):
            r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=100, temperature=1.0, seed=seed,
                                          response_format=fmt)
            jsonschema.validate(json.loads(r.choices[0].message.content), ACTION)
            assert r.choices[0].finish_reason == "stop"
        chunks = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=100, temperature=1.0, seed=9,
                                           response_format=fmt, stream=True)
        jsonschema.validate(json.loads("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)), ACTION)
        r = c.completions.create(model="tiny", prompt="{", max_tokens=40, temperature=1.0, seed=1,
                                 extra_body={"response_format": {"type": "json_object"}})
        assert isinstance(json.loads(r.choices[0].text), dict)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=msgs, max_tokens=50, response_format={
                "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer", "maximum": 3}}})
        assert "maximum" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=msgs, max_tokens=3, response_format=fmt)
        assert "too small" in e.value.body["message"]
    finally:
        srv.stop()
