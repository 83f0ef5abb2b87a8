"""Optional 8-bit input embedding and LM head (``QuantConfig(quantize_embeddings=True)``).

The embedding table becomes ``QuantizedEmbedding`` (8-bit codes per row, symmetric Q8_0-style
per-row fp16 scale; a lookup dequantizes only the rows it reads) and the LM head becomes an
8-bit per-channel ``QuantizedLinear`` on the int8 kernel. Tied weights are untied (each keeps
its own 8-bit copy, still half of one fp32 table). Deliberately left out: sub-8-bit embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import QuantizedLinear, set_submodule
from .primitives import quantize_weight


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` with 8-bit rows: ``row = scale_row · (codes − 128)``.

    >>> e = QuantizedEmbedding.from_embedding(nn.Embedding(10, 4)); e(torch.tensor([1])).shape
    torch.Size([1, 4])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1, dtype=torch.float16))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "QuantizedEmbedding":
        qw = quantize_weight(emb.weight.detach(), 8, None, True)
        m = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        m.codes, m.scale = qw.codes, qw.scale
        return m

    def spec(self) -> dict:
        return {"num": self.num_embeddings, "dim": self.embedding_dim, "padding_idx": self.padding_idx}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantizedEmbedding":
        return cls(spec["num"], spec["dim"], spec.get("padding_idx"))

    @property
    def weight(self) -> torch.Tensor:
        return self.scale.float() * (self.codes.float() - 128.0)

    def storage_bytes(self) -> int:
        return self.codes.numel() + self.scale.numel() * 2

    def _apply(self, fn, recurse=True):
        scale = self._buffers.pop("scale")
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers["scale"] = scale.to(device=self.codes.device)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.codes).float() - 128.0
        return rows * F.embedding(ids, self.scale).float()


def quantize_embeddings(model: nn.Module) -> dict[str, int]:
    """Swap the input embedding and LM head for 8-bit versions; returns their storage bytes by name."""
    out: dict[str, int] = {}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(m): n for n, m in model.named_modules()}
    if head is not None and isinstance(head, nn.Linear):
        qw = quantize_weight(head.weight.detach(), 8, None, True)
        ql = QuantizedLinear.from_weight(qw, head.bias)
        set_submodule(model, names[id(head)], ql)
        out[names[id(head)]] = ql.storage_bytes()
    if emb is not None and isinstance(emb, nn.Embedding):
        qe = QuantizedEmbedding.from_embedding(emb)
        set_submodule(model, names[id(emb)], qe)
        out[names[id(emb)]] = qe.storage_bytes()
    if getattr(model, "config", None) is not None and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    return out
