"""The real thing, once: SmolLM2's shipped Q4_1 GGUF served by the llama.cpp runtime (chat template from the
GGUF, token-level constrained output over llama.cpp's own vocabulary)."""

from __future__ import annotations

import json

import jsonschema
import pytest

import llama_cpp  # noqa: F401
import openai

SCHEMA = {"type": "object",
          "properties": {"device": {"type": "string", "enum": ["light", "speaker", "thermostat"]},
                         "action": {"type": "string", "enum": ["turn_on", "turn_off", "set"]},
                         "room": {"anyOf": [{"type": "string", "enum": ["living_room", "kitchen", "bedroom"]},
                                            {"type": "null"}]},
                         "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
          "required": ["device", "action", "room", "value"], "additionalProperties": False}


@pytest.mark.slow
def test_smollm2_gguf_chat_and_constrained():
    from edgellm.models import builtin_path
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.server import open_engine, start_server

    engine = open_engine(str(builtin_path("smollm2-135m")), threads=2)
    assert engine.runtime.name == "llama.cpp"
    srv = start_server(engine, ServeConfig(model_id="smollm2"))
    try:
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        r = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=24, temperature=0)
        # greedy output must be exactly what llama-cpp-python's own chat completion gives for the same
        # GGUF (the 135M Q4_1 model itself does not answer "Paris" here, so content is not asserted)
        from llama_cpp import Llama

        ref = Llama(str(builtin_path("smollm2-135m")), n_ctx=512, n_threads=2, verbose=False)
        expected = ref.create_chat_completion(msgs, max_tokens=24, temperature=0)["choices"][0]["message"]["content"]
        assert r.choices[0].message.content == expected
        assert "<|im" not in r.choices[0].message.content
        fmt = {"type": "json_schema", "json_schema": {"name": "action", "schema": SCHEMA}}
        msgs = [{"role": "user", "content": "Turn on the kitchen light. Reply in JSON."}]
        r = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=48, temperature=0, response_format=fmt)
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert r.choices[0].finish_reason == "stop"
    finally:
        srv.stop()
