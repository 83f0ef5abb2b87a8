"""LoRA for task fine-tuning: ``TuneConfig`` (every knob of ``finetune_lm``) and the adapters through ``peft``.

``lora_targets`` turns ``TuneConfig.targets`` into the module names peft matches (a name
matches a module whose dotted path ends with it): by default every projection role the
family registry names (q, k, v, o, gate, up, down); a target may also be a role name or any
module name suffix, and one that matches no float linear layer is refused. ``attach_lora``
wraps the model (``peft.get_peft_model``); the trainer merges the adapters back
(``merge_and_unload``) or saves them alone. ``rank=0`` trains every weight instead (no peft).
Deliberately absent: QLoRA (adapters over packed quantized layers: fine-tune before
quantizing, or recover with ``distill --fake-quant-bits``), DoRA and other adapter kinds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from ..calibconfig import config_field
from ..errors import EdgeLLMError
from ..families import family_of
from .config import MIXED_PRECISION

PROJECTION_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of ``finetune_lm``: LoRA, the schedule, and the optional teacher's KD weight.

    L = α·CE(completion) + (1−α)·T²·KL(teacher ‖ student) on the completion tokens.

    >>> TuneConfig(rank=8, epochs=2).lora_alpha
    32.0
    """

    rank: int = config_field(16, "LoRA rank (0 = train every weight, no adapters)")
    lora_alpha: float = config_field(32.0, "LoRA scale numerator: the update is (lora_alpha / rank)·B·A")
    lora_dropout: float = config_field(0.05, "dropout on the LoRA input")
    targets: tuple[str, ...] = config_field((), "module to adapt: a role (q, k, v, o, gate, up, down) or a "
                                            "module name suffix; repeatable (none = every projection)")
    merge: bool = config_field(True, "merge the adapters into a plain HF folder (--no-merge: keep the adapter folder)")
    epochs: float = config_field(1.0, "passes over the training examples (when steps = 0)")
    steps: int = config_field(0, "optimizer steps (0 = from epochs)")
    lr: float = config_field(5e-4, "peak learning rate (AdamW)")
    batch_size: int = config_field(16, "examples per micro-batch, per process")
    grad_accum: int = config_field(1, "micro-batches per optimizer step")
    max_length: int = config_field(128, "tokens per example (prompt + completion, cut from the right)")
    warmup: int = config_field(10, "linear warm-up steps, then cosine decay to min_lr_ratio·lr")
    min_lr_ratio: float = config_field(0.1, "floor of the cosine decay, as a fraction of lr")
    weight_decay: float = config_field(0.0, "AdamW weight decay")
    max_grad_norm: float = config_field(1.0, "gradient-norm clipping (0 disables it)")
    eval_every: int = config_field(50, "validate every N steps (0 = only at the start and the end)")
    save_every: int = config_field(0, "checkpoint every N steps (0 = only on Ctrl-C)")
    val_rows: int = config_field(64, "examples held out for validation when no eval data is given "
                                 "(at most a fifth of the set)")
    alpha: float | None = config_field(None, "with --teacher: weight of the hard-label loss, 1 − alpha weighs the "
                                       "soft KL (none = 1 without a teacher, 0.5 with one)")
    temperature: float = config_field(2.0, "with --teacher: T of the soft KL (scaled by T²)")
    mixed_precision: str = config_field("auto", "auto = bf16 on GPUs that support it, else fp32",
                                        choices=MIXED_PRECISION)
    seed: int = config_field(0, "seed of the data order and of the adapters' initial weights")

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets or ()))
        for name in ("rank", "steps", "warmup", "eval_every", "save_every", "val_rows", "seed"):
            if int(getattr(self, name)) < 0:
                raise EdgeLLMError(f"{name} must be ≥ 0 (got {getattr(self, name)})", f"fix --{name.replace('_', '-')}")
        for name in ("batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise EdgeLLMError(f"{name} must be ≥ 1 (got {getattr(self, name)})", f"raise --{name.replace('_', '-')}")
        if self.steps == 0 and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise EdgeLLMError(f"epochs must be > 0 when steps = 0 (got {self.epochs})", "use e.g. --epochs 1")
        if not (self.lr > 0 and self.lora_alpha > 0):
            raise EdgeLLMError(f"lr and lora_alpha must be > 0 (got {self.lr}, {self.lora_alpha})", "use e.g. --lr 5e-4")
        if not 0 <= self.lora_dropout < 1:
            raise EdgeLLMError(f"lora_dropout must lie in [0, 1) (got {self.lora_dropout})", "use e.g. 0.05")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise EdgeLLMError(f"alpha must lie in [0, 1] (got {self.alpha})", "alpha weighs the hard-label loss")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise EdgeLLMError(f"temperature must be > 0 (got {self.temperature})", "use T = 1..4")
        if not 0 <= self.min_lr_ratio <= 1 or not self.weight_decay >= 0 or not self.max_grad_norm >= 0:
            raise EdgeLLMError("min_lr_ratio must lie in [0, 1], weight_decay and max_grad_norm ≥ 0",
                               "fix --min-lr-ratio / --weight-decay / --max-grad-norm")
        if self.max_length < 2:
            raise EdgeLLMError(f"max_length must be ≥ 2 tokens (got {self.max_length})", "use e.g. --max-length 128")
        if self.mixed_precision not in MIXED_PRECISION:
            raise EdgeLLMError(f"mixed_precision '{self.mixed_precision}' is unknown", f"use one of {', '.join(MIXED_PRECISION)}")

    def replace(self, **changes) -> "TuneConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d


def _is_float_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"      # GPT-2's Conv1D: peft adapts it too


def lora_targets(model: nn.Module, targets=()) -> list[str]:
    """The module-name suffixes peft should adapt: *targets* (roles or names) or every projection role.

    >>> lora_targets(load("smollm2-135m").model)                          # doctest: +SKIP
    ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    try:
        spec = family_of(model)
    except EdgeLLMError:
        spec = None
    if not targets:
        if spec is None:
            raise EdgeLLMError(f"model family '{model.config.model_type}' is not in the registry, so its projections "
                               "are unknown",
                               "name the modules to adapt with --targets (e.g. --targets q_proj --targets v_proj)")
        targets = PROJECTION_ROLES
    names = {n: m for n, m in model.named_modules() if n}
    out = []
    for t in targets:
        leaf = t
        if t in PROJECTION_ROLES and spec is not None:
            path = getattr(spec, t)
            if path is None:
                if targets is PROJECTION_ROLES:
                    continue                       # a role the family lacks (GPT-2 has no separate q/k/v)
                raise EdgeLLMError(f"LoRA target role '{t}' does not exist in the {spec.model_type} family",
                                   f"use a module name instead ({', '.join(PROJECTION_ROLES)} are roles)")
            leaf = path.split(".")[-1]
        hits = [m for n, m in names.items() if n == leaf or n.endswith("." + leaf)]
        if not hits:
            raise EdgeLLMError(f"LoRA target '{t}' matches no module of the model",
                               "use a role (q, k, v, o, gate, up, down) or the end of a module name, e.g. q_proj")
        bad = [type(m).__name__ for m in hits if not _is_float_linear(m)]
        if bad:
            raise EdgeLLMError(f"LoRA target '{t}' matches {bad[0]} modules, not float linear layers",
                               "fine-tune before quantizing (or use distill --fake-quant-bits), and target linear layers")
        out.append(leaf)
    return sorted(set(out))


def attach_lora(model: nn.Module, cfg: TuneConfig):
    """*model* wrapped with LoRA adapters on ``lora_targets(model, cfg.targets)`` (only the adapters train).

    >>> peft_model = attach_lora(load("smollm2-135m").model, TuneConfig(rank=8))   # doctest: +SKIP
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise EdgeLLMError("LoRA fine-tuning needs peft", "pip install 'edgellm[finetune]'") from None
    targets = lora_targets(model, cfg.targets)
    lc = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                    bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lc)
