"""``DistillConfig``: every knob of a distillation (or fine-tuning) run, validated on creation.

The same frozen dataclass backs the API, the CLI flags and the ``distill:`` section of a
recipe, so there is one source of defaults. Deliberately absent: model and data choices
(those are arguments of ``distill``) and anything about the output folder. ``FINETUNE`` holds the
values ``finetune`` starts from instead (labels only, so α = 1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..calibconfig import config_field
from ..errors import EdgeLLMError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def parse_pairs(spec) -> tuple[tuple[int, int], ...]:
    """Hidden-loss layer pairs from ``"7:14,14:29"`` or ``[[7, 14], [14, 29]]``: (student block, teacher block).

    >>> parse_pairs("3:7, 6:14")
    ((3, 7), (6, 14))
    """
    if spec is None or spec == "" or spec == ():
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs = []
    for item in items:
        try:
            s, t = (item.split(":") if isinstance(item, str) else item)
            pairs.append((int(s), int(t)))
        except (ValueError, TypeError):
            raise EdgeLLMError(f"hidden_loss pair '{item}' is not 'student_layer:teacher_layer'",
                               "write pairs like 7:14,14:29 (0-based block indices)") from None
    if any(s < 0 or t < 0 for s, t in pairs):
        raise EdgeLLMError(f"hidden_loss pairs {pairs} have a negative layer index", "use 0-based block indices")
    return tuple(pairs)


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of ``distill`` (L = α·L_hard + (1−α)·T²·KL(p_T ‖ q_T); see docs/distillation.md).

    >>> DistillConfig(alpha=0.5, temperature=2.0, steps=300).alpha
    0.5
    """

    alpha: float = config_field(0.5, "weight of the hard-label cross-entropy; 1 − alpha weighs the soft KL")
    temperature: float = config_field(2.0, "T: both distributions are softened by T, the KL term is scaled by T²")
    steps: int = config_field(200, "optimizer steps")
    lr: float = config_field(1e-4, "peak learning rate (AdamW)")
    batch_size: int = config_field(4, "sequences (LM) or sentences (classifier) per micro-batch, per process")
    seq_len: int = config_field(256, "LM window length in tokens")
    grad_accum: int = config_field(1, "micro-batches per optimizer step")
    warmup: int = config_field(10, "linear warm-up steps, then cosine decay to min_lr_ratio·lr")
    min_lr_ratio: float = config_field(0.1, "floor of the cosine decay, as a fraction of lr")
    weight_decay: float = config_field(0.0, "AdamW weight decay")
    max_grad_norm: float = config_field(1.0, "gradient-norm clipping (0 disables it)")
    eval_every: int = config_field(50, "validate every N steps (0 = only at the start and the end)")
    save_every: int = config_field(0, "checkpoint every N steps (0 = only on Ctrl-C)")
    val_tokens: int = config_field(8192, "LM: tokens held out from the end of the training text for validation")
    val_rows: int = config_field(500, "classifier: rows held out when no eval data is given")
    hidden_loss: tuple = config_field((), "student:teacher block pairs for an MSE on hidden states",
                                      metavar="S:T,...")
    hidden_weight: float = config_field(1.0, "weight of the hidden-state term (added on top of the KD loss)")
    topk_cache: int = config_field(0, ">0: keep only the teacher's top-k logits per token (cached per window)")
    fake_quant_bits: int = config_field(0, "recovery: >0 trains through fake-quantized weights (straight-through)")
    fake_quant_group: int = config_field(32, "group size of the fake quantizer (0 = per output row)")
    keep_sparsity: bool = config_field(False, "recovery: weights that are exactly zero at the start stay zero")
    freeze_embeddings: bool = config_field(False, "keep the input embeddings fixed")
    mixed_precision: str = config_field("auto", "auto = bf16 on GPUs that support it, else fp32",
                                        choices=MIXED_PRECISION)
    max_length: int = config_field(128, "classifier: tokens per sentence")
    seed: int = config_field(0, "seed of the data order and of new weights")

    def __post_init__(self):
        object.__setattr__(self, "hidden_loss", parse_pairs(self.hidden_loss))
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise EdgeLLMError(f"alpha must lie in [0, 1] (got {self.alpha})",
                               "alpha weighs the hard-label loss: 0 = soft targets only, 1 = hard labels only")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise EdgeLLMError(f"temperature must be > 0 (got {self.temperature})", "use T = 1 for the plain formula, 2-4 to soften")
        for name in ("steps", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise EdgeLLMError(f"{name} must be ≥ 1 (got {getattr(self, name)})", f"raise {name}")
        if self.seq_len < 2:
            raise EdgeLLMError(f"seq_len must be ≥ 2 (got {self.seq_len})", "use e.g. seq_len=256")
        if not self.lr > 0:
            raise EdgeLLMError(f"lr must be > 0 (got {self.lr})", "use e.g. lr=1e-4")
        for name in ("warmup", "eval_every", "save_every", "val_tokens", "val_rows", "topk_cache", "fake_quant_bits",
                     "fake_quant_group"):
            if int(getattr(self, name)) < 0:
                raise EdgeLLMError(f"{name} must be ≥ 0 (got {getattr(self, name)})", f"fix {name}")
        if self.fake_quant_bits and not 2 <= self.fake_quant_bits <= 8:
            raise EdgeLLMError(f"fake_quant_bits must be 2..8 (got {self.fake_quant_bits})", "use 4 for W4 recovery")
        if self.mixed_precision not in MIXED_PRECISION:
            raise EdgeLLMError(f"mixed_precision '{self.mixed_precision}' is unknown", f"use one of {', '.join(MIXED_PRECISION)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise EdgeLLMError(f"min_lr_ratio must lie in [0, 1] (got {self.min_lr_ratio})", "use e.g. 0.1")
        for name in ("weight_decay", "max_grad_norm", "hidden_weight", "seed"):
            if not getattr(self, name) >= 0:           # also refuses nan
                raise EdgeLLMError(f"{name} must be ≥ 0 (got {getattr(self, name)})", f"fix --{name.replace('_', '-')}")
        if self.max_length < 2:
            raise EdgeLLMError(f"max_length must be ≥ 2 tokens (got {self.max_length})", "use e.g. --max-length 128")

    def replace(self, **changes) -> "DistillConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_loss"] = [list(p) for p in self.hidden_loss]
        return d


# ``finetune`` (labels only) starts from these values instead of the distillation ones
FINETUNE = {"alpha": 1.0, "lr": 5e-5, "batch_size": 32}


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Learning rate for optimizer step *step* (0-based): linear warm-up, then cosine to min_lr_ratio·lr.

    A pure function of the step, so a resumed run follows exactly the same schedule.

    >>> lr_at(0, DistillConfig(lr=1.0, warmup=0, steps=10))
    1.0
    """
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
