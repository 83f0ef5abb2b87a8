"""GPTQ and AWQ on a random layer with correlated inputs, and end to end on the tiny Llama."""

import pytest
import torch

import edgellm
from edgellm.quantization import quantize, quantized_linears
from edgellm.quantization.awq import awq_clip, awq_search_scale
from edgellm.quantization.gptq import gptq_quantize_weight
from edgellm.quantization.primitives import quantize_weight


def _correlated_inputs(n=2048, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(k, k, generator=g) / k ** 0.5
    X = torch.randn(n, k, generator=g) @ (torch.eye(k) + 2 * A)       # correlated channels
    X = X * torch.logspace(-0.5, 0.7, k)[torch.randperm(k, generator=g)]  # a few salient channels
    return X


def _out_err(W, Wq, X):
    return ((X @ (W - Wq).t()) ** 2).mean().item()


@pytest.mark.parametrize("bits,group,sym,act_order", [(4, 32, True, False), (3, 32, False, False),
                                                       (4, None, True, True), (4, 64, False, True)])
def test_gptq_beats_rtn_on_output_error(bits, group, sym, act_order):
    X = _correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    H = 2 * X.t() @ X / X.shape[0]
    rtn = quantize_weight(W, bits, group, sym).dequantize()
    qw = gptq_quantize_weight(W, H, bits, group, sym, act_order=act_order, static_groups=act_order and group is not None)
    assert qw.codes.max() <= 2 ** bits - 1 and qw.scale.dtype == torch.float16
    assert _out_err(W, qw.dequantize(), X) < 0.8 * _out_err(W, rtn, X)


def test_gptq_identity_hessian_close_to_rtn():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    qw = gptq_quantize_weight(W, torch.eye(64), 8, None, True, damp=0.0)
    assert torch.equal(qw.codes, quantize_weight(W, 8, None, True).codes)


def test_gptq_dead_inputs_are_zeroed():
    X = _correlated_inputs(512, 64)
    X[:, 5] = 0
    W = torch.randn(16, 64)
    qw = gptq_quantize_weight(W, 2 * X.t() @ X / 512, 4, 32, True)
    assert torch.all(qw.dequantize()[:, 5] == 0)


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, 32, False), (4, 128, False)])
def test_awq_scale_search_does_not_increase_error(bits, group, sym):
    X = _correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    s, err, base = awq_search_scale(W, X, bits, group, sym)
    assert err <= base
    Ws = W * s
    Wq = quantize_weight(Ws, bits, group, sym).dequantize() / s
    rtn = quantize_weight(W, bits, group, sym).dequantize()
    assert _out_err(W, Wq, X) <= _out_err(W, rtn, X) * 1.0001


def test_awq_clip_does_not_increase_error():
    X = _correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(4))
    shrink = awq_clip(W, X, 3, 32, False)
    assert shrink.shape == (64, 4) and shrink.max() <= 1
    clipped = quantize_weight(W, 3, 32, False, shrink=shrink).dequantize()
    plain = quantize_weight(W, 3, 32, False).dequantize()
    assert _out_err(W, clipped, X) <= _out_err(W, plain, X)


@pytest.mark.parametrize("kw", [dict(method="awq"), dict(method="gptq", awq_prescale=True),
                                dict(method="gptq", act_order=True, static_groups=True, mse_clip=True)])
def test_calibrated_methods_on_tiny_llama(tiny_llama, text_file, kw):
    ids = torch.randint(3, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    m = edgellm.load(tiny_llama)
    with torch.no_grad():
        ref = m.model(input_ids=ids).logits
    calib = dict(calib=str(text_file), calib_samples=8, calib_len=64, progress=False)
    _, res = quantize(m, bits=4, group_size=32, **kw, **calib)
    assert res.n_linears == 21 and len(quantized_linears(m.model)) == 21
    with torch.no_grad():
        out = m.model(input_ids=ids).logits
    r = edgellm.load(tiny_llama)
    quantize(r, bits=4, group_size=32, progress=False)
    with torch.no_grad():
        rtn = r.model(input_ids=ids).logits
    # calibrated methods fit the calibration text's statistics: no worse than RTN by much on random ids
    assert ((out - ref).norm() / ref.norm()) < 1.25 * ((rtn - ref).norm() / ref.norm())
