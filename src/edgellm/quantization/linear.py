"""``QuantizedLinear``: a drop-in ``nn.Linear`` holding packed integer weights, run on integer kernels.

Stored (buffers, saved and counted as the layer's size): ``qweight`` (codes packed by
``pack.py``), ``scale`` (fp16 ``[out, n_groups]``), ``zero`` (uint8 ``[out, n_groups]``) and an
optional float ``bias``. ``unpack()`` returns the exact ``QuantizedWeight`` record.

Kernels (CPU, chosen once per layer, built lazily from the codes on the first call; see
``kernel_plan``):

* ``int8``: 8-bit per-channel/per-tensor weights -> ``torch._weight_int8pack_mm`` (int8 weights,
  bf16 activations, fp32 accumulation). An asymmetric zero point is folded into a rank-1
  correction ``rowsum(x) · s·(128 − z)``.
* ``w8a8``: activations quantized per token to int8 (symmetric, dynamic), then the same int8
  kernel with the int8 activation values carried exactly in bf16, so the product is an
  int8×int8 dot product with fp32 accumulation, scaled by ``s_x · s_w``. (``torch._int_mm`` is
  the literal int8 GEMM, but on CPU it measured 10-100× slower than fp32 at these shapes.)
* ``int4``: 2..4-bit weights -> ``torch._weight_int4pack_mm_for_cpu`` (bf16 activations). 3- and
  2-bit codes fit the 4-bit kernel unchanged; ``s·(q − z) = s·(q − 8) + s·(8 − z)`` gives its
  (scale, offset) pairs. Needs a kernel group kg ∈ {256, 128, 64, 32} with ``in % kg == 0``
  and ``g % kg == 0`` (per-channel and ragged groups are expanded onto kg).
* ``dequant`` (fallback, with the reason kept in ``kernel_reason``): 5-7-bit weights, grouped
  8-bit weights (torch has no grouped int8 CPU kernel), shapes the int4 kernel cannot take, and
  any non-CPU device: the weight is dequantized from cached codes on each call.

In memory the kernel copy of the weights replaces nothing: ``qweight`` stays for saving and
``unpack``. Deliberately left out: GPU integer kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pack import pack_codes, packed_numel, unpack_codes
from .primitives import QuantizedWeight, dequantize_codes, effective_group, expand_groups, n_groups

INT4_KERNEL_GROUPS = (256, 128, 64, 32)


class QuantizedLinear(nn.Module):
    """Packed-weight linear layer; ``forward`` matches ``F.linear(x, unpack().dequantize(), bias)``
    up to the kernel's bf16 activation rounding.

    >>> ql = QuantizedLinear.from_weight(quantize_weight(torch.randn(64, 96), 4, 32), bias=None)  # doctest: +SKIP
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, symmetric: bool,
                 granularity: str = "group", act_bits: int | None = None, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = bits, effective_group(in_features, group_size), symmetric
        self.granularity, self.act_bits = granularity, act_bits
        g = n_groups(in_features, self.group_size)
        self.register_buffer("qweight", torch.zeros(packed_numel(in_features * out_features, bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, g, dtype=torch.float16))
        self.register_buffer("zero", torch.zeros(out_features, g, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._kernel = None          # (kind, tensors), built lazily
        self.kernel_reason = ""

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_weight(cls, qw: QuantizedWeight, bias: torch.Tensor | None, act_bits: int | None = None) -> "QuantizedLinear":
        out_f, in_f = qw.codes.shape
        m = cls(in_f, out_f, qw.bits, qw.group_size, qw.symmetric, qw.granularity, act_bits, bias is not None)
        m.qweight = pack_codes(qw.codes, qw.bits)
        m.scale = qw.scale.to(torch.float16).clone()
        m.zero = qw.zero.to(torch.uint8).clone()
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().float().clone())
        return m

    def spec(self) -> dict:
        """What the loader needs to rebuild an empty layer of this shape."""
        return {"in": self.in_features, "out": self.out_features, "bits": self.bits, "group_size": self.group_size,
                "symmetric": self.symmetric, "granularity": self.granularity, "act_bits": self.act_bits,
                "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantizedLinear":
        return cls(spec["in"], spec["out"], spec["bits"], spec["group_size"], spec["symmetric"],
                   spec.get("granularity", "group"), spec.get("act_bits"), spec.get("bias", True))

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight.cpu(), self.bits, (self.out_features, self.in_features))

    def unpack(self) -> QuantizedWeight:
        """The exact packed-weight record (codes, fp16 scale, integer zero)."""
        return QuantizedWeight(codes=self.codes(), scale=self.scale.cpu().clone(), zero=self.zero.cpu().clone(),
                               group_size=self.group_size, bits=self.bits, symmetric=self.symmetric,
                               granularity=self.granularity)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized float32 weight (for inspection and compatibility; ``forward`` does not use it)."""
        return self.unpack().dequantize().to(self.scale.device)

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight: packed codes + fp16 scales + zero points (bias excluded)."""
        return self.qweight.numel() + self.scale.numel() * 2 + self.zero.numel()

    def bits_per_weight(self) -> float:
        return 8.0 * self.storage_bytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, act_bits={self.act_bits}, "
                f"kernel={self.kernel_plan()[0]}")

    # -- kernels --------------------------------------------------------------------------------
    def kernel_plan(self) -> tuple[str, str]:
        """(kind, reason) of the kernel this layer runs on, for its current device."""
        if self.qweight.device.type != "cpu":
            return "dequant", "the integer kernels used here are CPU kernels"
        if self.act_bits == 8:
            return "w8a8", "dynamic per-token int8 activations × int8 weights"
        if self.bits == 8 and self.granularity in ("channel", "tensor"):
            return "int8", "torch._weight_int8pack_mm"
        if self.bits <= 4:
            kg = self._int4_group()
            if self.out_features % 16:  # _convert_weight_to_int4pack_for_cpu needs N divisible by 16
                return "dequant", f"the int4 CPU kernel needs out_features divisible by 16 (got {self.out_features})"
            if kg:
                return "int4", f"torch._weight_int4pack_mm_for_cpu (kernel group {kg})"
            return "dequant", (f"no int4 kernel group divides in_features={self.in_features} and "
                               f"group_size={self.group_size}")
        if self.bits == 8:
            return "dequant", "torch has no grouped int8 CPU kernel (use per-channel 8-bit for the int8 kernel)"
        return "dequant", f"no CPU kernel for {self.bits}-bit weights"

    def _int4_group(self) -> int | None:
        for kg in INT4_KERNEL_GROUPS:
            if self.in_features % kg == 0 and self.group_size % kg == 0:
                return kg
        return None

    def _build_kernel(self):
        kind, reason = self.kernel_plan()
        self.kernel_reason = reason
        codes = self.codes()
        scale = self.scale.float().cpu()
        zero = self.zero.float().cpu()
        if kind in ("int8", "w8a8"):
            q = (codes.to(torch.int16) - 128).to(torch.int8).contiguous()
            s = scale[:, 0]
            corr = s * (128.0 - zero[:, 0])
            t = {"q": q, "s": s.to(torch.bfloat16), "corr": corr if bool((zero != 128).any()) else None}
        elif kind == "int4":
            kg = self._int4_group()
            S = expand_groups(scale, self.in_features, self.group_size)[:, ::kg]       # [out, in/kg]
            Z = expand_groups(zero, self.in_features, self.group_size)[:, ::kg]
            offset = S * (8.0 - Z)
            sz = torch.stack([S.t(), offset.t()], dim=-1).contiguous().to(torch.bfloat16)   # [in/kg, out, 2]
            packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
            t = {"packed": packed, "kg": kg, "sz": sz}
        else:
            t = {"codes": codes.to(self.qweight.device)}
        self._kernel = (kind, t)
        return self._kernel

    def _apply(self, fn, recurse=True):
        # keep the fp16 scales fp16 whatever dtype the model is moved to (they define the weights)
        scale = self._buffers.pop("scale")
        try:
            super()._apply(fn, recurse)
            moved = fn(scale)
            self._buffers["scale"] = scale.to(device=moved.device)
        except BaseException:
            self._buffers["scale"] = scale
            raise
        self._kernel = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel = None
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind, t = self._kernel or self._build_kernel()
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if kind == "int8":
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), t["q"], t["s"]).float()
            if t["corr"] is not None:
                y = y + x2.float().sum(-1, keepdim=True) * t["corr"]
        elif kind == "w8a8":
            xf = x2.float()
            sx = (xf.abs().amax(-1, keepdim=True) / 127.0).clamp_min(1e-12)
            xq = torch.round(xf / sx).clamp_(-127, 127)
            y = torch._weight_int8pack_mm(xq.to(torch.bfloat16).contiguous(), t["q"], t["s"]).float() * sx
            if t["corr"] is not None:
                y = y + (xq.sum(-1, keepdim=True) * sx) * t["corr"]
        elif kind == "int4":
            y = torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), t["packed"], t["kg"], t["sz"]).float()
        else:
            W = dequantize_codes(t["codes"], self.scale, self.zero, self.group_size).to(x.dtype)
            y = F.linear(x2, W)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)


def quantized_linears(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every ``QuantizedLinear`` in *model* by dotted name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted *name*."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
