"""GGUF types beyond Q8_0/Q4_0/Q4_1: Q5_0, Q5_1, IQ4_NL and the K-quants. edgellm's packed bytes decode in
gguf-py (llama.cpp's reference reader) to exactly edgellm's own dequantized weights; the grid API rounds
columns onto the type's grid; fallbacks follow llama.cpp; tiny exports load and verify in llama.cpp."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgellm.exporters.gguf_blocks import GridMismatch
from edgellm.exporters.gguf_types import (KQUANTS, TYPES, bits_per_weight, fallback, from_quantized, gguf_grid, pack,
                                          rtn)

gguf = pytest.importorskip("gguf")


def _awkward(rows=24, cols=512, seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    W = torch.randn(rows, cols) * 0.05
    W[3, :256] = 0.0                 # an all-zero super-block
    W[4, 32:64] = 0.3                # a constant block
    W[5, 40] = 2.0                   # an outlier
    W[6] = -0.01                     # a constant negative row
    W[7, :16] = 1e-9                 # a tiny sub-block
    W[-1, :256] = W[-1, :256].abs()  # all positive (min 0 for the types with a min)
    return W


def _gguf_dequant(b: np.ndarray, qtype: str) -> np.ndarray:
    return gguf.quants.dequantize(b, gguf.GGMLQuantizationType[qtype.upper()])


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_packed_bytes_dequantize_in_gguf_py_to_our_weights_exactly(qtype, weighted):
    W = _awkward()
    imp = torch.rand(W.shape[1]) + 0.01 if weighted else None
    tc = rtn(W, qtype, imp)
    b = pack(tc)
    assert b.shape == (W.shape[0], W.shape[1] // (256 if qtype in KQUANTS else 32) *
                       (gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype.upper()]][1]))
    ours = tc.dequantize()
    assert np.array_equal(_gguf_dequant(b, qtype), ours.numpy())
    # and it is a quantization of W, not just any bytes: error shrinks with the bits
    rel = float(((ours - W) ** 2).mean() / (W ** 2).mean())
    assert rel < {"q2_k": 0.12, "q3_k": 0.04}.get(qtype, 0.012)
    assert torch.equal(ours[3, :256], torch.zeros(256))


@pytest.mark.parametrize("qtype", ["q5_0", "q5_1", "q8_0", "q4_0", "q4_1"])
def test_rtn_bytes_equal_gguf_reference_quantizer(qtype):
    W = _awkward(cols=256, seed=1)
    assert np.array_equal(pack(rtn(W, qtype)), gguf.quants.quantize(W.numpy(), gguf.GGMLQuantizationType[qtype.upper()]))


@pytest.mark.parametrize("qtype", TYPES)
def test_grid_columns_round_onto_the_same_grid(qtype):
    W = _awkward(rows=10, cols=256, seed=2)
    g = gguf_grid(qtype)
    p = g.fit(W)
    codes, values = g.quantize(W, p)
    assert torch.equal(values, g.dequantize(codes, p))
    for j in (0, 17, 100, 255):
        c, v = g.quantize_column(W[:, j], p, j)
        assert torch.equal(c, codes[:, j]) and torch.equal(v, values[:, j])
    # nearest grid point: no other code of the column's grid is closer
    s, o = g.scale_offset(p)
    cand = s.unsqueeze(-1) * g.levels + (0 if o is None else o.unsqueeze(-1))
    best = (cand - W.unsqueeze(-1)).abs().amin(-1)
    assert torch.all((values - W).abs() <= best * (1 + 1e-6) + 1e-12)
    # a column quantizer that changes the weights (GPTQ) still lands on the grid the bytes hold
    W2 = W + 0.01 * torch.randn_like(W)
    cols = [g.quantize_column(W2[:, j], p, j)[0] for j in range(W.shape[1])]
    from edgellm.exporters.gguf_types import TypeCodes
    tc = TypeCodes(qtype, torch.stack(cols, 1), p)
    assert np.array_equal(_gguf_dequant(pack(tc), qtype), tc.dequantize().numpy())


def test_kquant_scales_are_codes_under_fp16_superscales():
    W = _awkward(cols=256)
    for qtype, hi in (("q2_k", 15), ("q3_k", 63), ("q4_k", 63), ("q5_k", 63)):
        p = gguf_grid(qtype).fit(W)
        assert int(p.sc.min()) >= 0 and int(p.sc.max()) <= hi
        assert torch.equal(p.d.half().float(), p.d)
        if p.m is not None:
            assert torch.equal(p.m.half().float(), p.m) and int(p.mn.max()) <= hi
    p = gguf_grid("q6_k").fit(W)
    assert int(p.sc.min()) >= -128 and int(p.sc.max()) <= 127
    assert bits_per_weight("q4_k") == 4.5 and bits_per_weight("q6_k") == 6.5625 and bits_per_weight("iq4_nl") == 4.5


def test_importance_lowers_the_weighted_error():
    W = _awkward(rows=64, cols=256, seed=3)
    imp = torch.ones(256)
    imp[:64] = 100.0                                 # the first 64 inputs matter most
    for qtype in ("q4_k", "q3_k", "iq4_nl", "q5_1"):
        plain, weighted = rtn(W, qtype).dequantize(), rtn(W, qtype, imp).dequantize()
        err = lambda V: float((((V - W) ** 2) * imp).sum())   # noqa: E731
        assert err(weighted) < err(plain), qtype


def test_fallbacks_follow_llama_cpp():
    assert [fallback(t, 576) for t in KQUANTS] == ["iq4_nl", "iq4_nl", "q5_0", "q5_1", "q8_0"]
    assert [fallback(t, 1536) for t in KQUANTS] == list(KQUANTS)
    assert fallback("q4_k", 48) == "f16" and fallback("iq4_nl", 576) == "iq4_nl" and fallback("q5_1", 40) == "f16"
    with pytest.raises(GridMismatch, match="multiple of 256"):
        rtn(torch.randn(2, 576), "q4_k")


def _qw(codes, scale, zero, bits, group, symmetric):
    return SimpleNamespace(codes=codes.to(torch.uint8), scale=scale.half(), zero=zero.to(torch.uint8),
                           group_size=group, bits=bits, symmetric=symmetric)


@pytest.mark.parametrize("bits,qtype,sym", [(5, "q5_0", True), (4, "q5_0", True), (5, "q5_1", False), (4, "q5_1", False)])
def test_edgellm_codes_go_into_q5_exactly(bits, qtype, sym):
    torch.manual_seed(4)
    codes = torch.randint(0, 2 ** bits, (8, 128))
    scale = torch.rand(8, 2) * 0.01 + 1e-3
    zero = torch.full_like(scale, 2 ** (bits - 1)) if sym else torch.randint(0, 2 ** bits, scale.shape)
    q = _qw(codes, scale, zero, bits, 64, sym)
    tc = from_quantized(q, qtype)
    want = (codes.float() - zero.half().float().repeat_interleave(64, 1)) * scale.half().float().repeat_interleave(64, 1)
    got = tc.dequantize()
    if sym:
        assert torch.equal(got, want)
    else:   # m = −scale·zero is rounded once to fp16, as for q4_1
        assert (got - want).abs().max() <= (scale * zero).max() * 2 ** -11
    assert np.array_equal(_gguf_dequant(pack(tc), qtype), got.numpy())
    with pytest.raises(GridMismatch):
        from_quantized(q, "q4_k")
    if sym:
        with pytest.raises(GridMismatch, match="symmetric"):
            from_quantized(_qw(codes, scale, zero - 1, bits, 64, False), "q5_0")


# -- exports that load and verify in llama.cpp ------------------------------------------------------
llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory):
    """Hidden 256 (q/k/v/o/gate/up rows tile K-quants) and intermediate 320 (ffn_down's rows need the fallback)."""
    from conftest import make_tiny_llama
    from edgellm.models import load

    return load(make_tiny_llama(tmp_path_factory.mktemp("tiny256") / "llama", hidden_size=256, intermediate_size=320))


@pytest.mark.parametrize("qtype", ["q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])
def test_tiny_export_loads_and_verifies_in_llamacpp(tiny256, tmp_path, qtype):
    from edgellm.exporters import export
    from edgellm.exporters.gguf_types import FALLBACK
    from edgellm.exporters.verify import TOLERANCES

    out = tmp_path / f"m-{qtype}.gguf"
    r = export(tiny256, "gguf", out, gguf_type=qtype, threads=2, ppl_tokens=512)
    v = r.verification
    assert v["passed"] and v["tokenizer_agrees"] and v["runtime"] == "llama.cpp"
    # llama.cpp's logits against edgellm's own dequantized model: only the 8-bit activations differ
    assert v["tolerance"] == TOLERANCES["int8-act"].__dict__
    assert v["ppl"]["kl"] <= 5e-3 and abs(v["ppl"]["relative_diff"]) <= 1e-2
    if qtype in ("q2_k", "q3_k"):   # the 2/3-bit weights move the model far more than llama.cpp's runtime does
        assert v["vs_source"]["kl"] > 5 * v["ppl"]["kl"]
    types = r.details["tensor_types"]
    tensors = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(out)).tensors}
    if qtype in KQUANTS:     # 3 layers: 18 linears of 256-wide rows, 3 ffn_down of 320-wide rows fall back
        assert types == {qtype: 18, FALLBACK[qtype]: 3, "q8_0": 1, "f32": 7} or \
            (FALLBACK[qtype] == "q8_0" and types == {qtype: 18, "q8_0": 4, "f32": 7})
        assert r.details["fallbacks"] == {f"blk.{i}.ffn_down.weight": f"{qtype} -> {FALLBACK[qtype]}" for i in range(3)}
        assert tensors["blk.0.ffn_down.weight"] == FALLBACK[qtype] and tensors["blk.0.attn_q.weight"] == qtype
    else:
        assert types == {qtype: 21, "q8_0": 1, "f32": 7} and not r.details["fallbacks"]
    assert gguf.GGUFReader(str(out)).fields["general.file_type"].parts[-1][0] == \
        {"q5_0": 8, "q5_1": 9, "iq4_nl": 25, "q2_k": 10, "q3_k": 11, "q4_k": 14, "q5_k": 16, "q6_k": 18}[qtype]


def test_five_bit_codes_go_into_q5_0_exactly(tiny256, tmp_path):
    import copy

    import edgellm.quantization as qz
    from edgellm.exporters import export

    m = copy.deepcopy(tiny256)
    qz.quantize(m, qz.QuantConfig(method="rtn", bits=5, group_size=32, symmetric=True), progress=False)
    r = export(m, "gguf", tmp_path / "q5.gguf", gguf_type="q5_0", threads=2, ppl_tokens=512)
    assert r.details["how"]["exact"] == 21 and not r.details["requantized"] and r.verification["passed"]


def test_type_no_row_fits_is_one_line_exit_2(tiny_llama, tmp_path):
    from conftest import run_cli

    code, _, err = run_cli("export", tiny_llama, "--format", "gguf", "--gguf-type", "q4_k", "--out", tmp_path / "k.gguf")
    assert code == 2 and "q4_k can tile" in err and "q5_0" in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "k.gguf").exists()


def test_cli_reports_fallbacks(tiny256, tmp_path):
    from conftest import run_cli

    src = tmp_path / "src"
    tiny256.model.save_pretrained(src)
    tiny256.tokenizer.save_pretrained(src)
    code, out, err = run_cli("export", src, "--format", "gguf", "--gguf-type", "q4_k", "--out", tmp_path / "k.gguf",
                             "--no-verify")
    assert code == 0, err
    assert "fallback types" in out and "blk.2.ffn_down.weight q5_0" in out


@pytest.mark.parametrize("ftype,qtype", [("q2_k", "q2_k"), ("q3_k_s", "q3_k"), ("q4_k_s", "q4_k"), ("q5_k_s", "q5_k"),
                                         ("q6_k", "q6_k"), ("iq4_nl", "iq4_nl"), ("q5_0", "q5_0")])
def test_rtn_matches_llama_cpps_own_quantizer(tiny256, tmp_path, ftype, qtype):
    """llama.cpp's llama_model_quantize (no imatrix) on the same F32 GGUF: same error, mostly the same bytes."""
    from edgellm.exporters import export
    from edgellm.exporters.llamacpp_quant import llama_quantize

    f32 = export(tiny256, "gguf", tmp_path / "f32.gguf", gguf_type="f32", verify=False).path
    llama_quantize(f32, tmp_path / "q.gguf", ftype)
    src = {t.name: t for t in gguf.GGUFReader(str(f32)).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    name = "blk.1.ffn_gate.weight"
    assert theirs[name].tensor_type.name.lower() == qtype
    W = torch.from_numpy(np.array(src[name].data).astype(np.float32))
    ours, ref = pack(rtn(W, qtype)), np.array(theirs[name].data)
    mse = lambda b: float(((torch.from_numpy(_gguf_dequant(b, qtype)) - W) ** 2).mean())   # noqa: E731
    assert mse(ours) <= 1.005 * mse(ref)
    nb = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype.upper()]][1]
    assert (ours.reshape(-1, nb) == ref.reshape(-1, nb)).all(-1).mean() >= 0.8
