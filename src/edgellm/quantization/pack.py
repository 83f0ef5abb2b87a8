"""Bit packing of integer codes: b-bit codes, LSB first, in a flat byte stream.

Codes are packed row-major over the whole ``[out, in]`` matrix as a little-endian bit stream:
code i occupies bits ``i·b .. i·b + b − 1``. So int4 is two codes per byte, low nibble first;
3-bit is 8 codes in 3 bytes; 2-bit four per byte; 8-bit is the codes themselves. The stream is
zero-padded to a whole byte. Size on disk is therefore ``ceil(out·in·b / 8)`` bytes.

Deliberately left out: kernel-specific layouts (the int4 CPU kernel's tiled layout is built
at load time by ``linear.py``, from these codes).
"""

from __future__ import annotations

import torch


def packed_numel(numel: int, bits: int) -> int:
    """Bytes needed for *numel* codes of *bits* bits.

    >>> packed_numel(10, 4), packed_numel(8, 3)
    (5, 3)
    """
    return (numel * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (any shape, values < 2^bits) -> flat uint8 byte stream.

    >>> pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist()
    [33, 3]
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    n = flat.numel()
    pad = (-n) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((flat.view(-1, 1) >> shifts) & 1).view(-1, 8)           # [n·b/8, 8] bits, LSB first
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.int32)
    out = (stream.to(torch.int32) * weights).sum(1).to(torch.uint8)
    return out[: packed_numel(n, bits)].contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """Inverse of ``pack_codes``: uint8 codes of *shape*."""
    shape = tuple(shape)
    n = int(torch.Size(shape).numel())
    if bits == 8:
        return packed.reshape(-1)[:n].view(shape).clone()
    shifts = torch.arange(8, dtype=torch.uint8)
    bits_flat = ((packed.reshape(-1).view(-1, 1) >> shifts) & 1).reshape(-1)[: n * bits]
    bits_per_code = bits_flat.view(n, bits).to(torch.int32)
    weights = (2 ** torch.arange(bits, dtype=torch.int32))
    return (bits_per_code * weights).sum(1).to(torch.uint8).view(shape)
