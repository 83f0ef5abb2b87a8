"""KD loss against hand computation; config validation; students; projections; fake quant."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm.distillation import DistillConfig, kd_loss, keep_evenly, soft_loss, topk_soft_loss
from edgellm.distillation.config import lr_at, parse_pairs
from edgellm.distillation.fakequant import fake_quantize
from edgellm.distillation.losses import hidden_state_loss
from edgellm.errors import EdgeLLMError

Z_S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
Z_T = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]])
Y = torch.tensor([0, 2])


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [x / sum(e) for x in e]


def _hand(alpha, T):
    """L = α·CE + (1−α)·T²·KL(p_t‖q_s), written out with math, not torch."""
    ce = kl = 0.0
    for zs, zt, y in zip(Z_S.tolist(), Z_T.tolist(), Y.tolist()):
        q1 = _softmax(zs, 1.0)
        ce += -math.log(q1[y])
        p, q = _softmax(zt, T), _softmax(zs, T)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    n = len(Y)
    return alpha * ce / n + (1 - alpha) * T * T * kl / n


@pytest.mark.parametrize("alpha,T", [(0.0, 1.0), (1.0, 1.0), (0.0, 2.5), (0.3, 2.0), (0.5, 1.0)])
def test_kd_loss_matches_hand_computation(alpha, T):
    assert kd_loss(Z_S, Z_T, Y, alpha, T).item() == pytest.approx(_hand(alpha, T), rel=1e-6)


def test_t1_is_the_briefs_formula():
    # T = 1: α·CE + (1−α)·KL exactly, with torch's own kl_div as the reference
    ce = torch.nn.functional.cross_entropy(Z_S, Y)
    kl = torch.nn.functional.kl_div(Z_S.log_softmax(-1), Z_T.log_softmax(-1), log_target=True, reduction="batchmean")
    assert kd_loss(Z_S, Z_T, Y, 0.25, 1.0).item() == pytest.approx((0.25 * ce + 0.75 * kl).item(), rel=1e-6)


def test_alpha_one_ignores_teacher_and_ignore_index():
    assert kd_loss(Z_S, None, Y, 1.0, 3.0).item() == pytest.approx(_hand(1.0, 1.0))
    y = torch.tensor([0, -100])
    assert kd_loss(Z_S, Z_T, y, 1.0).item() == pytest.approx(-math.log(_softmax(Z_S[0].tolist(), 1)[0]))
    # soft term skips ignored positions too
    only_first = soft_loss(Z_S[:1], Z_T[:1], 2.0).item()
    assert soft_loss(Z_S, Z_T, 2.0, labels=y).item() == pytest.approx(only_first, rel=1e-6)


def test_topk_with_full_k_equals_full_kl_and_truncation_changes_it():
    torch.manual_seed(0)
    zs, zt = torch.randn(3, 5, 50), torch.randn(3, 5, 50)
    v, i = zt.topk(50, -1)
    assert topk_soft_loss(zs, v, i, 2.0).item() == pytest.approx(soft_loss(zs, zt, 2.0).item(), rel=1e-5)
    v8, i8 = zt.topk(8, -1)
    assert topk_soft_loss(zs, v8, i8, 2.0).item() != pytest.approx(soft_loss(zs, zt, 2.0).item(), rel=1e-3)


def test_soft_loss_shape_mismatch_is_a_clear_error():
    with pytest.raises(EdgeLLMError, match="share the vocabulary"):
        soft_loss(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("kw,match", [({"alpha": -0.1}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"temperature": 0}, "temperature"),
                                      ({"temperature": -1.0}, "temperature"), ({"steps": 0}, "steps"),
                                      ({"hidden_loss": "3-7"}, "hidden_loss"), ({"fake_quant_bits": 1}, "fake_quant_bits")])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(EdgeLLMError, match=match):
        DistillConfig(**kw)


@settings(max_examples=40, deadline=None)
@given(st.floats(0, 1), st.floats(0.05, 10))
def test_config_accepts_valid_alpha_and_t(alpha, T):
    cfg = DistillConfig(alpha=alpha, temperature=T)
    assert cfg.alpha == alpha and cfg.temperature == T


def test_pairs_and_lr_schedule():
    assert parse_pairs("1:2,3:5") == ((1, 2), (3, 5)) == DistillConfig(hidden_loss=[[1, 2], [3, 5]]).hidden_loss
    cfg = DistillConfig(lr=1.0, warmup=4, steps=14, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 0.1


def test_keep_evenly_keeps_first_and_last():
    assert keep_evenly(30, 15)[0] == 0 and keep_evenly(30, 15)[-1] == 29 and len(keep_evenly(30, 15)) == 15
    assert keep_evenly(6, 3) == [0, 3, 5]
    with pytest.raises(EdgeLLMError):
        keep_evenly(6, 7)


def test_hidden_projection_shapes_and_loss():
    proj = torch.nn.Linear(64, 96, bias=False)
    hs, ht = torch.randn(2, 5, 64), torch.randn(2, 5, 96)
    assert proj(hs).shape == ht.shape
    loss = hidden_state_loss(hs, ht, proj)
    assert loss.item() == pytest.approx(((proj(hs) - ht) ** 2).mean().item(), rel=1e-6)
    loss.backward()
    assert proj.weight.grad.shape == (96, 64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    want = (((proj(hs) - ht) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert hidden_state_loss(hs, ht, proj, mask).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(EdgeLLMError, match="projection"):
        hidden_state_loss(hs, ht)


def test_fake_quantize_grid():
    torch.manual_seed(0)
    W = torch.randn(8, 64)
    Q = fake_quantize(W, 4, 32)
    for g, w in zip(Q.view(8, 2, 32).unbind(1), W.view(8, 2, 32).unbind(1)):
        scale = w.abs().amax(-1, keepdim=True) / 8          # symmetric 4-bit: codes -8..7 around 0
        k = g / scale
        assert torch.allclose(k, k.round(), atol=1e-2) and k.abs().max() <= 8.01   # scales are fp16
        assert (g - w).abs().max() <= scale.max() / 2 * 1.01
    assert torch.equal(fake_quantize(Q, 4, 32), Q)           # idempotent: already on the grid
