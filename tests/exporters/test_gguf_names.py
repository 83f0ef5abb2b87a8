"""GGUF names and layouts: ``layout_of`` reads a llama.cpp preset's per-tensor types so edgellm writes the same."""

from __future__ import annotations

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.gguf_names import file_types, layout_of
from edgellm.exporters.llamacpp_quant import llama_quantize


@pytest.fixture(scope="module")
def tiny256_q4_k_m(tmp_path_factory):
    """A 4-layer model whose rows tile K-quants, and llama.cpp's own Q4_K_M of it (mixed: Q6_K, Q4_K, fallbacks)."""
    from conftest import make_tiny_llama
    from edgellm.models import load

    tmp = tmp_path_factory.mktemp("layout")
    m = load(make_tiny_llama(tmp / "llama", hidden_size=256, intermediate_size=320, num_hidden_layers=4))
    f32 = export(m, "gguf", tmp / "f32.gguf", gguf_type="f32", verify=False).path
    llama_quantize(f32, tmp / "q4_k_m.gguf", "q4_k_m")
    return m, tmp / "q4_k_m.gguf"


def test_export_with_layout_of_writes_the_presets_types_tensor_by_tensor(tiny256_q4_k_m, tmp_path):
    from conftest import synthetic_text

    from edgellm.calibconfig import CalibConfig

    m, ref = tiny256_q4_k_m
    (tmp_path / "calib.txt").write_text(synthetic_text(600, seed=1))
    calib = CalibConfig(data=str(tmp_path / "calib.txt"), samples=8, seq_len=64)
    theirs = {n: t for n, (t, _) in file_types(ref).items()}
    assert len({t for t in theirs.values() if t != "f32"}) >= 3          # a real mix, not one type
    for quantizer in ("rtn", "gptq"):
        out = export(m, "gguf", tmp_path / f"{quantizer}.gguf", layout_of=str(ref), quantizer=quantizer,
                     calib=calib, verify=quantizer == "rtn").path
        assert {n: t for n, (t, _) in file_types(out).items()} == theirs


def test_explicit_tensor_types_win_over_the_layout(tiny256_q4_k_m, tmp_path):
    m, ref = tiny256_q4_k_m
    name = "model.layers.0.mlp.up_proj.weight"
    assert layout_of(ref, m.model)[name] != "q8_0"
    out = export(m, "gguf", tmp_path / "o.gguf", layout_of=str(ref), tensor_types=(f"{name}=q8_0",), verify=False).path
    assert file_types(out)["blk.0.ffn_up.weight"][0] == "q8_0"


def test_a_layout_from_another_model_is_refused(tiny256_q4_k_m, tiny_llama, tmp_path):
    from edgellm.models import load

    _, ref = tiny256_q4_k_m
    with pytest.raises(EdgeLLMError, match="same model"):
        layout_of(ref, load(tiny_llama).model)
    with pytest.raises(EdgeLLMError, match="cannot read the GGUF"):
        layout_of(tmp_path, load(tiny_llama).model)
