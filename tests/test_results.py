"""The config-first API: each capability is ``f(model, Config) -> Result``, and every Result's ``to_dict()`` is JSON.

One instance of every ``edgellm.results.Result`` subclass comes from a real call through the public
API on a tiny random model (export through ``edgellm.export`` with a config object, not the CLI), so
a new Result class without a sample here fails ``test_every_result_class_has_a_sample``.
"""

import importlib
import json

import pytest
import torch

import edgellm
from edgellm.errors import EdgeLLMError
from edgellm.results import Result


@pytest.fixture(scope="module")
def samples(tiny_llama, tiny_bert_cls, tsv_file, text_file, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny ops on a shared CPU: one thread is the fastest
    tmp = tmp_path_factory.mktemp("results")
    try:
        m = edgellm.load(tiny_llama)
        out = {}
        _, out["QuantResult"] = edgellm.quantize(edgellm.load(tiny_llama), edgellm.QuantConfig(method="rtn", bits=8),
                                                 progress=False)
        _, out["PruneResult"] = edgellm.prune(edgellm.load(tiny_llama),
                                              edgellm.PruneConfig(method="magnitude", sparsity=0.5), progress=False)
        ev = edgellm.evaluate(m, edgellm.EvalConfig(ppl=str(text_file), ctx=64, max_tokens=128))
        out["EvalResult"], out["PerplexityResult"] = ev, ev.perplexity
        cls = edgellm.evaluate(tiny_bert_cls, edgellm.EvalConfig(tsv=str(tsv_file), max_rows=16))
        out["EvalResult (classifier)"], out["ClassifyResult"] = cls, cls.classification
        out["ExportResult"] = edgellm.export(m, edgellm.GGUFExportConfig(gguf_type="f16"), tmp / "m.gguf",
                                             threads=1, ppl_tokens=256)
        out["ExportResult (onnx)"] = edgellm.export(m, edgellm.OnnxExportConfig(variant="fp32"), tmp / "m.onnx",
                                                    threads=1, ppl_tokens=256)
        cfg = edgellm.DistillConfig(steps=2, lr=1e-3, batch_size=2, seq_len=32, warmup=1, val_tokens=64, eval_every=2)
        out["DistillResult"] = edgellm.distill(m, edgellm.student_from_teacher(m, keep_layers=2), text_file, cfg,
                                               progress=False)
        b = edgellm.bench(str(tiny_llama), edgellm.BenchConfig(prompt_len=8, new_tokens=4, runs=1, warmup=0,
                                                               machine=False), threads=1)
        out["BenchResult"], out["SpeedResult"] = b, b.speed
        from edgellm.calibconfig import CalibConfig
        from edgellm.exporters import gguf, gguf_mix

        cfg = edgellm.GGUFExportConfig(target_bpw=6.0, calib=CalibConfig(data=str(text_file), samples=2, seq_len=32))
        out["MixPlan"] = gguf_mix.plan_mix(m, cfg, names=gguf.tensor_names(m.model, gguf.gguf_family(m.model)),
                                           write=gguf.write_gguf)
        _, out["RotateResult"] = edgellm.rotate(edgellm.load(tiny_llama), edgellm.RotateConfig(seed=0))
        (tmp / "task.jsonl").write_text('{"prompt": "turn the light", "completion": " on"}\n')
        out["TaskResult"] = edgellm.evaluate_task(edgellm.open_runtime(m, device="cpu", threads=1),
                                                  edgellm.read_task(tmp / "task.jsonl"), max_new_tokens=4)
    finally:
        torch.set_num_threads(n)
    return out


def _subclasses(cls) -> set:
    return {c for sub in cls.__subclasses__() for c in {sub} | _subclasses(sub)}


def test_every_result_class_has_a_sample(samples):
    for target in edgellm._API.values():       # import every public module, so their Result classes exist
        importlib.import_module(target.split(":")[0])
    names = {c.__name__ for c in _subclasses(Result) if not c.__module__.startswith(("test_", "edgellm.results"))}
    assert {"QuantResult", "PruneResult", "DistillResult", "ExportResult", "PerplexityResult", "EvalResult",
            "BenchResult", "ClassifyResult", "SpeedResult", "RotateResult"} <= names
    missing = names - {type(r).__name__ for r in samples.values()}
    assert not missing, f"Result classes with no sample in this test: {sorted(missing)}"


def test_every_result_to_dict_is_json(samples):
    for label, r in samples.items():
        assert isinstance(r, Result), label
        d = r.to_dict()
        text = json.dumps(d, allow_nan=False)
        assert json.loads(text) == d, label          # plain data: nothing that json turns into something else


def test_result_dicts_keep_the_keys_the_cli_prints(samples):
    assert sorted(samples["EvalResult"].to_dict()) == ["model", "perplexity", "runtime", "text", "threads"]
    assert sorted(samples["EvalResult (classifier)"].to_dict()) == ["classification", "model", "runtime", "threads"]
    b = samples["BenchResult"].to_dict()
    assert "machine" not in b and "bandwidth_utilisation" not in b      # BenchConfig(machine=False)
    assert b["speed"]["runs"] == 1 and b["peak_rss_bytes"] > 0
    d = samples["DistillResult"].to_dict()
    assert "student" not in d and d["steps"] == 2
    assert samples["ExportResult"].to_dict()["path"] == str(samples["ExportResult"].path)


def test_export_takes_its_config_through_the_api(samples):
    g, o = samples["ExportResult"], samples["ExportResult (onnx)"]
    assert (g.format, g.runtime, g.details["gguf_type"]) == ("gguf", "llama.cpp", "f16")
    assert g.path.is_file() and g.verification["ppl"]["kl"] < 1e-3
    assert (o.format, o.runtime) == ("onnx", "onnxruntime") and o.path.exists() and o.verification
    with pytest.raises(EdgeLLMError, match="export config"):
        edgellm.export(str(g.path), edgellm.QuantConfig(), g.path.parent / "x", verify=False)


def test_serve_takes_a_serve_config(tiny_llama, monkeypatch):
    import edgellm.serving.server as server

    seen = []

    class NoServer:                   # what serve() would run, recorded instead of listening
        def __init__(self, app, config):
            seen.append((app, config))

        def run(self):
            pass

    monkeypatch.setattr(server, "_uvicorn_server", NoServer)
    edgellm.serve(str(tiny_llama), edgellm.ServeConfig(port=0, max_queue=2), threads=1)
    edgellm.serve(str(tiny_llama), edgellm.ServeConfig(port=0), threads=1, max_queue=3, model_id="tiny")
    (app, first), (_, second) = seen
    assert (first.port, first.max_queue, first.model_id) == (0, 2, server.default_model_id(str(tiny_llama)))
    assert (second.max_queue, second.model_id) == (3, "tiny")
    assert app.app.state.config is first          # the app answers with the config it was given
    with pytest.raises(EdgeLLMError, match="ServeConfig"):
        edgellm.serve(str(tiny_llama), edgellm.QuantConfig())
