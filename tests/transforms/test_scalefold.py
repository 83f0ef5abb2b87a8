"""The shared scale fold (transforms/scalefold.py): the float function is unchanged for a norm producer (with
and without Gemma's ``1 + w`` offset) and a linear producer with a bias, and ``can_fold`` refuses shapes
the fold cannot keep exact."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgellm.transforms.scalefold import can_fold, fold_scale


class OffsetRMSNorm(nn.Module):
    """Gemma's norm: scales by ``1 + w``."""

    def __init__(self, k):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(k) - 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def _outputs(producer, consumers, x):
    h = producer(x)
    return torch.cat([c(h) for c in consumers], -1)


def _check(producer, consumers, offset=0.0):
    g = torch.Generator().manual_seed(0)
    k = consumers[0].in_features
    x = torch.randn(16, producer.in_features if isinstance(producer, nn.Linear) else k, generator=g)
    s = torch.rand(k, generator=g) * 4 + 0.25
    p2, c2 = copy.deepcopy(producer), copy.deepcopy(consumers)
    with torch.no_grad():
        before = _outputs(producer, consumers, x)
        fold_scale(p2, c2, s, offset)
        after = _outputs(p2, c2, x)
        moved = (c2[0].weight - consumers[0].weight).abs().max()
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5), (before - after).abs().max()
    assert moved > 0.1          # the weights did change: the equality is the fold's, not a no-op's


def test_a_norm_producer_keeps_the_function():
    torch.manual_seed(0)
    norm = nn.RMSNorm(24)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    _check(norm, [nn.Linear(24, 8), nn.Linear(24, 4)])


def test_a_norm_with_an_offset_keeps_the_function():
    torch.manual_seed(1)
    _check(OffsetRMSNorm(24), [nn.Linear(24, 8)], offset=1.0)


def test_a_linear_producer_with_a_bias_keeps_the_function():
    torch.manual_seed(2)
    _check(nn.Linear(12, 24), [nn.Linear(24, 8, bias=False)])


def test_can_fold_needs_matching_shapes():
    assert can_fold(nn.RMSNorm(8), [nn.Linear(8, 3), nn.Linear(8, 5)])
    assert can_fold(nn.Linear(4, 8), [nn.Linear(8, 3)])
    assert not can_fold(nn.Linear(4, 6), [nn.Linear(8, 3)])
    assert not can_fold(nn.RMSNorm(8), [nn.Linear(8, 3), nn.Linear(6, 3)])
    assert not can_fold(nn.RMSNorm(8), [])
    assert not can_fold(nn.RMSNorm(8, elementwise_affine=False), [nn.Linear(8, 3)])
    assert not can_fold(None, [nn.Linear(8, 3)])
