"""Fold a per-channel scale through a producer and its consumers, leaving the float function unchanged.

``fold_scale(producer, consumers, s)`` divides the output channels of *producer* (an RMSNorm/LayerNorm's
elementwise weight and bias, or the rows of a preceding ``nn.Linear``) by ``s`` and multiplies the input
columns of each consumer linear by ``s``: ``W·diag(s)`` then reads ``X·diag(s)⁻¹``, which is the same
product. A norm that scales by ``norm_offset + w`` (Gemma's ``1 + w``, ``FamilySpec.norm_offset``) gets
``w ← (norm_offset + w)/s − norm_offset``. ``can_fold(producer, consumers)`` is the shape check that
makes the fold exact. AWQ (``quantization.awq``) and GPTQ onto a GGUF grid with AWQ's prescale
(``exporters.gguf_gptq``) both fold their searched scales through these two functions.

Deliberately left out: choosing the scale (the methods search it), finding which module produces which
linears' input (model-family data, ``FamilySpec.awq_folds``), and a producer that is neither a linear nor
an elementwise norm (an attention output has no weight to absorb the scale).
"""

from __future__ import annotations

import torch
from torch import nn


def can_fold(producer: nn.Module | None, consumers: list[nn.Linear]) -> bool:
    """Whether ``fold_scale(producer, consumers, s)`` is exact: consumers share ``in_features = k`` and the
    producer is a linear with ``k`` outputs or a norm with an elementwise weight of ``k`` entries.

    >>> can_fold(torch.nn.RMSNorm(4), [torch.nn.Linear(4, 2)]), can_fold(torch.nn.Linear(3, 5), [torch.nn.Linear(4, 2)])
    (True, False)
    """
    if producer is None or not consumers or getattr(producer, "weight", None) is None:
        return False
    k = consumers[0].in_features
    if any(c.in_features != k for c in consumers):
        return False
    if isinstance(producer, nn.Linear):
        return producer.out_features == k
    w = producer.weight
    return w.dim() == 1 and w.numel() == k          # a norm with an elementwise weight


@torch.no_grad()
def fold_scale(producer: nn.Module, consumers: list[nn.Linear], s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """Divide *producer*'s output channels by *s* and multiply the consumers' input columns by *s*, in place
    (*s* is cast to the consumers' weight dtype first).

    >>> norm, lin = torch.nn.RMSNorm(4), torch.nn.Linear(4, 2)
    >>> fold_scale(norm, [lin], torch.tensor([1.0, 2.0, 4.0, 0.5]))
    >>> norm.weight.tolist()
    [1.0, 0.5, 0.25, 2.0]
    """
    s = s.to(consumers[0].weight.dtype)
    if isinstance(producer, nn.Linear):
        producer.weight.div_(s.view(-1, 1))
    else:
        producer.weight.add_(norm_offset).div_(s).sub_(norm_offset)
    if getattr(producer, "bias", None) is not None:
        producer.bias.div_(s)
    for lin in consumers:
        lin.weight.mul_(s.view(1, -1))


__all__ = ["can_fold", "fold_scale"]
