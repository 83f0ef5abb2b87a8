"""The LiteRT runtime behind the Runtime interface: picked by suffix, refuses foreign or tampered folders,
decodes through its own KV cache with sampling and stop ids as every runtime does, and is served by eval."""

import json

import pytest
import torch

from conftest import make_tiny_llama, run_cli
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.models import load
from edgellm.runtimes import open_runtime, pick_runtime
from edgellm.runtimes.base import Runtime

import ai_edge_litert.interpreter  # noqa: F401  (the litert extra: a missing one fails here, never skips)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    src = make_tiny_llama(tmp_path_factory.mktemp("ltr") / "llama2", num_hidden_layers=2)
    r = export(src, "litert", tmp_path_factory.mktemp("ltr") / "lm.tflite", max_len=64, prefill_len=8,
               threads=2, ppl_tokens=256)
    return src, r.path


def test_interface_and_sampling_match_torch(lm):
    src, path = lm
    assert pick_runtime(path) == "litert" and pick_runtime(str(path / "model.tflite")) == "litert"
    rt, ref = open_runtime(path / "model.tflite", threads=1), open_runtime(load(src))
    assert isinstance(rt, Runtime) and rt.threads == 1 and rt.tokenizer is not None
    ids = torch.arange(10, 16)                                                    # the short prefill signature (8)
    kw = dict(temperature=0.8, top_p=0.9, seed=3)
    assert list(rt.generate(ids, 12, **kw)) == list(ref.generate(ids, 12, **kw))  # same rows, same sampler
    greedy = list(ref.generate(ids, 12))
    stop = greedy[4]
    assert list(rt.generate(ids, 12, stop_ids={stop})) == greedy[:greedy.index(stop) + 1]
    assert list(rt.generate(ids, 0)) == []
    # a prompt that starts a generation near the end of the cache runs out of positions with one line
    with pytest.raises(EdgeLLMError, match="exceed the exported KV cache"):
        list(rt.generate(torch.arange(5, 60), 12))                                # 55 + 11 steps > 64


def test_refuses_bare_files_tampering_and_wrong_tasks(lm, tmp_path):
    _, path = lm
    bare = tmp_path / "m.tflite"
    bare.write_bytes((path / "model.tflite").read_bytes())
    with pytest.raises(EdgeLLMError, match="bare file"):
        open_runtime(bare)
    with pytest.raises(EdgeLLMError, match="classification"):
        open_runtime(path, task="classification")
    with pytest.raises(EdgeLLMError, match="not a sequence classifier"):
        open_runtime(path).classify(["a"])
    import shutil

    copy = tmp_path / "copy.tflite"
    shutil.copytree(path, copy)
    info = json.loads((copy / "edgellm.json").read_text())
    (copy / "edgellm.json").write_text(json.dumps({**info, "format": "edgellm-onnx/1"}))
    with pytest.raises(EdgeLLMError):
        open_runtime(copy)


def test_eval_and_bench_on_the_artifact(lm, text_file):
    src, path = lm
    code, out, err = run_cli("eval", path, "--ppl", text_file, "--ctx", "64", "--max-tokens", "512",
                             "--reference", src, "--threads", "2")
    assert code == 0, err
    assert "litert" in out
    from edgellm.measure import measure_speed

    rt = open_runtime(path, threads=2)
    s = measure_speed(rt, prompt_len=16, new_tokens=8, runs=2)
    assert s.runtime == "litert" and s.decode_tok_s.median > 0 and s.weight_bytes == rt.weight_bytes()


def test_serve_answers_like_the_torch_model(lm):
    from edgellm.serving.app import ServeConfig
    from edgellm.serving.server import open_engine, start_server

    src, path = lm
    body = json.dumps({"model": "m", "prompt": "open the door", "max_tokens": 6, "temperature": 0})
    texts = []
    for spec in (path, src):
        srv = start_server(open_engine(spec, threads=2), ServeConfig(model_id="m"))
        try:
            import http.client
            from urllib.parse import urlparse

            u = urlparse(srv.url)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            assert resp.status == 200, answer
            assert answer["usage"]["completion_tokens"] == 6
            texts.append(answer["choices"][0]["text"])
        finally:
            srv.stop()
    assert texts[0] == texts[1]
