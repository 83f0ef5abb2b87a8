"""Knowledge distillation: L = α·L_hard + (1−α)·T²·KL(p_teacher,T ‖ q_student,T).

``distill(teacher, student, data, DistillConfig(...))`` for causal LMs and classifiers,
``finetune`` (labels only), ``finetune_lm`` (a causal LM on task examples, LoRA, loss on the
completions, optional teacher), ``student_from_teacher`` (keep evenly spaced blocks), recovery
of pruned/quantized students (``fake_quant_bits``, ``keep_sparsity``). See docs/distillation.md.
"""

from .config import DistillConfig
from .losses import hard_loss, hidden_state_loss, kd_loss, soft_loss, topk_soft_loss
from .students import keep_evenly, student_from_teacher
from .lora import TuneConfig
from .trainer import DistillResult, distill, finetune
from .tune import finetune_lm

__all__ = ["DistillConfig", "DistillResult", "distill", "finetune", "finetune_lm", "hard_loss", "hidden_state_loss", "kd_loss",
           "keep_evenly", "soft_loss", "student_from_teacher", "topk_soft_loss", "TuneConfig"]
