"""Distillation losses as plain functions (no modules, no state).

L_KD = α·L_hard + (1−α)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))

* L_hard: the student's cross-entropy on the true labels (next tokens for a causal LM,
  class labels for a classifier), at temperature 1;
* L_soft: KL(teacher ‖ student) on distributions softened by T, mean over predicted
  positions. The T² factor keeps the soft term's gradient on the same scale as the hard
  term when T changes (Hinton et al., 2015). With T = 1 this is exactly the brief's
  L_KD = α·L_hard + (1−α)·L_soft.

``topk_soft_loss`` is the same KL when only the teacher's top-k logits are kept: the teacher
distribution is the softmax over its k largest logits (mass outside them taken as zero), the
student's log-probabilities are the full softmax gathered at those k ids. Deliberately
absent: reverse/Jensen-Shannon divergences and sequence-level KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EdgeLLMError

IGNORE = -100


def _flat(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.shape[-1]).float()


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the student on *labels* (entries equal to -100 are ignored).

    >>> hard_loss(torch.zeros(2, 3), torch.tensor([0, 1])).item() == torch.log(torch.tensor(3.)).item()
    True
    """
    return F.cross_entropy(_flat(student_logits), labels.reshape(-1), ignore_index=IGNORE)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), mean over positions (those with label -100 are skipped).

    >>> soft_loss(torch.zeros(2, 3), torch.zeros(2, 3), 2.0).item()
    0.0
    """
    if student_logits.shape != teacher_logits.shape:
        raise EdgeLLMError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                           f"{tuple(teacher_logits.shape)} differ in shape",
                           "teacher and student must share the vocabulary / label set")
    s = F.log_softmax(_flat(student_logits) / temperature, dim=-1)
    t = F.log_softmax(_flat(teacher_logits) / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)                       # [N] per-position KL(p_t || q_s)
    return _masked_mean(kl, labels) * temperature ** 2


def topk_soft_loss(student_logits: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
                   temperature: float = 1.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``soft_loss`` against a teacher kept as its top-k logits: values/indices ``[..., k]``.

    >>> z = torch.randn(4, 10); v, i = z.topk(10, -1)
    >>> torch.allclose(topk_soft_loss(z, v, i, 2.0), soft_loss(z, z, 2.0), atol=1e-6)
    True
    """
    s = F.log_softmax(_flat(student_logits) / temperature, dim=-1)
    idx = top_indices.reshape(-1, top_indices.shape[-1]).long()
    t = F.log_softmax(top_values.reshape(idx.shape).float() / temperature, dim=-1)
    kl = (t.exp() * (t - s.gather(-1, idx))).sum(-1)
    return _masked_mean(kl, labels) * temperature ** 2


def _masked_mean(per_pos: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        return per_pos.mean()
    keep = labels.reshape(-1) != IGNORE
    return per_pos[keep].sum() / keep.sum().clamp(min=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, alpha: float,
            temperature: float = 1.0) -> torch.Tensor:
    """L = α·CE(z_s, y) + (1−α)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    Logits are ``[..., C]`` and *labels* ``[...]`` (already shifted for a causal LM). With
    ``alpha == 1`` the teacher is not needed and may be None.

    >>> z_s, z_t, y = torch.randn(5, 7), torch.randn(5, 7), torch.randint(0, 7, (5,))
    >>> torch.allclose(kd_loss(z_s, z_t, y, alpha=1.0), hard_loss(z_s, y))
    True
    """
    return kd_terms(student_logits, teacher_logits, labels, alpha, temperature)[0]


def kd_terms(student_logits, teacher_logits, labels, alpha: float, temperature: float = 1.0, top=None):
    """(total, hard, soft) of ``kd_loss``; *top* = (values, indices) replaces *teacher_logits* by its top-k."""
    if not 0.0 <= alpha <= 1.0:
        raise EdgeLLMError(f"alpha must lie in [0, 1] (got {alpha})", "use 0 ≤ alpha ≤ 1")
    if temperature <= 0:
        raise EdgeLLMError(f"temperature must be > 0 (got {temperature})", "use T ≥ 1")
    hard = hard_loss(student_logits, labels)
    if alpha == 1.0:
        return hard, hard, torch.zeros((), device=hard.device)
    if top is not None:
        soft = topk_soft_loss(student_logits, top[0], top[1], temperature, labels)
    elif teacher_logits is not None:
        soft = soft_loss(student_logits, teacher_logits, temperature, labels)
    else:
        raise EdgeLLMError("alpha < 1 needs a teacher", "pass a teacher, or use alpha=1 to train on labels only")
    return alpha * hard + (1 - alpha) * soft, hard, soft


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection=None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between projected student and teacher hidden states ``[B, L, d]``.

    *projection* maps the student width to the teacher width (a learned ``nn.Linear``) when they
    differ; positions where *attention_mask* is 0 are skipped.

    >>> hidden_state_loss(torch.ones(1, 2, 4), torch.ones(1, 2, 4)).item()
    0.0
    """
    h = projection(student_hidden) if projection is not None else student_hidden
    if h.shape != teacher_hidden.shape:
        raise EdgeLLMError(f"hidden states {tuple(h.shape)} vs teacher {tuple(teacher_hidden.shape)} differ",
                           "a projection is needed when the widths differ")
    err = (h.float() - teacher_hidden.float()).pow(2).mean(-1)   # [B, L]
    if attention_mask is None:
        return err.mean()
    m = attention_mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp(min=1)
