"""Every GGUF weight type edgellm writes, as one grid API: fit the scales, round onto the grid, dequantize, pack.

Types: the block-32 types q8_0, q4_0, q4_1, q5_0, q5_1 and iq4_nl (fp16 ``d`` per 32 weights,
plus an fp16 min ``m`` for q4_1/q5_1; iq4_nl's 16 levels are llama.cpp's non-uniform
``kvalues_iq4nl`` times ``d``) and the K-quants q2_k, q3_k, q4_k, q5_k, q6_k (``gguf_kquants``:
super-blocks of 256 with quantized sub-block scales under fp16 super-scales).

A weight on a type's grid is a ``TypeCodes``: stored codes [out, in] plus ``GridParams`` (the
scales, already in their stored form: fp16 values, sub-block scale codes). ``dequantize()``
computes ``s·level(code) + o`` with the per-column scale ``s`` and offset ``o`` formed by the
same float32 operations as llama.cpp's ``dequantize_row_*`` (e.g. ``s = d·sc``, ``o = −dmin·mn``),
so it equals what llama.cpp reconstructs, bit for bit (``tests/exporters/test_gguf_types.py``
checks it against ``gguf.quants.dequantize`` for every type).

The grid API, for RTN, GPTQ or AWQ to round onto exactly the type's grid::

    grid = gguf_grid("q4_k")               # grid.block: columns one set of scales covers (32 or 256)
    params = grid.fit(W_slab, importance)  # scales for W_slab [rows, k·grid.block]; importance [cols] optional
    codes, values = grid.quantize_column(w_col, params, j)   # column j of the slab, nearest grid point
    codes, values = grid.quantize(W_slab, params)            # every column at once

``rtn(W, qtype, importance=None)`` is fit + quantize over a whole matrix; for q5_0/q5_1 without
importance it is ggml's reference encoder instead (the codes computed from the unrounded
scale, bit-exact with ``gguf.quants.quantize``), and q8_0/q4_0/q4_1 keep ``gguf_blocks.rtn``.
``from_quantized(q, qtype)`` puts edgellm's own ``QuantizedWeight`` codes in without a second
rounding where its grid is the type's (see ``gguf_blocks.from_quantized``; here also 5-bit or
4-bit codes into q5_0/q5_1); otherwise ``GridMismatch``. ``pack`` writes llama.cpp's structs.
``fallback(qtype, row)`` is llama.cpp's ``convert_incompatible_tensor`` rule for rows a type
cannot tile (q2_k/q3_k → iq4_nl, q4_k → q5_0, q5_k → q5_1, q6_k → q8_0, then f16).
Deliberately absent: IQ*_XS/_S/_M types, TQ*, MXFP4, and bit-exactness of the K-quant and
iq4_nl scale searches with llama.cpp's C loops (see ``gguf_kquants``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import gguf_blocks as gb
from . import gguf_kquants as gk
from .gguf_blocks import GridMismatch

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
BLOCK32 = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
KQUANTS = tuple(gk.K_TYPES)
TYPES = BLOCK32 + KQUANTS
# qtype -> (levels, code of level 0 offset or None for a lookup table, has an fp16 min m)
_B32 = {"q8_0": (256, 128, False), "q4_0": (16, 8, False), "q4_1": (16, 0, True), "q5_0": (32, 16, False),
        "q5_1": (32, 0, True), "iq4_nl": (16, None, False)}
_KOFF = {"q2_k": 0, "q3_k": 4, "q4_k": 0, "q5_k": 0, "q6_k": 32}
BLOCK_BYTES = {**gb.BLOCK_BYTES, "q5_0": 22, "q5_1": 24, "iq4_nl": 18, **{t: v[3] for t, v in gk.K_TYPES.items()}}
FALLBACK = {"q2_k": "iq4_nl", "q3_k": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def block_of(qtype: str) -> int:
    """Row multiple a type needs: 256 for K-quants, else 32."""
    return gk.QK_K if qtype in KQUANTS else gb.BLOCK


def bits_per_weight(qtype: str) -> float:
    """Stored bits per weight, scales included (q4_k: 4.5, q6_k: 6.5625)."""
    return 8 * BLOCK_BYTES[qtype] / block_of(qtype)


def fallback(qtype: str, row: int) -> str:
    """The type llama.cpp writes for a row of width *row* when *qtype* cannot tile it (``qtype`` when it can).

    >>> fallback("q4_k", 576), fallback("q4_k", 1536), fallback("q5_0", 40)
    ('q5_0', 'q4_k', 'f16')
    """
    if qtype not in TYPES or row % block_of(qtype) == 0:
        return qtype
    t = FALLBACK.get(qtype, "f16")
    return t if t in TYPES and row % block_of(t) == 0 else "f16"


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).float()


@dataclass
class GridParams:
    """The stored scales of a slab: ``d``/``m`` [rows, blocks] fp32 holding fp16 values (K: super-blocks;
    ``m`` is q4_1/q5_1's min or a K-quant's ``dmin``); ``sc``/``mn`` [rows, sub-blocks] int16 codes (K only)."""

    d: torch.Tensor
    m: torch.Tensor | None = None
    sc: torch.Tensor | None = None
    mn: torch.Tensor | None = None

    def rows(self, fn) -> GridParams:
        """The same params with *fn* applied to every tensor's rows (a row permutation keeps the grid)."""
        return GridParams(*(None if t is None else fn(t) for t in (self.d, self.m, self.sc, self.mn)))


class Grid:
    """One GGUF type's grid: ``fit`` the scales of a slab, ``quantize`` columns onto it, ``dequantize`` codes."""

    def __init__(self, qtype: str):
        if qtype not in TYPES:
            raise ValueError(f"unknown GGUF quantized type '{qtype}' (known: {', '.join(TYPES)})")
        self.qtype = qtype
        self.block = block_of(qtype)
        if qtype in KQUANTS:
            self.sub, n, _, _ = gk.K_TYPES[qtype]
            self.levels = torch.arange(n, dtype=torch.float32) - _KOFF[qtype]
        else:
            self.sub = gb.BLOCK
            n, off, _ = _B32[qtype]
            self.levels = torch.tensor(KVALUES_IQ4NL, dtype=torch.float32) if off is None else \
                torch.arange(n, dtype=torch.float32) - off
        self.uniform = qtype != "iq4_nl"
        self.lo, self.hi = (-127 + 128, 255) if qtype == "q8_0" else (0, len(self.levels) - 1)  # ggml's q8_0 uses ±127

    def __repr__(self) -> str:
        return f"Grid('{self.qtype}', block={self.block})"

    # -- scales ------------------------------------------------------------------------------
    def fit(self, W: torch.Tensor, importance: torch.Tensor | None = None) -> GridParams:
        """The stored scales for W [rows, k·block] (ggml's RTN choice; *importance* [cols] weighs the search).

        >>> gguf_grid("q5_0").fit(torch.randn(3, 64)).d.shape
        torch.Size([3, 2])
        """
        W = W.detach().float()
        if W.dim() != 2 or W.shape[1] % self.block:
            raise GridMismatch(f"{self.qtype} needs slabs of a multiple of {self.block} columns; got {tuple(W.shape)}")
        if self.qtype in KQUANTS:
            p = gk.fit(self.qtype, W, importance)
            return GridParams(p["d"], p["dmin"], p["sc"], p["mn"])
        rows, cols = W.shape
        x = W.reshape(rows * cols // 32, 32)
        qw = None if importance is None else importance.float().reshape(1, cols).expand(rows, cols).reshape_as(x)
        t = self.qtype
        if t == "iq4_nl":
            d = _iq4nl_scale(x, qw)
            return GridParams(_fp16(d).reshape(rows, -1))
        if t in ("q4_1", "q5_1"):
            n = len(self.levels) - 1
            if qw is None:
                lo, hi = x.amin(-1), x.amax(-1)
                d = (hi - lo) / n
            else:
                d, neg_lo = gk.make_qkx2(x, qw * torch.sqrt(2 * (x * x).mean(-1, keepdim=True) + x * x), n, -0.9, 0.05, 36, False)
                lo = -neg_lo
            return GridParams(_fp16(d).reshape(rows, -1), _fp16(lo).reshape(rows, -1))
        if t == "q8_0":
            d = x.abs().amax(-1) / 127
        elif qw is None:                                                  # q4_0 / q5_0: d = signed max / −2^(b−1)
            mx = torch.gather(x, -1, x.abs().argmax(-1, keepdim=True)).squeeze(-1)
            d = mx / -(len(self.levels) // 2)
        else:
            d = gk.make_qx(x, len(self.levels) // 2, qw * torch.sqrt(2 * (x * x).mean(-1, keepdim=True) + x * x))
        return GridParams(_fp16(d).reshape(rows, -1))

    def scale_offset(self, p: GridParams) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-column scale and offset [rows, cols] (offset None: 0), formed as llama.cpp forms them."""
        if self.qtype in KQUANTS:
            n_sub = gk.QK_K // self.sub
            d = p.d.repeat_interleave(n_sub, dim=1)
            sc = p.sc.float() - (32 if self.qtype == "q3_k" else 0)
            s = d * sc
            o = None if p.m is None else -(p.m.repeat_interleave(n_sub, dim=1) * p.mn.float())
        else:
            s, o = p.d, p.m
        s = s.repeat_interleave(self.sub, dim=1)
        return s, None if o is None else o.repeat_interleave(self.sub, dim=1)

    # -- rounding ----------------------------------------------------------------------------
    def _round(self, w, s, o):
        if self.uniform:
            x = w if o is None else w - o
            safe = torch.where(s == 0, torch.ones_like(s), s)
            off = -self.levels[0].item()                               # the code of level 0
            code = torch.where(s == 0, torch.full_like(x, off), torch.round(x / safe) + off)
            codes = code.clamp(self.lo, self.hi).to(torch.int16)
        else:
            cand = s.unsqueeze(-1) * self.levels                       # [..., 16] the values the codes decode to
            codes = (cand - w.unsqueeze(-1)).abs().argmin(-1).to(torch.int16)
        return codes, self.values(codes, s, o)

    def values(self, codes: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None) -> torch.Tensor:
        v = s * self.levels[codes.long()]
        return v if o is None else v + o

    def quantize(self, W: torch.Tensor, p: GridParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int16, dequantized fp32) of W [rows, cols] on the grid of *p*: the nearest grid point per weight.

        >>> g = gguf_grid("iq4_nl"); W = torch.randn(2, 32)
        >>> codes, values = g.quantize(W, g.fit(W)); codes.shape
        torch.Size([2, 32])
        """
        s, o = self.scale_offset(p)
        return self._round(W.detach().float(), s, o)

    def quantize_column(self, w: torch.Tensor, p: GridParams, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, values) [rows] of column *j* of the slab that *p* covers, rounded onto the grid.

        >>> g = gguf_grid("q4_k"); W = torch.randn(4, 256); p = g.fit(W)
        >>> torch.equal(g.quantize_column(W[:, 7], p, 7)[1], g.quantize(W, p)[1][:, 7])
        True
        """
        blk, sub = j // self.block, (j % self.block) // self.sub
        if self.qtype in KQUANTS:
            n_sub = gk.QK_K // self.sub
            i = blk * n_sub + sub
            sc = p.sc[:, i].float() - (32 if self.qtype == "q3_k" else 0)
            s = p.d[:, blk] * sc
            o = None if p.m is None else -(p.m[:, blk] * p.mn[:, i].float())
        else:
            s, o = p.d[:, blk], None if p.m is None else p.m[:, blk]
        return self._round(w.detach().float(), s, o)

    def dequantize(self, codes: torch.Tensor, p: GridParams) -> torch.Tensor:
        s, o = self.scale_offset(p)
        return self.values(codes, s, o)


def _iq4nl_scale(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    """llama.cpp's iq4_nl block scale (``quantize_row_iq4_nl_impl``, ntry 7) for every 32-row of x [N, 32]."""
    kv = torch.tensor(KVALUES_IQ4NL, dtype=torch.float32)
    w = x * x if qw is None else qw * torch.sqrt(2 * (x * x).mean(-1, keepdim=True) + x * x)
    amax, idx = x.abs().max(-1)
    mx = torch.gather(x, -1, idx[:, None]).squeeze(-1)
    zero = amax < gk.EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    mids = (kv[1:] + kv[:-1]) / 2

    def sums(inv):
        q = kv[torch.bucketize(inv[:, None] * x, mids, right=True)]
        return (w * q * x).sum(-1), (w * q * q).sum(-1)

    sqx, sq2 = sums(1 / (-mx / kv[0]))
    d = torch.where(sq2 > 0, sqx / torch.where(sq2 > 0, sq2, torch.ones_like(sq2)), torch.zeros_like(sqx))
    best = d * sqx
    for itry in range(-7, 8):
        sqx, sq2 = sums((itry + kv[0]) / mx)
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = torch.where(better, sqx / torch.where(sq2 > 0, sq2, torch.ones_like(sq2)), d)
        best = torch.where(better, d * sqx, best)
    return torch.where(zero, torch.zeros_like(d), d)


_GRIDS: dict[str, Grid] = {}


def gguf_grid(qtype: str) -> Grid:
    """The ``Grid`` of a GGUF type (q8_0 ... q6_k).

    >>> gguf_grid("q6_k").block
    256
    """
    if qtype not in _GRIDS:
        _GRIDS[qtype] = Grid(qtype)
    return _GRIDS[qtype]


@dataclass
class TypeCodes:
    """A weight on a GGUF type's grid: stored codes [out, in] (unsigned) and their ``GridParams``."""

    qtype: str
    codes: torch.Tensor
    params: GridParams

    def dequantize(self) -> torch.Tensor:
        """fp32 weights [out, in] exactly as llama.cpp reconstructs them."""
        return gguf_grid(self.qtype).dequantize(self.codes, self.params)

    def rows(self, fn) -> TypeCodes:
        """The same weight with *fn* (a row permutation) applied to codes and scales."""
        return TypeCodes(self.qtype, fn(self.codes), self.params.rows(fn))


def _from_blocks(bc: gb.BlockCodes) -> TypeCodes:
    codes = bc.codes + (128 if bc.qtype == "q8_0" else 0)
    return TypeCodes(bc.qtype, codes.to(torch.int16), GridParams(bc.d, bc.m))


def _ref_q5(x: torch.Tensor, qtype: str) -> TypeCodes:
    """ggml's ``quantize_row_q5_0/1_ref``: codes = trunc(x/d + ½ or 16½) with the unrounded d."""
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32)
    if qtype == "q5_0":
        mx = torch.gather(b, -1, b.abs().argmax(-1, keepdim=True))
        d, base, add, m = mx / -16, 0.0, 16.5, None
    else:
        lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
        d, base, add, m = (hi - lo) / 31, lo, 0.5, _fp16(lo.squeeze(-1))
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    codes = torch.trunc((b - base) * inv + add).clamp(0, 31).to(torch.int16).reshape(rows, cols)
    return TypeCodes(qtype, codes, GridParams(_fp16(d.squeeze(-1)), m))


def rtn(W: torch.Tensor, qtype: str, importance: torch.Tensor | None = None) -> TypeCodes:
    """Round-to-nearest of W [out, in] onto *qtype* (in a multiple of ``block_of(qtype)``).

    >>> rtn(torch.randn(4, 256), "q3_k").codes.shape
    torch.Size([4, 256])
    """
    W = W.detach().float()
    if W.dim() != 2 or W.shape[1] % block_of(qtype):
        raise GridMismatch(f"weight of shape {tuple(W.shape)}: {qtype} needs rows that are a multiple of {block_of(qtype)}")
    if importance is None and qtype in gb.QTYPES:
        return _from_blocks(gb.rtn(W, qtype))
    if importance is None and qtype in ("q5_0", "q5_1"):
        return _ref_q5(W, qtype)
    g = gguf_grid(qtype)
    p = g.fit(W, importance)
    return TypeCodes(qtype, g.quantize(W, p)[0], p)


def from_quantized(q, qtype: str) -> TypeCodes:
    """An edgellm ``QuantizedWeight`` on *qtype*'s grid, codes as they are: q8_0/q4_0/q4_1 as ``gguf_blocks``
    maps them; q5_0 ← 5-bit symmetric (zero 16) or 4-bit symmetric (zero 8: codes + 8); q5_1 ← any 5- or
    4-bit (d = scale, m = fp16(−scale·zero), as for q4_1). Group sizes must be multiples of 32;
    ``GridMismatch`` otherwise (and for every K-quant and iq4_nl: their scales are codes of their own).
    """
    if qtype in gb.QTYPES:
        return _from_blocks(gb.from_quantized(q, qtype))
    bits = int(q.bits)
    if qtype not in ("q5_0", "q5_1") or bits not in (4, 5):
        raise GridMismatch(f"{qtype} takes no {bits}-bit edgellm codes as they are (q5_0/q5_1 take 4- and 5-bit codes)")
    codes = q.codes.to(torch.int16)
    out_f, in_f = codes.shape
    gb.check_shape(codes.shape)
    group = int(q.group_size) if q.group_size and q.group_size > 0 else in_f
    if group % gb.BLOCK:
        raise GridMismatch(f"group size {group} is not a multiple of the {gb.BLOCK}-wide GGML block")
    scale = gb._per_block(q.scale, out_f, in_f, group)
    zero = gb._per_block(q.zero, out_f, in_f, group) if q.zero is not None else torch.zeros_like(scale)
    if not torch.equal(_fp16(scale), scale):
        raise GridMismatch("scales are not fp16-representable")
    if qtype == "q5_1":
        return TypeCodes(qtype, codes, GridParams(scale, _fp16(-scale * zero)))
    mid = 2 ** (bits - 1)
    if not bool((zero == mid).all()):
        raise GridMismatch(f"q5_0 needs symmetric codes (zero point {mid}); got {bits}-bit asymmetric")
    return TypeCodes(qtype, codes + (16 - mid), GridParams(scale))


def _nibbles(q: np.ndarray) -> np.ndarray:
    return (q[..., :16] & 0xF) | ((q[..., 16:] & 0xF) << 4)


def pack(tc: TypeCodes) -> np.ndarray:
    """llama.cpp's block bytes: uint8 [out, in / block · bytes per block].

    >>> pack(rtn(torch.randn(2, 32), "iq4_nl")).shape
    (2, 18)
    """
    t, codes, p = tc.qtype, tc.codes, tc.params
    if t in KQUANTS:
        none = lambda a: None if a is None else a.numpy()   # noqa: E731
        return gk.pack(t, codes.numpy(), p.d.numpy(), none(p.m), p.sc.numpy(), none(p.mn))
    if t in gb.QTYPES:
        return gb.pack(gb.BlockCodes(t, codes - (128 if t == "q8_0" else 0), p.d, p.m))
    out_f, in_f = codes.shape
    nb = in_f // 32
    q = codes.numpy().astype(np.uint8).reshape(out_f, nb, 32)
    if int(codes.min()) < 0 or int(codes.max()) >= len(gguf_grid(t).levels):
        raise GridMismatch(f"{t} codes outside 0..{len(gguf_grid(t).levels) - 1}")
    f16 = lambda a: a.numpy().astype(np.float16).view(np.uint8).reshape(out_f, nb, 2)   # noqa: E731
    parts = [f16(p.d)] + ([f16(p.m)] if t == "q5_1" else [])
    if t in ("q5_0", "q5_1"):
        parts.append(np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
    parts.append(_nibbles(q))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(out_f, nb * BLOCK_BYTES[t]))
