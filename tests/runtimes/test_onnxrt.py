"""ONNX Runtime behind the Runtime interface: eval/bench through the CLI, corrupted artifacts, bad specs."""

import pytest
import torch

from conftest import run_cli
from edgellm.measure import measure_speed
from edgellm.errors import EdgeLLMError
from edgellm.exporters.onnx import export_onnx
from edgellm.runtimes import open_runtime
from edgellm.runtimes.onnxrt import OnnxRuntime

import onnxruntime  # noqa: F401


@pytest.fixture(scope="module")
def lm_onnx(tiny_llama, tmp_path_factory):
    return export_onnx(tiny_llama, tmp_path_factory.mktemp("ort") / "lm.onnx")


def test_eval_and_bench_cli_on_an_onnx_folder(lm_onnx, text_file, tiny_llama):
    code, out, err = run_cli("eval", lm_onnx, "--ppl", text_file, "--ctx", "64", "--max-tokens", "512",
                             "--reference", tiny_llama, "--threads", "2")
    assert code == 0, err
    assert "onnxruntime" in out
    rt = open_runtime(lm_onnx, threads=2)
    s = measure_speed(rt, prompt_len=16, new_tokens=8, runs=2)
    assert s.runtime == "onnxruntime" and s.decode_tok_s.median > 0 and s.weight_bytes == rt.weight_bytes()


def test_model_onnx_file_inside_the_folder_opens_too(lm_onnx):
    assert isinstance(open_runtime(lm_onnx / "model.onnx"), OnnxRuntime)


def test_sampling_is_seeded_and_stop_ids_stop(lm_onnx):
    rt = open_runtime(lm_onnx)
    ids = torch.arange(10, 20)
    a = list(rt.generate(ids, 6, temperature=1.0, top_p=0.9, seed=1))
    assert a == list(rt.generate(ids, 6, temperature=1.0, top_p=0.9, seed=1))
    first = next(iter(rt.generate(ids, 4)))
    assert list(rt.generate(ids, 4, stop_ids={first})) == [first]


def test_corrupted_artifact_is_refused(lm_onnx, tmp_path):
    import shutil

    bad = tmp_path / "bad.onnx"
    shutil.copytree(lm_onnx, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    code, _, err = run_cli("eval", bad, "--max-tokens", "64", "--ctx", "32")
    assert code == 2 and "sha256" in err
    (bad / "manifest.json").unlink()                      # no manifest: onnxruntime itself must refuse it
    (bad / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgeLLMError, match="onnxruntime cannot load"):
        open_runtime(bad)


def test_bad_specs(tmp_path, lm_onnx):
    with pytest.raises(EdgeLLMError, match="does not exist"):
        open_runtime(tmp_path / "nope.onnx")
    stray = tmp_path / "stray.onnx"
    stray.write_bytes(b"x")
    with pytest.raises(EdgeLLMError, match="sidecar"):
        open_runtime(stray)
    with pytest.raises(EdgeLLMError, match="CPU"):
        open_runtime(lm_onnx, device="cuda")
    with pytest.raises(EdgeLLMError, match="not a sequence classifier"):
        open_runtime(lm_onnx).classify(["hello"])
