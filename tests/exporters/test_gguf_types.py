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
