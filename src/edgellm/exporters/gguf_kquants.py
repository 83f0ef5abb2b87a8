"""GGML's K-quants (Q2_K ... Q6_K) as plain tensor functions: sub-block scale search, super-scale codes, packing.

A K-quant tiles each row in super-blocks of 256 weights. Each super-block holds an fp16 scale
``d`` (and, for Q2_K/Q4_K/Q5_K, an fp16 ``dmin``) and 16 or 8 sub-blocks whose own scale (and
min) are themselves integer codes under ``d``/``dmin``:

======  ===========  ==========  ====================  =============================================
type    sub-blocks   weight bits  sub-block scale code  weight value
======  ===========  ==========  ====================  =============================================
q2_k    16 × 16      2 (0..3)     4-bit sc, 4-bit mn    (d·sc)·q − dmin·mn
q3_k    16 × 16      3 (−4..3)    6-bit sc (−32..31)    (d·(sc−32))·(q−4)
q4_k     8 × 32      4 (0..15)    6-bit sc, 6-bit mn    (d·sc)·q − dmin·mn
q5_k     8 × 32      5 (0..31)    6-bit sc, 6-bit mn    (d·sc)·q − dmin·mn
q6_k    16 × 16      6 (−32..31)  int8 sc               (d·sc)·(q−32)
======  ===========  ==========  ====================  =============================================

``fit(qtype, x, importance)`` chooses the codes of the scales for rows *x* [rows, 256·k]: the
sub-block scales with ggml's own searches (``make_qkx2_quants`` for the types with a min,
``make_q3_quants`` for q3_k, ``make_qx_quants`` for q6_k; this module's vectorised versions), then the
super-scales ``d = max/…`` rounded to fp16 and the sub-block codes rounded onto them, as
``quantize_row_q*_K_ref`` does. With *importance* (a per-column weight, e.g. llama.cpp's
imatrix: mean x² of the inputs) the searches weigh each column by ``importance·sqrt(σ² + w²)``
as llama.cpp's imatrix path does; the super-scales keep the reference rule. Floating-point
sums run in another order than ggml's C loops, so a scale can differ from llama.cpp's in its
last bits: bit-exactness is promised for dequantization (``gguf_types``), not for the search.
``pack(qtype, codes, d, dmin, sc, mn)`` lays out ggml's ``block_q*_K`` structs byte for byte.
Deliberately absent: IQ*_XS/IQ*_S types and Q8_K (an activation type).
"""

from __future__ import annotations

import numpy as np
import torch

QK_K = 256
# qtype -> (sub-block width, weight levels, has a min, block bytes)
K_TYPES = {"q2_k": (16, 4, True, 84), "q3_k": (16, 8, False, 110), "q4_k": (32, 16, True, 144),
           "q5_k": (32, 32, True, 176), "q6_k": (16, 64, False, 210)}
EPS = 1e-15                                       # ggml's GROUP_MAX_EPS


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).float()


def make_qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
              use_mad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``make_qkx2_quants`` on every row of x [N, n]: (scale [N], min [N] ≥ 0) with x ≈ scale·L − min.

    >>> s, m = make_qkx2(torch.tensor([[0., 1., 2., 3.]]), torch.ones(1, 4), 3, -0.5, 0.1, 15, False)
    >>> float(s), float(m)
    (1.0, 0.0)
    """
    lo = x.amin(-1).clamp(max=0)
    hi = x.amax(-1)
    sum_w, sum_x = w.sum(-1), (w * x).sum(-1)
    flat = hi <= lo
    err = (lambda d: d.abs()) if use_mad else (lambda d: d * d)

    def levels(iscale, base):
        return torch.round(iscale[:, None] * (x - base[:, None])).clamp(0, nmax)

    rng = torch.where(flat, torch.ones_like(hi), hi - lo)
    iscale = nmax / rng
    scale = 1 / iscale
    mn = lo.clone()
    L = levels(iscale, mn)
    best = (w * err(scale[:, None] * L + mn[:, None] - x)).sum(-1)
    for step in range(nstep + 1):
        span = torch.where(flat, torch.ones_like(hi), hi - mn)
        L = levels((rmin + rdelta * step + nmax) / span, mn)
        sl, sl2, sxl = (w * L).sum(-1), (w * L * L).sum(-1), (w * L * x).sum(-1)
        D = sum_w * sl2 - sl * sl
        Dsafe = torch.where(D > 0, D, torch.ones_like(D))
        this_s = (sum_w * sxl - sum_x * sl) / Dsafe
        this_m = (sl2 * sum_x - sl * sxl) / Dsafe
        pos = this_m > 0
        this_m = torch.where(pos, torch.zeros_like(this_m), this_m)
        this_s = torch.where(pos, sxl / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), this_s)
        cur = (w * err(this_s[:, None] * L + this_m[:, None] - x)).sum(-1)
        better = (D > 0) & (cur < best) & ~flat
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_s, scale)
        mn = torch.where(better, this_m, mn)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return scale, 0.0 - mn


def make_qx(x: torch.Tensor, nmax: int, w: torch.Tensor | None = None) -> torch.Tensor:
    """ggml's ``make_qx_quants`` (rmse_type 1) on every row of x [N, n]: the signed scale [N], x ≈ scale·L, L ∈ [−nmax, nmax).

    *w* defaults to x² as in ggml.

    >>> float(make_qx(torch.tensor([[-4., 2., 0., 1.]]), 4))
    1.0
    """
    w = x * x if w is None else w
    idx = x.abs().argmax(-1, keepdim=True)
    mx = torch.gather(x, -1, idx).squeeze(-1)
    zero = x.abs().amax(-1) < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)

    def sums(iscale):
        L = torch.round(iscale[:, None] * x).clamp(-nmax, nmax - 1)
        return (w * x * L).sum(-1), (w * L * L).sum(-1)

    slx, sl2 = sums(-nmax / mx)
    scale = torch.where(sl2 > 0, slx / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), torch.zeros_like(slx))
    best = scale * slx
    for i in [k for k in range(-9, 10) if k]:
        slx, sl2 = sums(-(nmax + 0.1 * i) / mx)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        scale = torch.where(better, slx / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), scale)
        best = torch.where(better, scale * slx, best)
    return torch.where(zero, torch.zeros_like(scale), scale)


def make_q3(x: torch.Tensor, nmax: int = 4) -> torch.Tensor:
    """ggml's ``make_q3_quants`` (do_rmse) on every row of x [N, n]: make_qx's start, then up to 5 passes
    that move one weight at a time to the level that most improves the x²-weighted fit.

    >>> float(make_q3(torch.tensor([[-4., 2., 0., 1.]])))
    1.0
    """
    idx = x.abs().argmax(-1, keepdim=True)
    mx = torch.gather(x, -1, idx).squeeze(-1)
    zero = x.abs().amax(-1) < EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    w = x * x
    L = torch.round((-nmax / mx)[:, None] * x).clamp(-nmax, nmax - 1)
    slx_all, sl2_all = (w * x * L).sum(-1), (w * L * L).sum(-1)
    one = torch.ones_like(slx_all)
    for _ in range(5):
        changed = torch.zeros_like(zero)
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx = slx_all - wi * xi * li
            sl2 = sl2_all - wi * li * li
            new = torch.round(xi * sl2 / torch.where(slx > 0, slx, one)).clamp(-nmax, nmax - 1)
            slx_n, sl2_n = slx + wi * xi * new, sl2 + wi * new * new
            ok = (slx > 0) & (new != li) & (sl2_n > 0) & (slx_n * slx_n * sl2_all > slx_all * slx_all * sl2_n)
            L[:, i] = torch.where(ok, new, li)
            slx_all, sl2_all = torch.where(ok, slx_n, slx_all), torch.where(ok, sl2_n, sl2_all)
            changed |= ok
        if not bool(changed.any()):
            break
    scale = torch.where(sl2_all > 0, slx_all / torch.where(sl2_all > 0, sl2_all, one), torch.zeros_like(slx_all))
    return torch.where(zero, torch.zeros_like(scale), scale)


def _unsigned_super(v: torch.Tensor, nlev: int, clamp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative sub-block values v [S, n_sub] -> (fp16 super-scale [S], codes [S, n_sub]) as ggml's _ref does."""
    mx = v.amax(-1)
    inv = torch.where(mx > 0, nlev / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    codes = torch.round(inv[:, None] * v)
    codes = codes.clamp(0, nlev) if clamp else codes
    return _fp16(mx / nlev), codes.to(torch.int16)


def _signed_super(v: torch.Tensor, nmax: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed sub-block scales v [S, n_sub] -> (fp16 super-scale, codes in [−nmax, hi]): iscale = −nmax / (the largest |v|, signed)."""
    idx = v.abs().argmax(-1, keepdim=True)
    mx = torch.gather(v, -1, idx).squeeze(-1)
    zero = v.abs().amax(-1) < EPS if nmax == 128 else mx == 0
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = -nmax / mx
    codes = torch.round(iscale[:, None] * v).clamp(-nmax, hi)
    d = torch.where(zero, torch.zeros_like(mx), _fp16(1 / iscale))
    return d, torch.where(zero[:, None], torch.zeros_like(codes), codes).to(torch.int16)


def fit(qtype: str, x: torch.Tensor, importance: torch.Tensor | None = None) -> dict:
    """The quantized scales of *qtype* for rows x [rows, 256·k]: {d, dmin, sc, mn} (dmin/mn None for q3_k/q6_k).

    d/dmin are [rows, k] fp32 holding fp16 values; sc/mn are [rows, k·n_sub] int16 codes as stored
    (q3_k: 0..63 with the −32 offset; q6_k: signed int8 values).

    >>> p = fit("q4_k", torch.randn(2, 256))
    >>> p["sc"].shape, int(p["sc"].max()) <= 63
    (torch.Size([2, 8]), True)
    """
    sub, nlev, has_min, _ = K_TYPES[qtype]
    rows, cols = x.shape
    nsb = cols // QK_K
    n_sub = QK_K // sub
    x = x.float()
    xs = x.reshape(rows * cols // sub, sub)
    qw = None
    if importance is not None:
        sigma_k = 1.0 if qtype == "q2_k" else 2.0
        sigma2 = sigma_k * (x.reshape(rows, nsb, QK_K) ** 2).sum(-1) / QK_K            # [rows, nsb]
        sig = sigma2.repeat_interleave(QK_K, dim=1).reshape(rows, cols)
        imp = importance.float().reshape(1, cols).expand(rows, cols)
        qw = (imp * torch.sqrt(sig + x * x)).reshape_as(xs) if qtype != "q6_k" else imp.reshape_as(xs)
    out = {"dmin": None, "mn": None}
    if has_min:
        if qw is not None:
            w = qw
            args = (-0.9, 0.05, 36, False)
        elif qtype == "q2_k":
            w, args = xs.abs(), (-0.5, 0.1, 15, True)
        else:
            av = torch.sqrt((xs * xs).sum(-1, keepdim=True) / sub)
            w = av + xs.abs()
            args = (-1.0, 0.1, 20, False) if qtype == "q4_k" else (-0.5, 0.1, 15, False)
        scales, mins = make_qkx2(xs, w, nlev - 1, *args)
        nsc = 15 if qtype == "q2_k" else 63
        d, sc = _unsigned_super(scales.reshape(rows * nsb, n_sub), nsc, clamp=True)
        dmin, mn = _unsigned_super(mins.reshape(rows * nsb, n_sub), nsc, clamp=True)
        out.update(dmin=dmin.reshape(rows, nsb), mn=mn.reshape(rows, nsb * n_sub))
    elif qtype == "q3_k":
        scales = make_q3(xs) if qw is None else make_qx(xs, 4, qw)
        d, sc = _signed_super(scales.reshape(rows * nsb, n_sub), 32, 31)
        sc = sc + 32
    else:                                                                             # q6_k
        scales = make_qx(xs, 32, qw)
        d, sc = _signed_super(scales.reshape(rows * nsb, n_sub), 128, 127)
    out.update(d=d.reshape(rows, nsb), sc=sc.reshape(rows, nsb * n_sub))
    return out


def _le_bits(bits: np.ndarray) -> np.ndarray:
    """[..., 8] 0/1 -> [...] uint8, element k in bit k."""
    return (bits.astype(np.uint8) << np.arange(8, dtype=np.uint8)).sum(-1, dtype=np.uint8)


def _scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins [S, 8] -> ggml's 12-byte ``get_scale_min_k4`` layout."""
    out = np.zeros(sc.shape[:-1] + (12,), np.uint8)
    out[..., 0:4] = sc[..., 0:4] | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = mn[..., 0:4] | ((mn[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0xF) | ((mn[..., 4:8] & 0xF) << 4)
    return out


def _scales_q3(s: np.ndarray) -> np.ndarray:
    """16 six-bit codes [S, 16] -> Q3_K's 12 bytes: low nibbles in bytes 0..7, high 2-bit pairs in bytes 8..11."""
    low = (s[..., 0:8] & 0xF) | ((s[..., 8:16] & 0xF) << 4)
    hi = (s >> 4).reshape(s.shape[:-1] + (4, 4))                                      # [S, j//4, j%4]
    high = (hi << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(-2, dtype=np.uint8)
    return np.concatenate([low, high], -1).astype(np.uint8)


def pack(qtype: str, codes: np.ndarray, d: np.ndarray, dmin, sc: np.ndarray, mn) -> np.ndarray:
    """ggml's ``block_<qtype>`` bytes: uint8 [rows, k · block bytes] from codes [rows, 256·k] (stored, unsigned)
    and the scale codes of ``fit``.

    >>> p = fit("q6_k", torch.randn(1, 256))
    >>> pack("q6_k", np.zeros((1, 256), np.uint8), p["d"].numpy(), None, p["sc"].numpy(), None).shape
    (1, 210)
    """
    sub, _, _, nbytes = K_TYPES[qtype]
    rows, cols = codes.shape
    S = rows * cols // QK_K
    q = codes.astype(np.uint8).reshape(S, QK_K)
    f16 = lambda a: np.asarray(a, np.float32).astype(np.float16).view(np.uint8).reshape(S, 2)   # noqa: E731
    s = np.asarray(sc).astype(np.int64).reshape(S, QK_K // sub)
    if qtype in ("q2_k", "q3_k"):
        ql = (q & 3).reshape(S, 2, 4, 32)                                          # [half, shift k, byte l]
        qs = (ql << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(-2, dtype=np.uint8).reshape(S, 64)
        if qtype == "q2_k":
            scales = (s | (np.asarray(mn).astype(np.int64).reshape(S, 16) << 4)).astype(np.uint8)
            parts = [scales, qs, f16(d), f16(dmin)]
        else:
            hmask = _le_bits((q >> 2).reshape(S, 8, 32).transpose(0, 2, 1))         # byte l, bit k: element 32k + l
            parts = [hmask, qs, _scales_q3(s.astype(np.uint8)), f16(d)]
    elif qtype in ("q4_k", "q5_k"):
        lo = (q & 0xF).reshape(S, 4, 2, 32)
        qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(S, 128)
        scales = _scales_k4(s.astype(np.uint8), np.asarray(mn).astype(np.uint8).reshape(S, 8))
        parts = [f16(d), f16(dmin), scales]
        if qtype == "q5_k":
            parts.append(_le_bits((q >> 4).reshape(S, 8, 32).transpose(0, 2, 1)))
        parts.append(qs)
    else:                                                                             # q6_k
        h = q.reshape(S, 2, 128)
        lo = (h & 0xF).reshape(S, 2, 2, 64)
        ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(S, 128)
        hi = (h >> 4).reshape(S, 2, 4, 32)
        qh = (hi << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(-2, dtype=np.uint8).reshape(S, 64)
        parts = [ql, qh, s.astype(np.int8).view(np.uint8), f16(d)]
    out = np.concatenate(parts, -1)
    assert out.shape[-1] == nbytes
    return np.ascontiguousarray(out.reshape(rows, cols // QK_K * nbytes))
