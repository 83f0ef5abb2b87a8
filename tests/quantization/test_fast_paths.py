"""The quantizer's fast paths give the same results as the straightforward implementations they replaced.

Each reference below is the plain version (one shrink candidate at a time; the column loop on W's
columns; the re-concatenating input sample), kept here only to check the fast one: choices, codes
and samples must be equal, not merely close.
"""

import pytest
import torch

from edgellm.calibrate import InputSampleStats
from edgellm.quantization.awq import awq_clip, awq_search_scale
from edgellm.quantization.gptq import gptq_quantize_weight
from edgellm.quantization.primitives import (_group_reduce, choose_qparams, effective_group, fake_quantize,
                                             make_quantized_weight, n_groups)
from edgellm.quantization.rtn import mse_shrink


def shrink_search_reference(W, bits, group_size, symmetric, steps, max_shrink, group_error):
    W = W.float()
    if group_size == -1:
        return torch.ones(W.shape[0], 1)
    g = effective_group(W.shape[1], group_size)
    best_err, best = None, None
    for i in range(steps + 1):
        r = 1.0 - max_shrink * i / steps
        s, z = choose_qparams(W, bits, group_size, symmetric, shrink=r)
        err = group_error(W - fake_quantize(W, s, z, bits, g))
        if best_err is None:
            best_err, best = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, r), best)
    return best


def mse_shrink_reference(W, bits, group_size, symmetric, grid=20, max_shrink=0.25, norm=2.4):
    g = effective_group(W.shape[1], group_size)
    return shrink_search_reference(W, bits, group_size, symmetric, grid, max_shrink,
                                   lambda D: _group_reduce(D.abs().pow(norm), g, lambda x, d: x.sum(d)))


def awq_clip_reference(W, X, bits, group_size, symmetric, steps=10, max_shrink=0.5):
    g = effective_group(W.shape[1], group_size)
    starts = list(range(0, W.shape[1], g))
    Cs = [X[:, a:a + g].t() @ X[:, a:a + g] / X.shape[0] for a in starts]

    def group_error(D):
        return torch.stack([((D[:, a:a + g] @ C) * D[:, a:a + g]).sum(1) for a, C in zip(starts, Cs)], 1)

    return shrink_search_reference(W, bits, group_size, symmetric, steps, max_shrink, group_error)


def awq_errors_reference(W, X, bits, group_size, symmetric, grid=20):
    """Every α's scale and its output error ``trace(ΔW C ΔWᵀ)`` in float64 (one full product each)."""
    C = (X.t() @ X / X.shape[0]).double()
    x_mean = X.abs().mean(0).clamp_min(1e-8)
    g = effective_group(W.shape[1], group_size)
    scales, errs = [], []
    for i in range(grid):
        s = x_mean.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        Ws = W * s
        sc, z = choose_qparams(Ws, bits, group_size, symmetric)
        dW = (W - fake_quantize(Ws, sc, z, bits, g) / s).double()
        scales.append(s)
        errs.append(((dW @ C) * dW).sum().item())
    return scales, errs


def gptq_reference(W, H, bits, group_size, symmetric, damp=0.01, block_size=128, act_order=False,
                   static_groups=False, mse_clip=False):
    """GPTQ as first written: the column loop on W's (strided) columns, one group's grid at a time."""
    def qparams(M, gs):
        shrink = mse_shrink_reference(M, bits, gs, symmetric) if mse_clip else 1.0
        return choose_qparams(M, bits, gs, symmetric, shrink)

    W, H = W.float().clone(), H.float().clone()
    out_f, K = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    g = effective_group(K, group_size)
    grouped = group_size not in (None, -1) and g < K
    scale = torch.empty(out_f, n_groups(K, g))
    zero = torch.empty(out_f, n_groups(K, g), dtype=torch.int32)
    if not grouped or static_groups:
        scale, zero = qparams(W, group_size)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(out_f, K, dtype=torch.int32)
    qmax = 2 ** bits - 1
    B = max(g, (block_size // g) * g) if grouped else block_size
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            gi = col // g
            if grouped and not static_groups and col % g == 0:
                s, z = qparams(W1[:, i:min(i + g, i2 - i1)], None)
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
            w = W1[:, i]
            s, z = scale[:, gi], zero[:, gi].float()
            q = (torch.round(w / s) + z).clamp_(0, qmax)
            codes[:, i1 + i] = q.to(torch.int32)
            err = (w - s * (q - z)) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return make_quantized_weight(W, codes[:, torch.argsort(perm)], scale, zero, bits, group_size, symmetric)


def _weights(out, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, k, generator=g) * torch.rand(out, 1, generator=g) * 3


def _inputs(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) @ (torch.eye(k) + torch.randn(k, k, generator=g) / k) \
        * torch.logspace(-0.5, 0.7, k)[torch.randperm(k, generator=g)]


GRIDS = [(4, 32, True), (3, 32, False), (8, 32, True), (8, None, False), (4, None, True), (2, 16, False),
         (4, 48, True), (4, -1, True)]     # 48 leaves a ragged last group of 100 columns


@pytest.mark.parametrize("bits,group,sym", GRIDS)
def test_mse_clip_choices_equal_the_reference(bits, group, sym):
    for seed in range(3):
        W = _weights(37, 100, seed)
        assert torch.equal(mse_shrink(W, bits, group, sym), mse_shrink_reference(W, bits, group, sym))


def test_mse_clip_chunking_does_not_change_the_choices():
    from edgellm.quantization.rtn import shrink_search

    W = _weights(50, 96, 7)
    err = lambda D, _rows: D.abs().pow(2.4).sum(-1)     # noqa: E731
    one = shrink_search(W, 4, 32, True, 20, 0.25, err, chunk=1)            # one row per chunk
    assert torch.equal(one, shrink_search(W, 4, 32, True, 20, 0.25, err))
    assert torch.equal(one, mse_shrink_reference(W, 4, 32, True))


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, 32, False), (4, 48, False)])
def test_awq_clip_choices_equal_the_reference(bits, group, sym):
    W, X = _weights(24, 96, 1), _inputs(512, 96, 2)
    fast, ref = awq_clip(W, X, bits, group, sym), awq_clip_reference(W, X, bits, group, sym)
    # the batched per-group products may round differently from one product per group: allow a rare near-tie
    assert (fast != ref).float().mean() <= 0.01


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, 32, False), (4, None, True), (4, 48, False)])
def test_awq_scale_search_picks_the_reference_best(bits, group, sym):
    # the fast search multiplies C's block triangle in bf16: its errors match float64 to ~1e-3, and the
    # α it picks is the reference's best up to that rounding
    for seed in range(3):
        W, X = _weights(48, 96, 3 + seed), _inputs(1024, 96, 4 + seed)
        s, err, base = awq_search_scale(W, X, bits, group, sym)
        scales, errs = awq_errors_reference(W, X, bits, group, sym)
        picked = next(i for i, r in enumerate(scales) if torch.equal(r, s))
        assert errs[picked] <= min(errs) * (1 + 2e-3)
        assert err == pytest.approx(errs[picked], rel=5e-3) and base == pytest.approx(errs[0], rel=5e-3)


@pytest.mark.parametrize("kw", [dict(bits=4, group_size=32, symmetric=True),
                                dict(bits=4, group_size=32, symmetric=True, act_order=True, static_groups=True,
                                     mse_clip=True),
                                dict(bits=3, group_size=32, symmetric=False, mse_clip=True),
                                dict(bits=4, group_size=48, symmetric=False, block_size=64),
                                dict(bits=4, group_size=None, symmetric=True, act_order=True),
                                dict(bits=8, group_size=-1, symmetric=True, block_size=40)])
def test_gptq_codes_equal_the_reference(kw):
    W, X = _weights(40, 200, 5), _inputs(600, 200, 6)
    X[:, 3] = 0                                           # a dead input
    H = 2 * X.t() @ X / X.shape[0]
    fast, ref = gptq_quantize_weight(W, H, **kw), gptq_reference(W, H, **kw)
    assert torch.equal(fast.codes, ref.codes)
    assert torch.equal(fast.scale, ref.scale) and torch.equal(fast.zero, ref.zero)


def test_input_sample_equals_the_reference():
    def reference(batches, max_rows, seed):
        gen = torch.Generator().manual_seed(seed)
        x, keys = torch.zeros(0, batches[0].shape[1]), torch.zeros(0)
        for b in batches:
            xs, ks = torch.cat([x, b]), torch.cat([keys, torch.rand(b.shape[0], generator=gen)])
            if ks.numel() > max_rows:
                idx = ks.topk(max_rows, largest=False).indices.sort().values
                xs, ks = xs[idx], ks[idx]
            x, keys = xs, ks
        return x

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 8, generator=g) for n in (50, 30, 100, 7, 200, 64, 3)]
    for max_rows in (1, 10, 64, 100, 1000):
        s = InputSampleStats(8, max_rows, seed=3)
        for b in batches:
            s.add(b)
        assert torch.equal(s.x, reference(batches, max_rows, 3)) and s.n == 454


@pytest.mark.parametrize("k,blocks", [(6, None), (600, None), (97, 3)])
def test_hessian_from_its_block_triangle_equals_the_full_product(k, blocks):
    from edgellm.calibrate import HessianStats

    x = torch.randn(300, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    s = HessianStats(k, blocks=blocks)
    for chunk in x.split(70):
        s.add(chunk)
    torch.testing.assert_close(s.H.double(), 2 * x.t() @ x / 300, rtol=1e-5, atol=1e-4)
    assert torch.equal(s.H, s.H.t())            # mirrored from the block triangle: exactly symmetric


def test_stacked_gptq_equals_one_linear_at_a_time():
    from edgellm.quantization.gptq import row_slice

    X = _inputs(400, 96, 8)
    H = 2 * X.t() @ X / 400
    parts = [_weights(n, 96, 10 + n) for n in (32, 16, 16)]          # q, k, v reading one input
    kw = dict(bits=4, group_size=32, symmetric=True, act_order=True, static_groups=True, mse_clip=True)
    stacked = gptq_quantize_weight(torch.cat(parts), H, **kw)
    a = 0
    for W in parts:
        one = gptq_quantize_weight(W, H, **kw)
        part = row_slice(stacked, a, a + W.shape[0])
        a += W.shape[0]
        assert torch.equal(part.codes, one.codes) and torch.equal(part.scale, one.scale)


def test_signed_extreme_keeps_the_first_of_tied_magnitudes():
    from edgellm.quantization.primitives import _signed_extreme

    x = torch.tensor([[1.0, -3.0, 3.0, 2.0], [3.0, -3.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [-0.5, 0.25, 0.5, -0.5]])
    assert _signed_extreme(x, -1).tolist() == [-3.0, 3.0, 0.0, -0.5]
    W = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_signed_extreme(W, -1), W.gather(-1, W.abs().argmax(-1, keepdim=True)).squeeze(-1))
