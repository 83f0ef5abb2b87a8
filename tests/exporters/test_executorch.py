"""ExecuTorch export: a one-layer tiny Llama lowered to XNNPACK reproduces PyTorch's logits; static KV cache."""

import json
import sys

import pytest
import torch

from conftest import make_tiny_llama
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.executorch import ExecuTorchExportConfig, export_executorch
from edgellm.models import load
from edgellm.runtimes import open_runtime

import executorch  # noqa: F401


@pytest.fixture(scope="module")
def llama1(tmp_path_factory):
    # one layer keeps lowering short; GQA (4 heads, 2 kv heads) is what the cache layout must get right
    return make_tiny_llama(tmp_path_factory.mktemp("et") / "llama1", num_hidden_layers=1)


@pytest.fixture(scope="module")
def pte_fp32(llama1, tmp_path_factory):
    return export(llama1, "executorch", tmp_path_factory.mktemp("pte") / "lm.pte", variant="fp32", max_len=96,
                  threads=2, ppl_tokens=1024)


def test_fp32_program_matches_torch_with_static_cache(llama1, pte_fp32):
    assert pte_fp32.verification["passed"] and pte_fp32.verification["prompts"]["max_abs_rel"] < 1e-4
    ref = open_runtime(load(llama1))
    rt = open_runtime(pte_fp32.path, threads=2)
    assert rt.name == "executorch" and rt.max_positions == 96 and rt.threads == 2
    ids = torch.arange(5, 45)
    assert torch.allclose(rt.logits(ids), ref.logits(ids), atol=1e-4)
    assert list(rt.generate(ids, 16)) == list(ref.generate(ids, 16))      # decode through the cache
    short = torch.arange(7, 17)                                           # a shorter sequence after a longer one:
    assert torch.allclose(rt.logits(short), ref.logits(short), atol=1e-4)  # stale cache slots stay masked
    info = json.loads((pte_fp32.path / "edgellm.json").read_text())
    assert info["format"] == "edgellm-executorch/1" and 0 < rt.weight_bytes() < rt.file_bytes()


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma"])
def test_other_families_lower_and_decode(family, tmp_path):
    """Qwen2 (Q/K/V biases), Qwen3 (Q/K RMSNorm per head, head_dim ≠ hidden / heads) and Gemma (embedding × √hidden,
    norms 1 + w, GELU) through the static cache. One layer holds every one of these (lowering time grows with the
    layers); the cache of several layers is checked on a 3-layer Llama (tests/evaluation/test_task_eval.py)."""
    from conftest import make_tiny_decoder

    src = make_tiny_decoder(tmp_path / family, family, num_hidden_layers=1)
    r = export(src, "executorch", tmp_path / f"{family}.pte", variant="fp32", max_len=64, threads=2, ppl_tokens=256)
    assert r.verification["passed"] and r.verification["prompts"]["max_abs_rel"] < 1e-4
    ids = torch.arange(5, 30)
    assert list(open_runtime(r.path).generate(ids, 8)) == list(open_runtime(load(src)).generate(ids, 8))


def test_int4_program_is_verified_against_the_same_weights(llama1, tmp_path, pte_fp32):
    r = export(llama1, "executorch", tmp_path / "lm4.pte", variant="int4", max_len=96, threads=2, ppl_tokens=1024)
    v = r.verification
    assert v["passed"] and v["ppl"]["kl"] < 0.02 and v["vs_source"]["kl"] >= v["ppl"]["kl"]
    assert open_runtime(r.path).weight_bytes() < 0.5 * open_runtime(pte_fp32.path).weight_bytes()


def test_positions_beyond_the_cache_are_refused(pte_fp32):
    rt = open_runtime(pte_fp32.path)
    with pytest.raises(EdgeLLMError, match="exceed the exported KV cache"):
        rt.logits(torch.arange(97) % 50)


def test_bad_input(tiny_bert_cls, tmp_path, monkeypatch, pte_fp32):
    with pytest.raises(EdgeLLMError) as e:
        export_executorch(tiny_bert_cls, tmp_path / "c.pte")
    assert "causal-lm: llama" in e.value.hint
    with pytest.raises(EdgeLLMError):
        ExecuTorchExportConfig(variant="int2")
    with pytest.raises(EdgeLLMError, match="classification"):
        open_runtime(pte_fp32.path, task="classification")
    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(EdgeLLMError) as e:
        export_executorch(tiny_bert_cls, tmp_path / "d.pte")
    assert "edgellm[executorch]" in e.value.hint
