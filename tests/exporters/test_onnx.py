"""ONNX export: tiny models reproduce PyTorch's logits in onnxruntime; verification; bad input."""

import json
import sys

import pytest
import torch

from conftest import make_tiny_bert, run_cli
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.onnx import OnnxExportConfig, export_onnx, fake_quantized
from edgellm.models import load
from edgellm.runtimes import open_runtime

import onnxruntime  # noqa: F401


@pytest.fixture(scope="module")
def lm_fp32(tiny_llama, tmp_path_factory):
    return export(tiny_llama, "onnx", tmp_path_factory.mktemp("onnx") / "lm.onnx", variant="fp32", threads=2,
                  ppl_tokens=1024)


def test_fp32_causal_lm_matches_torch_and_decodes_with_cache(tiny_llama, lm_fp32):
    assert lm_fp32.verification["passed"] and lm_fp32.verification["prompts"]["max_abs_rel"] < 1e-4
    ref = open_runtime(load(tiny_llama))
    rt = open_runtime(lm_fp32.path, threads=2)
    assert rt.name == "onnxruntime" and rt.tokenizer is not None
    ids = torch.arange(5, 70)
    assert torch.allclose(rt.logits(ids), ref.logits(ids), atol=1e-4)
    assert list(rt.generate(ids, 12)) == list(ref.generate(ids, 12))       # token by token, through past/present
    info = json.loads((lm_fp32.path / "edgellm.json").read_text())
    assert info["inputs"][3:5] == ["past.0.key", "past.0.value"] and info["num_layers"] == 3
    assert 0 < rt.weight_bytes() < rt.file_bytes()


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_quantized_variants_are_verified_against_the_same_weights(tiny_llama, tmp_path, variant, lm_fp32):
    r = export(tiny_llama, "onnx", tmp_path / f"lm-{variant}.onnx", variant=variant, threads=2, ppl_tokens=1024)
    v = r.verification
    assert v["passed"] and v["ppl"]["kl"] < 0.02
    assert v["vs_source"]["kl"] >= v["ppl"]["kl"]                   # the reference holds the quantized weights
    rt = open_runtime(r.path)
    assert rt.weight_bytes() < 0.45 * open_runtime(lm_fp32.path).weight_bytes()
    ops = {n.op_type for n in __import__("onnx").load(str(r.path / "model.onnx")).graph.node}
    assert ("MatMulNBits" if variant == "int4" else "DynamicQuantizeMatMul") in ops or "MatMulInteger" in ops


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma"])
def test_other_causal_families_export_and_decode(family, tmp_path):
    from conftest import make_tiny_decoder

    src = make_tiny_decoder(tmp_path / family, family)
    r = export(src, "onnx", tmp_path / f"{family}.onnx", variant="fp32", threads=2, ppl_tokens=512)
    assert r.verification["passed"] and r.verification["prompts"]["max_abs_rel"] < 1e-4
    ref, rt = open_runtime(load(src)), open_runtime(r.path, threads=2)
    ids = torch.arange(5, 40)
    assert list(rt.generate(ids, 8)) == list(ref.generate(ids, 8))       # through past/present


def test_fake_quantized_reference_int4_is_on_a_16_level_grid(tiny_llama):
    ref = fake_quantized(load(tiny_llama), OnnxExportConfig(variant="int4", block_size=32))
    W = ref.model.model.layers[0].mlp.up_proj.weight                     # [192, 96]: 3 blocks per row
    for block in W.view(W.shape[0], -1, 32)[:4].reshape(-1, 32):
        assert block.unique().numel() <= 16


def test_classifier_fp32_and_int8(tiny_bert_cls, tsv_file, tmp_path):
    m = load(tiny_bert_cls)
    ref = open_runtime(m).classify(["the movie was good", "awful and boring"])
    for variant, tol in (("fp32", 1e-5), ("int8", 0.05)):
        r = export(m, "onnx", tmp_path / f"cls-{variant}.onnx", variant=variant)
        assert r.verification["passed"]
        out = open_runtime(r.path, threads=2).classify(["the movie was good", "awful and boring"])
        assert out.shape == (2, 2) and (out - ref).abs().max() < tol
    code, out, err = run_cli("eval", tmp_path / "cls-int8.onnx", "--tsv", tsv_file, "--threads", "2")
    assert code == 0, err
    assert "onnxruntime" in out


def test_unsupported_architecture_lists_supported(tiny_bert, tmp_path):
    with pytest.raises(EdgeLLMError) as e:
        export_onnx(tiny_bert, tmp_path / "enc.onnx")                       # a bare encoder, no head
    assert "causal-lm: llama" in e.value.hint and "classification: bert" in e.value.hint
    assert not (tmp_path / "enc.onnx").exists()


def test_existing_output_refused_unless_force(tiny_bert_cls, tmp_path):
    (tmp_path / "x.onnx").mkdir()
    code, _, err = run_cli("export", tiny_bert_cls, "--format", "onnx", "--out", tmp_path / "x.onnx")
    assert code == 2 and "already exists" in err
    code, _, err = run_cli("export", tiny_bert_cls, "--format", "onnx", "--out", tmp_path / "x.onnx", "--force")
    assert code == 0, err


def test_missing_onnxruntime_names_the_extra(tiny_bert_cls, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EdgeLLMError) as e:
        export_onnx(tiny_bert_cls, tmp_path / "m.onnx")
    assert "edgellm[onnx]" in e.value.hint


def test_invalid_config():
    with pytest.raises(EdgeLLMError):
        OnnxExportConfig(variant="int3")
    with pytest.raises(EdgeLLMError):
        OnnxExportConfig(variant="int4", block_size=24)


def test_classifier_encoder_is_fused_and_source_untouched(tiny_bert_cls, tmp_path):
    import onnx

    m = load(tiny_bert_cls)
    impl = m.model.config._attn_implementation
    ops = {}
    for variant, fuse in (("fp32", True), ("int8", True), ("int8", False)):
        r = export(m, "onnx", tmp_path / f"{variant}-{fuse}.onnx", variant=variant, fuse=fuse)
        assert r.verification["passed"]
        ops[variant, fuse] = {n.op_type for n in onnx.load(str(r.path / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops["fp32", True]
    assert "QAttention" in ops["int8", True] and "Softmax" not in ops["int8", True]
    assert "Softmax" in ops["int8", False] and not {"Attention", "QAttention"} & ops["int8", False]
    assert m.model.config._attn_implementation == impl                  # traced eager, then restored


def test_roberta_classifier_is_fused_and_verified(tiny_bert_cls, tmp_path):
    import onnx
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_bert_cls)                  # any tokenizer: ids are all that matter
    cfg = RobertaConfig(vocab_size=len(tok) + 2, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=130, num_labels=2,
                        pad_token_id=tok.pad_token_id, type_vocab_size=1)
    torch.manual_seed(0)
    RobertaForSequenceClassification(cfg).eval().save_pretrained(tmp_path / "roberta")
    tok.save_pretrained(tmp_path / "roberta")
    m = load(tmp_path / "roberta", task="classification")
    r = export(m, "onnx", tmp_path / "r-int8.onnx", variant="int8")
    assert r.verification["passed"]
    assert "QAttention" in {n.op_type for n in onnx.load(str(r.path / "model.onnx")).graph.node}
