"""Quantization math: SQNR floors, the brief's min-max formula, GGUF Q4_0/Q8_0 grids, packing."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm.errors import EdgeLLMError
from edgellm.quantization import QuantConfig
from edgellm.quantization.pack import pack_codes, packed_numel, unpack_codes
from edgellm.quantization.primitives import (choose_qparams, minmax_codes, quantize_codes, quantize_weight, sqnr_db)


def _w(out=64, k=576, seed=0):
    return torch.randn(out, k, generator=torch.Generator().manual_seed(seed))


# Gaussian weights; floors ~1.5 dB under what the grids give (6.02 dB per bit, minus the range loss)
@pytest.mark.parametrize("bits,group,sym,floor", [
    (8, None, True, 40.0), (8, None, False, 40.0), (8, -1, True, 36.0),
    (4, 32, True, 19.5), (4, 32, False, 19.5), (4, 64, False, 18.5), (4, 128, True, 17.5), (4, None, True, 16.5),
    (3, 32, False, 13.5), (3, 32, True, 12.5), (2, 32, False, 7.0), (2, 64, True, 6.0),
])
def test_sqnr_floor_per_bit_width(bits, group, sym, floor):
    W = _w()
    qw = quantize_weight(W, bits, group, sym)
    assert qw.codes.max() <= 2 ** bits - 1
    assert sqnr_db(W, qw.dequantize()) >= floor


def test_fp16_scales_reproduce_weights_exactly():
    W = _w()
    qw = quantize_weight(W, 4, 32, False)
    assert qw.scale.dtype == torch.float16 and qw.zero.dtype == torch.uint8
    recon = qw.scale.float().repeat_interleave(32, 1) * (qw.codes.float() - qw.zero.float().repeat_interleave(32, 1))
    assert torch.equal(recon, qw.dequantize())
    # re-quantizing the dequantized weight with the stored qparams gives the same codes
    g = quantize_codes(qw.dequantize(), qw.scale.float(), qw.zero.int(), 4, 32)
    assert torch.equal(g, qw.codes)


def test_brief_minmax_formula_is_the_asymmetric_path():
    # Q(x) = round((x − x_min)/(x_max − x_min)·(2^b − 1)); with x_min on the grid the codes agree exactly
    gen = torch.Generator().manual_seed(1)
    for bits in (8, 4, 3, 2):
        qmax = 2 ** bits - 1
        s = 0.0625                                  # exact in fp16
        q = torch.randint(1, qmax, (1, 200), generator=gen).float()
        q[0, 0], q[0, 1] = 0, qmax                  # x_min and x_max are grid points, x_min < 0 < x_max
        z = 3 if bits > 2 else 1
        x = s * (q - z) + (torch.rand(1, 200, generator=gen) - 0.5) * s * 0.98
        x[0, 0], x[0, 1] = -z * s, (qmax - z) * s
        qw = quantize_weight(x, bits, -1, symmetric=False)
        assert torch.equal(qw.codes[0].float(), minmax_codes(x[0], bits))
    # in general the integer zero point snaps x_min to the grid: codes differ by at most one
    x = _w(1, 4096)
    qw = quantize_weight(x, 8, -1, symmetric=False)
    assert (qw.codes[0].float() - minmax_codes(x[0], 8)).abs().max() <= 1
    s = (x.max() - x.min()) / 255
    assert (qw.dequantize() - x).abs().max() <= s * 0.51


def test_symmetric_4bit_g32_is_gguf_q4_0():
    import gguf
    from gguf import quants

    W = _w(8, 128)
    qw = quantize_weight(W, 4, 32, True)
    assert torch.all(qw.zero == 8)
    q = qw.codes.numpy().reshape(8, 4, 32)
    d = qw.scale.numpy().reshape(8, 4, 1)
    blocks = np.concatenate([d.view(np.uint8).reshape(8, 4, 2),
                             (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)], axis=-1).reshape(8, -1)
    deq = quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(deq, qw.dequantize().numpy())
    # llama.cpp's own Q4_0 quantizer puts our weights back on the same grid points
    again = quants.dequantize(quants.quantize(qw.dequantize().numpy(), gguf.GGMLQuantizationType.Q4_0),
                              gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(again, qw.dequantize().numpy())


def test_symmetric_8bit_g32_is_gguf_q8_0():
    import gguf
    from gguf import quants

    W = _w(4, 64)
    qw = quantize_weight(W, 8, 32, True)
    signed = qw.codes.int() - 128
    assert signed.min() >= -127 and signed.max() <= 127          # Q8_0 uses [-127, 127]
    blocks = np.concatenate([qw.scale.numpy().reshape(4, 2, 1).view(np.uint8).reshape(4, 2, 2),
                             signed.numpy().astype(np.int8).reshape(4, 2, 32).view(np.uint8)], -1).reshape(4, -1)
    deq = quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(deq, qw.dequantize().numpy())


def test_ragged_last_group():
    W = _w(16, 576)
    qw = quantize_weight(W, 4, 128, False)       # 576 = 4·128 + 64
    assert qw.scale.shape == (16, 5) and qw.group_size == 128
    tail = quantize_weight(W[:, 512:], 4, None, False)
    assert torch.equal(qw.codes[:, 512:], tail.codes) and torch.equal(qw.scale[:, 4:], tail.scale)


def test_per_tensor_has_one_scale():
    qw = quantize_weight(_w(8, 64), 8, -1, True)
    assert qw.scale.shape == (8, 1) and torch.unique(qw.scale).numel() == 1


def test_zero_group_is_exact():
    W = torch.zeros(4, 64)
    for sym in (True, False):
        assert torch.equal(quantize_weight(W, 4, 32, sym).dequantize(), W)


def test_choose_qparams_example():
    s, z = choose_qparams(torch.tensor([[-1.0, 0.5]]), 4, None, True)
    assert s.item() == 0.125 and z.item() == 8


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), rows=st.integers(1, 9), cols=st.integers(1, 70), seed=st.integers(0, 2 ** 16))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    codes = torch.randint(0, 2 ** bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_numel(rows * cols, bits) == math.ceil(rows * cols * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, codes.shape), codes)


def test_int4_is_two_per_byte_low_nibble_first():
    assert pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [0x21, 0x03]


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(-3, 12), group=st.one_of(st.none(), st.integers(-5, 300)))
def test_config_validation(bits, group):
    ok_bits = 2 <= bits <= 8
    ok_group = group is None or group == -1 or group > 0
    if ok_bits and ok_group:
        assert QuantConfig(bits=bits, group_size=group).bits == bits
    else:
        with pytest.raises(EdgeLLMError):
            QuantConfig(bits=bits, group_size=group)


def test_config_errors_name_the_fix():
    with pytest.raises(EdgeLLMError, match="bits must be"):
        QuantConfig(bits=9)
    with pytest.raises(EdgeLLMError, match="group size"):
        QuantConfig(group_size=0)
    with pytest.raises(EdgeLLMError, match="W8A8"):
        QuantConfig(bits=4, act_bits=8)
    with pytest.raises(EdgeLLMError, match="unknown quantization method"):
        QuantConfig(method="nf4")
