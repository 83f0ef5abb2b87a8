"""Hadamard matrices and the random orthogonal rotations built from them, as plain float64 tensor functions.

A Hadamard matrix ``H`` of order ``n`` has entries ±1 and ``H Hᵀ = n I``, so ``H / √n`` is orthogonal
and every output coordinate is an equal-weight mix of all inputs: the most even way to spread a few
large (outlier) weights or activations over all channels, which is why QuaRot rotates with it.

Constructions, tried in this order for ``n = 2^k · m`` (largest ``k`` first):

* Sylvester for powers of two (``m = 1``): ``H_2n = [[H, H], [H, −H]]``;
* Paley I for ``m = q + 1`` with ``q`` a prime ≡ 3 (mod 4) (orders 4, 8, 12, 20, 24, 32, 44, 48, ...);
* Paley II for ``m = 2(q + 1)`` with ``q`` a prime ≡ 1 (mod 4) (orders 12, 28, 36, 60, 76, ...);

and ``H_n = H_{2^k} ⊗ H_m``. SmolLM2's hidden size 576 = 16 · 36 gets Sylvester 16 ⊗ Paley II 36
(q = 17): a true Hadamard matrix, where 576 = 64 · 9 would not be (no Hadamard of order 9 exists).
When no such split exists (odd ``m`` > 1, or orders that need prime-power fields), the rotation falls
back to ``H_{2^k}/√2^k ⊗ R_m`` with ``R_m`` a Haar-random orthogonal ``m × m`` matrix (QR of a Gaussian),
still orthogonal, just less even. ``random_rotation`` multiplies by random signs ``diag(±1)``, seeded.

Deliberately left out: prime-power Paley constructions and Williamson-type orders, and the fast
Walsh–Hadamard transform (rotations here are folded into weights once, offline, so a dense matmul is fine).
"""

from __future__ import annotations

import torch

from ..errors import EdgeLLMError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def sylvester(n: int) -> torch.Tensor:
    """The ±1 Sylvester-Hadamard matrix of order *n* (a power of two), float64.

    >>> sylvester(2).tolist()
    [[1.0, 1.0], [1.0, -1.0]]
    """
    if n < 1 or n & (n - 1):
        raise EdgeLLMError(f"a Sylvester-Hadamard matrix needs a power-of-two order (got {n})", "use hadamard(n)")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[i, j] = χ(j − i)`` over GF(q), ``χ`` the quadratic character (0 at 0, 1 on squares, −1 else)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def paley(m: int) -> tuple[torch.Tensor, str] | None:
    """A ±1 Hadamard matrix of order *m* by Paley's construction I or II over a prime field, with its name; else None.

    >>> H, name = paley(12); name, bool((H @ H.T == 12 * torch.eye(12, dtype=H.dtype)).all())
    ('paley-I 12 (q=11)', True)
    """
    q = m - 1
    if _is_prime(q) and q % 4 == 3:                      # Paley I: I + [[0, 1ᵀ], [−1, Q]] (skew)
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + S, f"paley-I {m} (q={q})"
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:       # Paley II: conference matrix C ⊗ blocks
        C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        C[0, 1:], C[1:, 0], C[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(C, one) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero), f"paley-II {m} (q={q})"
    return None


def hadamard(n: int) -> tuple[torch.Tensor, str] | None:
    """A ±1 Hadamard matrix of order *n* as ``Sylvester 2^k ⊗ Paley m`` (largest ``k`` first), with its recipe; else None.

    >>> H, name = hadamard(576); name
    'sylvester 16 x paley-II 36 (q=17)'
    >>> hadamard(18) is None
    True
    """
    if n < 1:
        raise EdgeLLMError(f"a Hadamard matrix needs a positive order (got {n})", "pass the hidden size")
    k = (n & -n)                                         # the largest power of two dividing n
    while k >= 1:
        m = n // k
        if m == 1:
            return sylvester(n), f"sylvester {n}"
        found = paley(m)
        if found is not None:
            H, name = found
            return (torch.kron(sylvester(k), H), f"sylvester {k} x {name}") if k > 1 else (H, name)
        k //= 2
    return None


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal ``n × n`` float64 matrix: QR of a Gaussian, signs fixed by R's diagonal.

    >>> R = random_orthogonal(9, torch.Generator().manual_seed(0)); float((R @ R.T - torch.eye(9)).abs().max()) < 1e-12
    True
    """
    A = torch.randn(n, n, generator=generator, dtype=torch.float64)
    Qm, R = torch.linalg.qr(A)
    return (Qm * torch.sign(torch.diagonal(R))[None, :]).contiguous()


def random_rotation(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """A random orthogonal ``n × n`` float64 matrix ``diag(±1) · H / √n`` (Hadamard-based), and how it was built.

    Without a Hadamard matrix of order *n*, ``H / √n`` is ``H_{2^k}/√2^k ⊗ R_m`` (``R_m`` Haar-random, odd ``m``).

    >>> Q, how = random_rotation(576, seed=0); how
    'random signs x sylvester 16 x paley-II 36 (q=17) / sqrt(576)'
    """
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    found = hadamard(n)
    if found is not None:
        H, name = found
        return signs[:, None] * H / n ** 0.5, f"random signs x {name} / sqrt({n})"
    k = n & -n
    m = n // k
    base = sylvester(k) / k ** 0.5
    return signs[:, None] * torch.kron(base, random_orthogonal(m, g)), \
        f"random signs x sylvester {k} / sqrt({k}) x haar-random orthogonal {m} (no Hadamard of order {n} here)"


__all__ = ["sylvester", "paley", "hadamard", "random_orthogonal", "random_rotation"]
