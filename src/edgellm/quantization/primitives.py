"""Quantization math as plain functions on tensors: choose qparams, quantize, dequantize, pack.

Conventions (the packed-weight record every other part reads, the GGUF exporter included):

* ``codes`` are unsigned integers ``0 .. 2^b − 1`` shaped like the weight ``[out, in]``;
* ``scale`` is fp16 ``[out, n_groups]`` and ``zero`` integer codes ``[out, n_groups]``;
* the weight is exactly ``scale · (codes − zero)``. Scales are rounded to fp16 *before* the codes
  are computed, so the stored fp16 scales reproduce the quantized weights exactly.
* Groups run along the input dimension; ``group_size`` g that does not divide ``in`` leaves a
  ragged (shorter) last group, never padding. Per-channel is one group of ``in``.

Grids:

* **asymmetric** (min-max): ``s = (x_max − x_min)/(2^b − 1)`` with the range widened to include 0,
  ``z = round(−x_min/s)``, ``q = clamp(round(x/s) + z)``. This is the brief's
  ``round((x − x_min)/(x_max − x_min)·(2^b − 1))`` with x_min snapped to the grid (an integer
  zero point, which kernels and GGUF need); when x_min already lies on the grid the two agree
  code for code.
* **symmetric, b < 8**: GGUF's Q4_0/Q5_0 rule: ``d = m / −2^(b−1)`` with m the signed value of
  largest magnitude (so d may be negative), ``q = clamp(round(x/d) + 2^(b−1))``: codes − zero
  span ``[−2^(b−1), 2^(b−1) − 1]`` and the extreme lands exactly on −2^(b−1). At b=4, g=32 this
  is Q4_0's grid bit for bit.
* **symmetric, b = 8**: GGUF's Q8_0 rule ``d = amax/127``: codes − 128 span ``[−127, 127]``.

Deliberately left out: non-uniform grids (NF4, k-means) and fp8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP16_TINY = 2.0 ** -24   # smallest positive fp16 (subnormal); scales never round to 0


def effective_group(in_features: int, group_size: int | None) -> int:
    """Group width in input channels: g for per-group, ``in_features`` for per-channel/per-tensor.

    >>> effective_group(576, 128), effective_group(576, None), effective_group(576, -1)
    (128, 576, 576)
    """
    if group_size is None or group_size == -1:
        return in_features
    return min(group_size, in_features)


def n_groups(in_features: int, group: int) -> int:
    return math.ceil(in_features / group)


def expand_groups(t: torch.Tensor, in_features: int, group: int) -> torch.Tensor:
    """``[out, n_groups]`` -> ``[out, in]``, each group's value repeated over its columns."""
    return t.repeat_interleave(group, dim=1)[:, :in_features]


def _group_reduce(W: torch.Tensor, group: int, fn) -> torch.Tensor:
    """``fn(x, dim=-1)`` over each group of columns of ``W [out, in]``; ragged last group handled."""
    out, k = W.shape
    full = (k // group) * group
    parts = []
    if full:
        parts.append(fn(W[:, :full].reshape(out, full // group, group), -1))
    if full < k:
        parts.append(fn(W[:, full:], -1).unsqueeze(1))
    return torch.cat(parts, dim=1)


def _amin(x, d):
    return x.amin(dim=d)


def _amax(x, d):
    return x.amax(dim=d)


def _signed_extreme(x, d):
    """The signed value of largest magnitude; a tie between +m and −m goes to the first, as in GGUF's reference."""
    hi, lo = x.amax(dim=d), x.amin(dim=d)
    out = torch.where(hi >= -lo, hi, lo)
    tie = (hi == -lo) & (hi != 0)
    if tie.any():
        first = x.gather(d, x.abs().argmax(dim=d, keepdim=True)).squeeze(d)
        out = torch.where(tie, first, out)
    return out


def to_fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to fp16 (kept in float32 for the math); zero or tiny scales become ±2^-24."""
    sign = torch.where(scale < 0, -1.0, 1.0)
    mag = scale.abs().clamp(min=FP16_TINY, max=65504.0)
    return (sign * mag).half().float()


def choose_qparams(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                   shrink: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales (fp16 values, as float32) and integer zero points, both ``[out, n_groups]``.

    *shrink* (scalar or ``[out, n_groups]``) narrows the range before the grid is made
    (clipping search). Per-tensor (``group_size=-1``) computes one range and broadcasts it.

    >>> s, z = choose_qparams(torch.tensor([[-1.0, 0.5]]), 4, None, True)
    >>> s.tolist(), z.tolist()
    ([[0.125]], [[8]])
    """
    W = W.float()
    out, k = W.shape
    if group_size == -1:
        s, z = choose_qparams(W.reshape(1, -1), bits, None, symmetric, shrink)
        return s.expand(out, 1).contiguous(), z.expand(out, 1).contiguous()
    g = effective_group(k, group_size)
    qmax = 2 ** bits - 1
    if symmetric:
        mid = 2 ** (bits - 1)
        if bits == 8:
            scale = _group_reduce(W.abs(), g, _amax) * shrink / 127.0
        else:
            scale = _group_reduce(W, g, _signed_extreme) * shrink / -mid
        scale = to_fp16_scale(scale)
        zero = torch.full_like(scale, mid, dtype=torch.int32)
        return scale, zero
    xmin = _group_reduce(W, g, _amin).clamp(max=0) * shrink
    xmax = _group_reduce(W, g, _amax).clamp(min=0) * shrink
    scale = to_fp16_scale((xmax - xmin) / qmax)
    zero = torch.round(-xmin / scale).clamp(0, qmax).to(torch.int32)
    return scale, zero


def quantize_codes(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Integer codes ``clamp(round(W/s) + z, 0, 2^b − 1)`` as uint8 ``[out, in]``."""
    k = W.shape[1]
    S = expand_groups(scale.float(), k, group)
    Z = expand_groups(zero.float(), k, group)
    return (torch.round(W.float() / S) + Z).clamp_(0, 2 ** bits - 1).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """``scale · (codes − zero)`` in float32, ``[out, in]``."""
    k = codes.shape[1]
    S = expand_groups(scale.float(), k, group)
    Z = expand_groups(zero.float(), k, group)
    return S * (codes.float() - Z)


def fake_quantize(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Quantize then dequantize (float32), the weight the quantized layer will really use."""
    return dequantize_codes(quantize_codes(W, scale, zero, bits, group), scale, zero, group)


@dataclass
class QuantizedWeight:
    """The packed-weight record: ``weight = scale · (codes − zero)`` exactly.

    ``group_size`` is the effective group width (``in`` for per-channel and per-tensor);
    ``granularity`` says which of the three it was.
    """

    codes: torch.Tensor        # uint8 [out, in], 0 .. 2^bits − 1
    scale: torch.Tensor        # fp16 [out, n_groups]
    zero: torch.Tensor         # uint8 [out, n_groups]; the fixed midpoint 2^(bits−1) when symmetric
    group_size: int
    bits: int
    symmetric: bool
    granularity: str = "group"  # "group" | "channel" | "tensor"

    def dequantize(self) -> torch.Tensor:
        """Float32 weight ``scale · (codes − zero)``.

        >>> qw = quantize_weight(torch.randn(4, 64), bits=8)   # doctest: +SKIP
        """
        return dequantize_codes(self.codes, self.scale, self.zero, self.group_size)


def make_quantized_weight(W: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                          group_size: int | None, symmetric: bool) -> QuantizedWeight:
    k = W.shape[1]
    gran = {None: "channel", -1: "tensor"}.get(group_size, "group")
    return QuantizedWeight(codes=codes.to(torch.uint8).contiguous(), scale=scale.half().contiguous(),
                           zero=zero.to(torch.uint8).contiguous(), group_size=effective_group(k, group_size),
                           bits=bits, symmetric=symmetric, granularity=gran)


def quantize_weight(W: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True,
                    shrink: torch.Tensor | float = 1.0) -> QuantizedWeight:
    """Round-to-nearest quantization of ``W [out, in]`` on the chosen grid.

    >>> qw = quantize_weight(torch.randn(8, 96), bits=4, group_size=64, symmetric=False)
    >>> qw.scale.shape, qw.codes.dtype
    (torch.Size([8, 2]), torch.uint8)
    """
    scale, zero = choose_qparams(W, bits, group_size, symmetric, shrink)
    g = effective_group(W.shape[1], group_size)
    codes = quantize_codes(W, scale, zero, bits, g)
    return make_quantized_weight(W, codes, scale, zero, bits, group_size, symmetric)


def minmax_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The brief's formula verbatim: ``round((x − x_min)/(x_max − x_min) · (2^b − 1))`` over all of *x*.

    >>> minmax_codes(torch.tensor([-1.0, 0.0, 2.0]), 2).tolist()
    [0.0, 1.0, 3.0]
    """
    lo, hi = x.min(), x.max()
    return torch.round((x - lo) / (hi - lo) * (2 ** bits - 1))


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10·log10(‖ref‖² / ‖ref − approx‖²)``."""
    noise = (ref.double() - approx.double()).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)
