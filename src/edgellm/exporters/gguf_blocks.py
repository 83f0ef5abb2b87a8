"""GGML block quantization as plain functions: round-to-nearest encoders, grid matching, packing.

A weight on a GGML block grid is a ``BlockCodes``: integer codes [out, in] plus one fp16 scale
``d`` (and for Q4_1 one fp16 minimum ``m``) per block of 32 inputs. Three sources produce it:

* ``rtn(W, qtype)``: ggml's reference round-to-nearest (``quantize_row_q*_ref``), bit-exact
  with llama.cpp's ``convert_hf_to_gguf.py`` and ``gguf.quants``;
* ``from_quantized(q, qtype)``: edgellm's own ``QuantizedWeight`` (GPTQ/AWQ/RTN codes and
  scales) when it already lies on the block's grid: no dequantize-and-requantize step;
* anything else is a ``GridMismatch``, so the caller must ask for a requantization explicitly.

``permute_qk``/``unpermute_qk`` move Q/K rows between HF's half-split rotary layout and llama.cpp's
interleaved one; ``dequantize_codes`` turns a ``QuantizedWeight`` back into fp32.
``pack`` lays the codes out in llama.cpp's block structs (Q8_0: fp16 d + 32 int8; Q4_0: fp16 d
+ 16 bytes, element j in the low nibble of byte j and element j+16 in the high nibble; Q4_1:
fp16 d, fp16 m + the same nibbles). Deliberately absent: K-quants (256-wide super-blocks do
not divide SmolLM2's 576-wide rows) and importance-weighted encoders (llama.cpp's own
quantizer does those; see ``bench/gguf_vs_llamacpp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32
QTYPES = ("q8_0", "q4_0", "q4_1")
BLOCK_BYTES = {"q8_0": 2 + BLOCK, "q4_0": 2 + BLOCK // 2, "q4_1": 4 + BLOCK // 2}


class GridMismatch(ValueError):
    """A quantized weight whose codes do not lie on the requested GGML block grid."""


@dataclass
class BlockCodes:
    qtype: str
    codes: torch.Tensor          # [out, in] int16: Q8_0 signed −127..127, Q4_0/Q4_1 0..15
    d: torch.Tensor              # [out, in/32] float32, exactly representable in fp16
    m: torch.Tensor | None = None  # [out, in/32] Q4_1 block minimum (fp16-representable)

    def dequantize(self) -> torch.Tensor:
        """fp32 weights [out, in] exactly as llama.cpp reconstructs them."""
        out_f, in_f = self.codes.shape
        q = self.codes.float().view(out_f, in_f // BLOCK, BLOCK)
        if self.qtype == "q4_0":
            q = q - 8
        w = q * self.d.unsqueeze(-1)
        if self.m is not None:
            w = w + self.m.unsqueeze(-1)
        return w.view(out_f, in_f)


def check_shape(W_shape, what: str = "weight") -> None:
    if len(W_shape) != 2 or W_shape[1] % BLOCK:
        raise GridMismatch(f"{what} of shape {tuple(W_shape)}: GGML block types need rows that are a multiple of {BLOCK}")


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).float()


def _trunc_code(x: torch.Tensor, hi: int) -> torch.Tensor:
    # ggml casts x to int8 (truncation toward zero), then clamps with MIN(hi, ·)
    return torch.trunc(x).clamp(0, hi).to(torch.int16)


def rtn(W: torch.Tensor, qtype: str) -> BlockCodes:
    """ggml's reference round-to-nearest for *qtype* on W [out, in] (in % 32 == 0).

    >>> rtn(torch.randn(4, 64), "q4_0").codes.shape
    torch.Size([4, 64])
    """
    check_shape(W.shape)
    out_f, in_f = W.shape
    x = W.detach().float().reshape(out_f, in_f // BLOCK, BLOCK)
    if qtype == "q8_0":
        d = x.abs().amax(-1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        y = x * inv
        q = (torch.sign(y) * torch.floor(y.abs() + 0.5)).to(torch.int16)   # roundf: half away from zero
        return BlockCodes(qtype, q.view(out_f, in_f), _fp16(d.squeeze(-1)))
    if qtype == "q4_0":
        idx = x.abs().argmax(-1, keepdim=True)
        mx = torch.gather(x, -1, idx)
        d = mx / -8
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = _trunc_code(x * inv + 8.5, 15)
        return BlockCodes(qtype, q.view(out_f, in_f), _fp16(d.squeeze(-1)))
    if qtype == "q4_1":
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = _trunc_code((x - lo) * inv + 0.5, 15)
        return BlockCodes(qtype, q.view(out_f, in_f), _fp16(d.squeeze(-1)), _fp16(lo.squeeze(-1)))
    raise ValueError(f"unknown GGML block type '{qtype}' (known: {', '.join(QTYPES)})")


def _per_block(t: torch.Tensor, out_f: int, in_f: int, group: int) -> torch.Tensor:
    """[out, n_groups] per-group values → [out, in/32] per-block values (group is a multiple of 32)."""
    n_groups = -(-in_f // group)
    t = t.reshape(out_f, n_groups).float()
    return t.repeat_interleave(group // BLOCK, dim=1)[:, : in_f // BLOCK]


def from_quantized(q, qtype: str) -> BlockCodes:
    """Map an edgellm ``QuantizedWeight`` (codes 0..2^b−1, fp16 scale and zero per group) onto *qtype*.

    Exact when the grid matches: Q4_0 ← 4-bit symmetric (zero 8), Q8_0 ← 8-bit symmetric
    (zero 128), Q4_1 ← any 4-bit (d = scale, m = −scale·zero, rounded once to fp16), each with a
    group size that is a multiple of 32. Raises ``GridMismatch`` otherwise.
    """
    codes = q.codes.to(torch.int16)
    out_f, in_f = codes.shape
    check_shape(codes.shape)
    group = int(q.group_size) if q.group_size and q.group_size > 0 else in_f
    bits = int(q.bits)
    if group % BLOCK:
        raise GridMismatch(f"group size {group} is not a multiple of the {BLOCK}-wide GGML block")
    scale = _per_block(q.scale, out_f, in_f, group)
    zero = _per_block(q.zero, out_f, in_f, group) if q.zero is not None else torch.zeros_like(scale)
    if not torch.equal(_fp16(scale), scale):
        raise GridMismatch("scales are not fp16-representable")
    if qtype in ("q4_0", "q8_0"):
        want_bits, mid = (4, 8) if qtype == "q4_0" else (8, 128)
        if bits != want_bits or not bool((zero == mid).all()):
            raise GridMismatch(f"{qtype} needs {want_bits}-bit symmetric codes (zero point {mid}); "
                               f"got {bits}-bit {'symmetric' if getattr(q, 'symmetric', False) else 'asymmetric'}")
        c = codes - (128 if qtype == "q8_0" else 0)
        if qtype == "q8_0" and int(c.min()) < -128:
            raise GridMismatch("8-bit codes outside the int8 range")
        return BlockCodes(qtype, c, scale)
    if qtype == "q4_1":
        if bits != 4:
            raise GridMismatch(f"q4_1 needs 4-bit codes; got {bits}-bit")
        return BlockCodes(qtype, codes, scale, _fp16(-scale * zero))
    raise GridMismatch(f"unknown GGML block type '{qtype}'")


def pack(bc: BlockCodes) -> np.ndarray:
    """llama.cpp's block bytes: uint8 [out, in/32 · bytes_per_block].

    >>> pack(rtn(torch.randn(2, 32), "q8_0")).shape
    (2, 34)
    """
    out_f, in_f = bc.codes.shape
    nb = in_f // BLOCK
    d = bc.d.numpy().astype(np.float16).view(np.uint8).reshape(out_f, nb, 2)
    q = bc.codes.numpy().reshape(out_f, nb, BLOCK)
    if bc.qtype == "q8_0":
        if q.min() < -128 or q.max() > 127:
            raise GridMismatch("q8_0 codes outside int8")
        parts = [d, q.astype(np.int8).view(np.uint8)]
    else:
        if q.min() < 0 or q.max() > 15:
            raise GridMismatch(f"{bc.qtype} codes outside 0..15")
        q = q.astype(np.uint8)
        nib = q[..., : BLOCK // 2] | (q[..., BLOCK // 2 :] << np.uint8(4))
        parts = [d] + ([bc.m.numpy().astype(np.float16).view(np.uint8).reshape(out_f, nb, 2)] if bc.qtype == "q4_1" else [])
        parts.append(nib)
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(out_f, nb * BLOCK_BYTES[bc.qtype]))


def permute_qk(W: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's half-split rotary layout -> llama.cpp's interleaved one (rows of Q or K, or their bias).

    >>> permute_qk(torch.arange(8.), 2).tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    return W.reshape(n_head, 2, W.shape[0] // n_head // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def unpermute_qk(W: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of ``permute_qk``."""
    return W.reshape(n_head, W.shape[0] // n_head // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def dequantize_codes(q) -> torch.Tensor:
    """fp32 ``scale · (codes − zero)`` of a ``QuantizedWeight`` (codes [out, in], scale/zero [out, groups])."""
    codes = q.codes.float()
    out_f, in_f = codes.shape
    g = int(q.group_size) if q.group_size and q.group_size > 0 else in_f
    n_groups = -(-in_f // g)
    expand = lambda t: t.float().reshape(out_f, n_groups).repeat_interleave(g, dim=1)[:, :in_f]  # noqa: E731
    zero = expand(q.zero) if q.zero is not None else 0.0
    return (codes - zero) * expand(q.scale)
