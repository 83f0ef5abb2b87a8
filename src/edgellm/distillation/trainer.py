"""The distillation loop: ``distill(teacher, student, data, cfg)`` and ``finetune(model, data, cfg)``.

One loop for causal LMs (token-level KD on next-token distributions, optional hidden-state
MSE through learned projections, optional teacher top-k cache) and for sequence
classifiers (KD on class logits). Fine-tuning is the same loop with α = 1 and no teacher.

The engine is HF Accelerate: the trainable module is ``accelerator.prepare``-d, so the same
code runs on the CPU, one GPU, or several processes under ``accelerate launch`` (DDP; each
process reads interleaved micro-batches, losses and eval sums are reduced across processes).
The optimizer loop (gradient accumulation, cosine LR with warm-up, a tqdm bar with ETA, eval
every N steps to JSONL, checkpoints every N steps, Ctrl-C saves a checkpoint and returns
cleanly) is ``loop.train_loop``, shared with ``finetune_lm``; bf16 autocast on GPUs that
support it; a PNG of the curves at the end. The output is a plain HF
folder (``from_pretrained``), with the logs and the PNG in its ``distill/`` subfolder.
Deliberately absent: FSDP/DeepSpeed configs, and saving the hidden-state projections
(they only serve training).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..calibrate import find_blocks
from ..errors import EdgeLLMError
from ..fileio import check_output
from ..results import Result
from ..models import Loaded, load
from . import checkpoint as ckpt
from . import fakequant
from .batches import ClassData, LMData, TopKCache, class_data, lm_data
from .config import FINETUNE, DistillConfig
from .loop import train_loop
from .losses import hidden_state_loss, kd_terms
from .plots import write_outputs
from .students import check_compatible, task_of


@dataclass
class DistillResult(Result):
    out: str | None
    steps: int
    tokens_seen: int
    examples_seen: int
    wall_seconds: float
    final_loss: float | None
    evals: list = field(default_factory=list)
    train_log: list = field(default_factory=list)
    plot: str | None = None
    checkpoint: str | None = None
    interrupted: bool = False
    task: str = ""
    config: dict = field(default_factory=dict)
    student: Loaded | None = None
    is_main: bool = True            # False in the non-main processes of a multi-process run

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("student", "train_log", "is_main")}
        d["train_steps_logged"] = len(self.train_log)
        return d


class _Trainable(nn.Module):
    """The student plus the hidden-state projections: one module for DDP and checkpoints.

    The projections run inside ``forward`` so that DDP sees (and all-reduces) their gradients.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleDict):
        super().__init__()
        self.student, self.projections = student, projections

    def forward(self, pairs=(), **kw):
        out = self.student(**kw, output_hidden_states=bool(pairs))
        return out, {f"{s}_{t}": self.projections[f"{s}_{t}"](out.hidden_states[s + 1]) for s, t in pairs}


def _as_loaded(spec, task: str | None) -> Loaded:
    if spec is None or isinstance(spec, Loaded):
        return spec
    return load(spec, **({"task": task} if task else {}))


def _projections(teacher, student, pairs) -> nn.ModuleDict:
    projs = nn.ModuleDict()
    if not pairs:
        return projs
    ns, nt = len(find_blocks(student)[1]), len(find_blocks(teacher)[1])
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    for s, t in pairs:
        if s >= ns or t >= nt:
            raise EdgeLLMError(f"hidden_loss pair {s}:{t} is out of range (student {ns} blocks, teacher {nt})",
                               f"use student blocks 0..{ns - 1} and teacher blocks 0..{nt - 1}")
        projs[f"{s}_{t}"] = nn.Linear(ds, dt, bias=False) if ds != dt else nn.Identity()
    return projs


def _mixed_precision(cfg: DistillConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def distill(teacher, student, data, cfg: DistillConfig | None = None, out=None, resume=None, *, eval_data=None,
            task: str | None = None, run_dir=None, cache_dir=None, progress: bool = True, force: bool = False,
            on_step=None) -> DistillResult:
    """Train *student* to match *teacher* on *data*; returns a ``DistillResult`` (student in ``.student``).

    *teacher*/*student*: ``Loaded`` records or specs. *data*: a text file or token tensor (LM),
    a TSV file or list of ``LabeledText`` (classifier). *out*: HF folder to write. *resume*: a
    checkpoint folder (or the ``<out>.run`` folder) of this same run. *on_step(step, record)* is
    called after each optimizer step.

    >>> s = student_from_teacher("smollm2-135m", keep_layers=15)                            # doctest: +SKIP
    >>> r = distill("smollm2-135m", s, "wikitext-2/wiki.valid.tokens", DistillConfig(steps=300), out="out/s15")  # doctest: +SKIP
    """
    from accelerate import Accelerator

    cfg = cfg or DistillConfig()
    t_start = time.time()
    student = _as_loaded(student, task)
    task = task_of(student.model)
    teacher = _as_loaded(teacher, task)
    if teacher is None and cfg.alpha < 1:
        raise EdgeLLMError(f"alpha={cfg.alpha} needs a teacher", "pass a teacher, or alpha=1 to train on labels only")
    if teacher is not None and cfg.alpha == 1 and not cfg.hidden_loss:
        teacher = None                                   # hard labels only: the teacher is never run
    if teacher is not None:
        if teacher is student or teacher.model is student.model:  # self-distillation: freeze a snapshot
            teacher = Loaded(copy.deepcopy(student.model), student.tokenizer, student.meta)
        check_compatible(teacher, student, task)
        if task_of(teacher.model) != task:
            raise EdgeLLMError(f"the teacher is a {task_of(teacher.model)} model, the student a {task} model",
                               "load both with the same --task")
    tok = student.tokenizer
    if tok is None:
        raise EdgeLLMError("the student has no tokenizer", "pass a model folder with a tokenizer")
    ds = lm_data(tok, data, cfg.seq_len, cfg.val_tokens) if task == "causal-lm" else class_data(data, eval_data, cfg.val_rows)
    if isinstance(ds, ClassData) and ds.num_labels > student.model.config.num_labels:
        raise EdgeLLMError(f"the data has {ds.num_labels} labels, the model {student.model.config.num_labels}",
                           "load the model with the right number of labels")
    if cfg.hidden_loss and teacher is None:
        raise EdgeLLMError("hidden_loss needs a teacher", "pass a teacher")

    acc = Accelerator(mixed_precision=_mixed_precision(cfg), cpu=not torch.cuda.is_available())
    nproc = acc.num_processes
    smodel = student.model
    smodel.requires_grad_(True)          # a student copied from a frozen teacher starts frozen
    if cfg.freeze_embeddings:
        smodel.get_input_embeddings().requires_grad_(False)
    parts = {"config": {k: v for k, v in cfg.to_dict().items() if k not in ckpt.NOT_FINGERPRINTED},
             "teacher": None if teacher is None else [teacher.meta.source, teacher.meta.n_params, ckpt.weights_checksum(teacher.model)],
             "student": [student.meta.n_params, ckpt.weights_checksum(smodel)], "data": ds.fingerprint, "processes": nproc}
    fp = ckpt.fingerprint(parts)
    torch.manual_seed(cfg.seed)
    projs = _projections(teacher.model, smodel, cfg.hidden_loss) if teacher is not None else nn.ModuleDict()
    if cfg.fake_quant_bits or cfg.keep_sparsity:
        fakequant.attach(smodel, cfg.fake_quant_bits, cfg.fake_quant_group, cfg.keep_sparsity)
    container = _Trainable(smodel, projs)
    container.train()
    params = [p for p in container.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = acc.prepare(container, optimizer)
    if teacher is not None:
        teacher.model.eval().requires_grad_(False).to(acc.device)

    out = Path(out) if out else None
    if out is not None:     # never an input, never something edgellm did not write (fileio.check_output)
        paths = [data, eval_data] + ([teacher.meta.source] if teacher is not None else [])
        check_output(out, force or resume is not None, inputs=[student.meta.source] +
                     [p for p in paths if isinstance(p, (str, Path))])
    run_dir = Path(run_dir) if run_dir else (out.with_name(out.name + ".run") if out else None)
    cache = None
    if teacher is not None and cfg.topk_cache and task == "causal-lm":
        cache = TopKCache(cfg.topk_cache, ckpt.fingerprint({"t": parts["teacher"], "d": ds.fingerprint, "k": cfg.topk_cache}),
                          cache_dir)
    runner = _Runner(cfg, acc, model, container, teacher, ds, tok, task, cache)
    run = train_loop(cfg, acc, model, container, optimizer, params, runner, fp=fp, parts=parts, run_dir=run_dir,
                     resume=resume, progress=progress, on_step=on_step,
                     desc=f"distill {task}" if teacher else f"train {task}")
    logs = run.logs
    result = DistillResult(out=None, steps=run.steps, tokens_seen=run.tokens_seen, examples_seen=run.examples_seen,
                           wall_seconds=run.wall_seconds,
                           final_loss=logs["train.jsonl"][-1]["loss"] if logs["train.jsonl"] else None,
                           evals=logs["eval.jsonl"], train_log=logs["train.jsonl"], checkpoint=run.checkpoint,
                           interrupted=run.interrupted, task=task, config=cfg.to_dict(), student=student,
                           is_main=acc.is_main_process)
    if run.interrupted:
        return result
    smodel = acc.unwrap_model(model).student
    fakequant.finalize(smodel)
    smodel.eval()
    if out is not None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            result.plot = write_outputs(student, out, logs, result, force=force or resume is not None,
                                        teacher=teacher.meta.name if teacher else None, total_seconds=time.time() - t_start)
            result.out = str(out)
            if run_dir is not None and run_dir.exists():
                ckpt.discard(run_dir)           # renamed away first: a kill never leaves half a checkpoint
    return result


def finetune(model, data, cfg: DistillConfig | None = None, out=None, **kw) -> DistillResult:
    """Train *model* on labels only (α = 1, no teacher), e.g. a 2-label head on SST-2.

    >>> m = load("minilm-l6", task="classification")                                   # doctest: +SKIP
    >>> r = finetune(m, "sst-2/train.tsv", DistillConfig(steps=300, lr=1e-4), out="out/minilm-sst2",
    ...              eval_data="sst-2/dev.tsv")                                          # doctest: +SKIP
    """
    cfg = (cfg or DistillConfig(**FINETUNE)).replace(alpha=1.0, hidden_loss=())
    return distill(None, model, data, cfg, out, **kw)


class _Runner:
    """Builds micro-batches and computes losses / eval metrics for one task."""

    def __init__(self, cfg, acc, model, container, teacher, ds, tok, task, cache):
        self.cfg, self.acc, self.model, self.container = cfg, acc, model, container
        self.teacher, self.ds, self.tok, self.task, self.cache = teacher, ds, tok, task, cache
        self.teacher_cls: dict[int, torch.Tensor] = {}

    # -- training --------------------------------------------------------------------------
    def loss(self, k: int):
        idx = self.ds.batch_indices(k, self.cfg.batch_size, self.cfg.seed)
        return self._lm_loss(idx) if isinstance(self.ds, LMData) else self._cls_loss(idx)

    def _lm_loss(self, idx):
        cfg, dev = self.cfg, self.acc.device
        ids = self.ds.train[idx].to(dev)                               # [B, L]
        labels = ids[:, 1:]
        pairs = cfg.hidden_loss
        out, projected = self.model(pairs=pairs, input_ids=ids, use_cache=False)
        z_s = out.logits[:, :-1]
        t_out, top = None, None
        if self.teacher is not None and (pairs or self.cache is None):
            with torch.no_grad():
                t_out = self.teacher.model(input_ids=ids, output_hidden_states=bool(pairs), use_cache=False)
        if self.teacher is not None and self.cache is not None:
            def compute(i):
                if t_out is not None:
                    return t_out.logits[idx.index(i), :-1]
                with torch.no_grad():
                    return self.teacher.model(input_ids=self.ds.train[i : i + 1].to(dev), use_cache=False).logits[0, :-1]
            items = [self.cache.get(i, compute) for i in idx]
            top = (torch.stack([v for v, _ in items]).to(dev), torch.stack([j for _, j in items]).to(dev))
        z_t = t_out.logits[:, :-1] if t_out is not None and top is None else None
        total, hard, soft = kd_terms(z_s, z_t, labels, cfg.alpha, cfg.temperature, top=top)
        if pairs:
            hid = sum(hidden_state_loss(projected[f"{s}_{t}"], t_out.hidden_states[t + 1]) for s, t in pairs) / len(pairs)
            total = total + cfg.hidden_weight * hid
        return total, (float(total.detach()), float(hard.detach()), float(soft.detach())), labels.numel(), len(idx)

    def _encode(self, rows):
        enc = self.tok([r.text for r in rows], padding=True, truncation=True, max_length=self.cfg.max_length,
                       return_tensors="pt")
        return {k: v.to(self.acc.device) for k, v in enc.items()}

    def _cls_loss(self, idx):
        cfg = self.cfg
        rows = [self.ds.train[i] for i in idx]
        enc = self._encode(rows)
        labels = torch.tensor([r.label for r in rows], device=self.acc.device)
        pairs = cfg.hidden_loss
        out, projected = self.model(pairs=pairs, **enc)
        z_t = t_out = None
        if self.teacher is not None:
            missing = [i for i in idx if i not in self.teacher_cls]
            if missing or pairs:
                with torch.no_grad():
                    t_out = self.teacher.model(**enc, output_hidden_states=bool(pairs))
                for j, i in enumerate(idx):
                    self.teacher_cls[i] = t_out.logits[j].float().cpu()
            z_t = torch.stack([self.teacher_cls[i] for i in idx]).to(self.acc.device)
        total, hard, soft = kd_terms(out.logits, z_t, labels, cfg.alpha, cfg.temperature)
        if pairs:
            mask = enc.get("attention_mask")
            hid = sum(hidden_state_loss(projected[f"{s}_{t}"], t_out.hidden_states[t + 1], None, mask)
                      for s, t in pairs) / len(pairs)
            total = total + cfg.hidden_weight * hid
        n_tok = int(enc["attention_mask"].sum()) if "attention_mask" in enc else enc["input_ids"].numel()
        return total, (float(total.detach()), float(hard.detach()), float(soft.detach())), n_tok, len(idx)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation mean NLL / perplexity (LM) or accuracy (classifier), summed over processes."""
        import math

        self.model.eval()
        rank, nproc, bs, dev = self.acc.process_index, self.acc.num_processes, self.cfg.batch_size, self.acc.device
        sums = torch.zeros(3, dtype=torch.float64)
        if isinstance(self.ds, LMData):
            val = self.ds.val[rank::nproc]
            for i in range(0, val.shape[0], bs):
                ids = val[i : i + bs].to(dev)
                with self.acc.autocast():
                    z = self.model(input_ids=ids, use_cache=False)[0].logits[:, :-1].float()
                sums[0] += torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1),
                                                             reduction="sum").item()
                sums[1] += ids[:, 1:].numel()
        else:
            val = self.ds.val[rank::nproc]
            for i in range(0, len(val), 64):
                rows = val[i : i + 64]
                with self.acc.autocast():
                    z = self.model(**self._encode(rows))[0].logits.float()
                y = torch.tensor([r.label for r in rows], device=dev)
                sums[0] += torch.nn.functional.cross_entropy(z, y, reduction="sum").item()
                sums[1] += len(rows)
                sums[2] += (z.argmax(-1) == y).sum().item()
        sums = self.acc.reduce(sums.to(dev), reduction="sum").cpu()
        self.model.train()
        if sums[1] == 0:
            return {}
        nll = float(sums[0] / sums[1])
        if isinstance(self.ds, LMData):
            return {"val_nll": nll, "val_ppl": math.exp(min(nll, 50)), "val_tokens": int(sums[1])}
        return {"val_nll": nll, "val_accuracy": float(sums[2] / sums[1]), "val_rows": int(sums[1])}
