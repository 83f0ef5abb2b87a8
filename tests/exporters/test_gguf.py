"""GGUF export: block encoders bit-exact with llama.cpp's, edgellm codes written as is, tiny exports that
reproduce the logits in llama.cpp, atomic writes, and the bad-input errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.exporters.gguf_blocks import GridMismatch, from_quantized, pack, rtn
from edgellm.exporters.gguf import GGUFExportConfig, permute_qk, unpermute_qk
from edgellm.models import load

import gguf


# -- block encoders (no llama.cpp needed) -------------------------------------------------------
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_rtn_blocks_bit_exact_with_gguf_reference(qtype):
    torch.manual_seed(0)
    W = torch.randn(48, 160) * 0.05
    W[3, :32] = 0.0                                   # an all-zero block (d = 0)
    W[5, 40] = 1.0                                    # an outlier
    ref = gguf.quants.quantize(W.numpy(), gguf.GGMLQuantizationType[qtype.upper()])
    bc = rtn(W, qtype)
    assert np.array_equal(pack(bc), ref)
    deq = gguf.quants.dequantize(ref, gguf.GGMLQuantizationType[qtype.upper()])
    assert np.array_equal(bc.dequantize().numpy(), deq)


def _qw(codes, scale, zero, bits, group, symmetric):
    return SimpleNamespace(codes=codes.to(torch.uint8), scale=scale.half(), zero=zero.to(torch.uint8),
                           group_size=group, bits=bits, symmetric=symmetric)


def _dequant(q):
    g = q.group_size
    s = q.scale.float().repeat_interleave(g, 1)
    z = q.zero.float().repeat_interleave(g, 1)
    return (q.codes.float() - z) * s


@pytest.mark.parametrize("bits,qtype,group", [(4, "q4_0", 32), (4, "q4_0", 64), (8, "q8_0", 32), (4, "q4_1", 32)])
def test_edgellm_codes_go_in_exactly(bits, qtype, group):
    torch.manual_seed(1)
    out_f, in_f = 16, 128
    codes = torch.randint(0, 2**bits, (out_f, in_f))
    scale = torch.rand(out_f, in_f // group) * 0.01 + 1e-3
    sym = qtype != "q4_1"
    zero = torch.full_like(scale, 2 ** (bits - 1)) if sym else torch.randint(0, 16, scale.shape)
    q = _qw(codes, scale, zero, bits, group, sym)
    bc = from_quantized(q, qtype)
    got = bc.dequantize()
    want = _dequant(q)
    if qtype == "q4_1":   # m = −scale·zero is rounded once to fp16: error below half an fp16 ulp of m
        assert (got - want).abs().max().item() <= (scale * zero).max().item() * 2**-11
        assert torch.equal(bc.codes, codes.to(torch.int16))
    else:
        assert torch.equal(got, want)
    # and the packed bytes decode to the same numbers in gguf's (llama.cpp-equivalent) reader
    deq = gguf.quants.dequantize(pack(bc), gguf.GGMLQuantizationType[qtype.upper()])
    assert np.array_equal(deq, got.numpy())


def test_grid_mismatch_is_refused():
    codes = torch.randint(0, 16, (4, 64))
    asym = _qw(codes, torch.rand(4, 2), torch.randint(0, 16, (4, 2)), 4, 32, False)
    with pytest.raises(GridMismatch, match="symmetric"):
        from_quantized(asym, "q4_0")
    with pytest.raises(GridMismatch, match="not a multiple of the 32-wide"):
        from_quantized(_qw(codes, torch.rand(4, 4), torch.full((4, 4), 8), 4, 16, True), "q4_0")
    with pytest.raises(GridMismatch, match="4-bit"):
        from_quantized(_qw(codes, torch.rand(4, 2), torch.full((4, 2), 4), 3, 32, True), "q4_1")
    with pytest.raises(GridMismatch):
        rtn(torch.randn(4, 40), "q8_0")


def test_qk_permutation_roundtrip_and_config():
    W = torch.arange(8 * 6 * 3, dtype=torch.float32).view(48, 3)
    assert torch.equal(unpermute_qk(permute_qk(W, 4), 4), W)
    assert not torch.equal(permute_qk(W, 4), W)
    assert GGUFExportConfig(gguf_type="f16").embedding == "f16"
    with pytest.raises(EdgeLLMError, match="unknown GGUF type"):
        GGUFExportConfig(gguf_type="q3_k_m")


# -- exports that run in llama.cpp --------------------------------------------------------------
import llama_cpp  # noqa: E402, F401
from edgellm.exporters import export  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load(tiny_llama)


@pytest.mark.parametrize("gguf_type,tol", [("f32", "f32"), ("f16", "f16"), ("q8_0", "int8-act"), ("q4_0", "int8-act"),
                                           ("q4_1", "int8-act")])
def test_tiny_export_reproduces_logits_in_llamacpp(tiny, text_file, tmp_path, gguf_type, tol):
    from edgellm.exporters.verify import TOLERANCES

    r = export(tiny, "gguf", tmp_path / f"m-{gguf_type}.gguf", gguf_type=gguf_type, threads=2, ppl_tokens=1024)
    v = r.verification
    assert v["passed"] and v["tokenizer_agrees"] and v["runtime"] == "llama.cpp"
    assert v["tolerance"] == TOLERANCES[tol].__dict__
    assert v["ppl"]["kl"] <= TOLERANCES[tol].max_kl and abs(v["ppl"]["relative_diff"]) <= TOLERANCES[tol].max_ppl_rel
    types = r.details["tensor_types"]
    if gguf_type in ("q4_0", "q4_1"):
        assert types == {gguf_type: 21, "q8_0": 1, "f32": 7}    # 21 linears, tied embedding in Q8_0, 7 norms
    assert r.file_bytes == (tmp_path / f"m-{gguf_type}.gguf").stat().st_size
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("family,gguf_type", [("qwen2", "f32"), ("mistral", "f32"), ("qwen3", "f32"), ("gemma", "f32"),
                                              ("gemma", "q8_0")])
def test_other_families_export_and_reproduce(family, gguf_type, tmp_path):
    """Qwen2 (Q/K/V biases, no rotary permutation, tied), Mistral (GGUF arch llama, untied head), Qwen3
    (per-head RMSNorm on Q and K, head_dim wider than hidden / heads) and Gemma (norms stored as 1 + w,
    embedding scaled by √hidden in llama.cpp's graph, GELU, head_dim 32 ≠ hidden / heads)."""
    from conftest import make_tiny_decoder
    from edgellm.exporters.verify import TOLERANCES

    src = make_tiny_decoder(tmp_path / family, family)
    r = export(load(src), "gguf", tmp_path / f"{family}.gguf", gguf_type=gguf_type, threads=2, ppl_tokens=512)
    v = r.verification
    assert v["passed"] and v["ppl"]["kl"] < (1e-5 if gguf_type == "f32" else TOLERANCES["int8-act"].max_kl)
    assert v["ppl"]["top1"] >= 0.99 and abs(v["ppl"]["relative_diff"]) < (1e-4 if gguf_type == "f32" else 5e-3)
    assert r.details["architecture"] == {"qwen2": "qwen2", "mistral": "llama", "qwen3": "qwen3", "gemma": "gemma"}[family]
    if family == "gemma":     # llama.cpp's gemma reads the tied embedding as its head: no output tensor is written
        tensors = {t.name: t for t in gguf.GGUFReader(str(r.path)).tensors}
        assert "output.weight" not in tensors
        w = load(src).model.model.layers[0].input_layernorm.weight.detach()
        assert torch.allclose(torch.from_numpy(np.array(tensors["blk.0.attn_norm.weight"].data)), w + 1)


def test_f32_export_is_readable_by_transformers(tiny, tmp_path):
    """transformers' own GGUF reader un-permutes Q/K: same logits as the source proves our layout."""
    r = export(tiny, "gguf", tmp_path / "t.gguf", gguf_type="f32", verify=False)
    back = load(r.path)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, tiny.model(ids).logits, atol=1e-4)


def test_packed_linears_are_written_without_requantizing(tiny_llama, tmp_path):
    import edgellm.quantization as quantize_mod
    m = load(tiny_llama)
    quantize_mod.quantize(m, quantize_mod.QuantConfig(method="rtn", bits=4, group_size=32, symmetric=True), progress=False)
    r = export(m, "gguf", tmp_path / "q.gguf", gguf_type="q4_0", threads=2, ppl_tokens=512)
    assert r.details["how"]["exact"] == 21 and not r.details["requantized"]
    assert r.verification["passed"]
    # an asymmetric 4-bit model is not on Q4_0's grid: an error unless re-quantization is asked for
    a = load(tiny_llama)
    quantize_mod.quantize(a, quantize_mod.QuantConfig(method="rtn", bits=4, group_size=32, symmetric=False), progress=False)
    with pytest.raises(EdgeLLMError, match="--requantize"):
        export(a, "gguf", tmp_path / "a.gguf", gguf_type="q4_0", verify=False)
    assert not (tmp_path / "a.gguf").exists()
    r = export(a, "gguf", tmp_path / "a.gguf", gguf_type="q4_0", requantize=True, verify=False)
    assert len(r.details["requantized"]) == 21
    r = export(a, "gguf", tmp_path / "a1.gguf", gguf_type="q4_1", threads=2, ppl_tokens=512)
    assert r.details["how"]["exact"] == 21 and r.verification["passed"]


def test_failed_verification_leaves_nothing(tiny, tmp_path):
    from edgellm.exporters.verify import Tolerance

    impossible = Tolerance(max_kl=0.0, min_top1=1.0, max_ppl_rel=0.0, max_abs_rel=0.0)
    with pytest.raises(EdgeLLMError, match="verification failed"):
        export(tiny, "gguf", tmp_path / "bad.gguf", gguf_type="q4_0", tolerance=impossible, threads=2, ppl_tokens=512)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_bad_inputs(tiny_llama, tiny_bert, tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    code, stdout, err = run_cli("export", tiny_llama, "--format", "gguf", "--gguf-type", "q8_0", "--out", out,
                                "--threads", "2")
    assert code == 0, err
    assert out.exists() and "llama.cpp" in stdout and "yes" in stdout
    code, _, err = run_cli("export", tiny_llama, "--format", "gguf", "--out", out)
    assert code == 2 and "already exists" in err and "--force" in err
    code, _, err = run_cli("export", tiny_llama, "--format", "gguf", "--out", out, "--force", "--no-verify")
    assert code == 0, err
    code, _, err = run_cli("export", tiny_bert, "--format", "gguf", "--out", tmp_path / "b.gguf")
    assert code == 2 and "does not support" in err and "llama, mistral, qwen2, qwen3" in err
    code, _, err = run_cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path / "x.bin")
    assert code == 2 and ".gguf" in err
    import edgellm.exporters

    # as if llama-cpp-python were not installed: the module it looks for does not exist
    monkeypatch.setitem(edgellm.exporters.RUNTIME_EXTRAS, "llama.cpp", ("llama_cpp_not_installed", "llamacpp"))
    code, _, err = run_cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path / "y.gguf")
    assert code == 2 and "edgellm[llamacpp]" in err
    assert not (tmp_path / "y.gguf").exists()


def test_provenance_metadata_is_compact(tiny, tmp_path):
    """The ``edgellm.export`` string counts against a byte budget (a reference's file size): no padding
    separators and no empty or off fields."""
    import json

    from gguf import GGUFReader

    path = export(tiny, "gguf", tmp_path / "m.gguf", gguf_type="q8_0", verify=False).path
    text = bytes(GGUFReader(path).fields["edgellm.export"].parts[-1]).decode()
    meta = json.loads(text)
    assert ", " not in text and ": " not in text
    assert meta == {"source": meta["source"], "quantizer": "rtn"} and meta["source"]
    assert int(GGUFReader(path).fields["general.file_type"].parts[-1][0]) == 7    # the main type: Q8_0 (LLAMA_FTYPE 7)
    # the tensors say their types, the embedding's, how each was written and the layout they copy; empty lists
    # and maps (requantized, fallbacks) are left out: none of these is in the metadata
