"""Masks: exact sparsity and N:M patterns; Wanda's score formula; SparseGPT beats magnitude."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm.calibrate import HessianStats, InputNormStats
from edgellm.errors import EdgeLLMError
from edgellm.pruning.config import PruneConfig, parse_pattern
from edgellm.pruning.magnitude import magnitude_mask
from edgellm.pruning.masks import is_nm, mask_lowest, mask_lowest_per_row, mask_nm, n_pruned
from edgellm.pruning.sparsegpt import sparsegpt_prune_weight
from edgellm.pruning.wanda import wanda_mask, wanda_score


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 40), s=st.floats(0.0, 0.99))
def test_unstructured_masks_have_exact_sparsity(rows, cols, s):
    scores = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * 100 + cols))
    keep = mask_lowest(scores, s)
    assert int((~keep).sum()) == n_pruned(rows * cols, s)
    kept_min = scores[keep].min() if keep.any() else float("inf")
    assert (~keep).sum() == 0 or scores[~keep].max() <= kept_min  # the dropped ones are the lowest
    per_row = mask_lowest_per_row(scores, s)
    assert ((~per_row).sum(1) == n_pruned(cols, s)).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_masks_have_exact_pattern(n, m):
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    for keep in (mask_nm(W.abs(), n, m), magnitude_mask(W, 0, n, m), wanda_mask(W, torch.rand(64) + 0.1, 0, n, m)):
        assert (keep.view(-1, m).sum(1) == n).all()
        assert is_nm(W * keep, n, m)
        assert abs((~keep).float().mean().item() - (1 - n / m)) < 1e-9


def test_wanda_score_matches_formula_on_a_small_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4, bias=False)
    X = torch.randn(3, 10, 6) * torch.tensor([0.1, 1, 5, 0.5, 2, 3])  # batches of token activations
    acc = InputNormStats(6)
    for x in X:
        acc.add(x)
    norms = torch.tensor([sum(float(X[b, t, j]) ** 2 for b in range(3) for t in range(10)) ** 0.5 for j in range(6)])
    torch.testing.assert_close(acc.l2, norms, rtol=1e-5, atol=1e-6)
    S = wanda_score(lin.weight.data, acc.l2)
    for i in range(4):
        for j in range(6):
            assert S[i, j].item() == pytest.approx(abs(lin.weight[i, j].item()) * norms[j].item(), rel=1e-5)
    keep = wanda_mask(lin.weight.data, acc.l2, 0.5)
    for i in range(4):   # per output row: the three lowest scores go
        assert set(torch.nonzero(~keep[i]).flatten().tolist()) == set(torch.argsort(S[i])[:3].tolist())


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_on_correlated_inputs(pattern):
    g = torch.Generator().manual_seed(1)
    Z = torch.randn(2048, 16, generator=g)
    X = Z @ torch.randn(16, 64, generator=g) + 0.05 * torch.randn(2048, 64, generator=g)  # strongly correlated
    W = torch.randn(32, 64, generator=g)
    hs = HessianStats(64)
    for chunk in X.split(256):
        hs.add(chunk)
    n, m = pattern or (0, 0)
    Wp, keep = sparsegpt_prune_weight(W, hs.H, 0.5, n, m, blocksize=32)
    Wm = W * magnitude_mask(W, 0.5, n, m)
    err_sgpt = ((X @ (W - Wp).T) ** 2).sum()
    err_mag = ((X @ (W - Wm).T) ** 2).sum()
    assert err_sgpt < 0.5 * err_mag
    assert int((Wp == 0).sum()) >= W.numel() // 2 and (Wp[~keep] == 0).all()
    assert abs((~keep).float().mean().item() - 0.5) < 1e-9
    if pattern:
        assert is_nm(Wp, 2, 4)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(sparsity=1.0), "outside [0, 1)"), (dict(sparsity=-0.1), "outside [0, 1)"),
    (dict(pattern="4:4"), "N ≥ M"), (dict(pattern="5:4"), "N ≥ M"), (dict(pattern="2-4"), "N:M"),
    (dict(method="lasso"), "unknown pruning method"), (dict(pattern="2:4", sparsity=0.3), "contradicts"),
    (dict(structure="depth", ratio=1.0), "outside (0, 1)"), (dict(structure="depth"), "exactly one of"),
    (dict(structure="width", ratio=0.2, max_params=10), "exactly one of"), (dict(structure="rows", ratio=0.2), "unknown structure"),
    (dict(ratio=0.5), "no structure"), (dict(structure="width", ratio=0.2, sparsity=0.5), "unstructured"),
])
def test_config_rejects_bad_input(kwargs, needle):
    with pytest.raises(EdgeLLMError, match=None) as e:
        PruneConfig(**kwargs)
    assert needle in str(e.value)


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("4:8") == (4, 8)
    assert PruneConfig(pattern="4:8").effective_sparsity == 0.5
