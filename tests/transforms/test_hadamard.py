"""Hadamard matrices (Sylvester, Paley I and II, their Kronecker products) and the random rotations built from them."""

import pytest
import torch

from edgellm.errors import EdgeLLMError
from edgellm.transforms.hadamard import hadamard, paley, random_orthogonal, random_rotation, sylvester


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 28, 36, 44, 48, 64, 72, 96, 576, 768, 960])
def test_hadamard_is_plus_minus_one_with_orthogonal_rows(n):
    H, _ = hadamard(n)
    assert H.dtype == torch.float64 and H.shape == (n, n)
    assert set(H.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


def test_the_recipes_named():
    assert hadamard(576)[1] == "sylvester 16 x paley-II 36 (q=17)"        # SmolLM2: 576 = 16 * 36, a true Hadamard
    assert hadamard(96)[1] == "sylvester 8 x paley-I 12 (q=11)"
    assert hadamard(64)[1] == "sylvester 64"
    assert paley(36)[1] == "paley-II 36 (q=17)" and paley(12)[1] == "paley-I 12 (q=11)"
    for n in (3, 9, 18, 100):                                               # no construction here (9: none exists)
        assert hadamard(n) is None
    assert paley(16) is None                                                # 15 and 7 are not primes of the right kind


def test_bad_orders_are_refused():
    with pytest.raises(EdgeLLMError):
        sylvester(12)
    with pytest.raises(EdgeLLMError):
        hadamard(0)


@pytest.mark.parametrize("n", [18, 64, 72, 100, 576])
def test_random_rotation_is_orthogonal_seeded_and_hadamard_when_it_can_be(n):
    Q, how = random_rotation(n, seed=5)
    assert float((Q @ Q.T - torch.eye(n, dtype=torch.float64)).abs().max()) < 1e-12
    assert torch.equal(Q, random_rotation(n, seed=5)[0])
    assert not torch.equal(Q, random_rotation(n, seed=6)[0])
    if hadamard(n) is not None:                   # every entry ±1/√n: each output mixes all inputs equally
        assert torch.allclose(Q.abs(), torch.full_like(Q, n ** -0.5), atol=1e-15, rtol=0)
        assert how.startswith("random signs x ") and "haar" not in how
    else:
        assert "haar-random orthogonal" in how


def test_random_orthogonal_is_orthogonal():
    R = random_orthogonal(25, torch.Generator().manual_seed(1))
    assert float((R.T @ R - torch.eye(25, dtype=torch.float64)).abs().max()) < 1e-12
