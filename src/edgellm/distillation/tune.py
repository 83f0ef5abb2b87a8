"""``finetune_lm(model, data, TuneConfig)``: fine-tune a causal LM for a task, on its completions only.

The examples (``examples.py``: chats through the model's chat template, or prompt/completion
pairs) train LoRA adapters (``lora.py``; ``rank=0`` trains every weight) with the loss on the
completion tokens alone. With a teacher, L = α·CE + (1−α)·T²·KL(teacher ‖ student) on the same
tokens, so a fine-tuned fp32 model can teach its own pruned copy. The optimizer loop is the
one ``distill`` runs (``loop.train_loop``: progress, JSONL logs, resume, Ctrl-C checkpoints),
and the output folder has the same ``distill/`` logs and curves. Logits are computed only at
the completion positions (the LM head is the largest matmul of a small model's step).
The output is the merged model as a plain HF folder, or with ``merge=False`` the adapter
folder (``adapter_config.json`` naming the base model) plus the tokenizer. Deliberately absent:
generation-based validation (``edgellm eval --task`` scores the result), sequence packing.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..fileio import check_output
from ..models import Loaded, load
from . import checkpoint as ckpt
from .examples import ExampleData, collate, example_data
from .lora import TuneConfig, attach_lora
from .losses import IGNORE, kd_terms
from .loop import train_loop
from .plots import write_outputs
from .students import check_compatible, task_of
from .trainer import DistillResult


def _mixed_precision(cfg: TuneConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def completion_logits(model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits ``[N, V]``, targets ``[N]``) at the N positions whose next token is a completion token.

    The LM head runs on those positions only, except where the model post-processes its logits
    (a soft cap, a logit scale) or is wrapped for several processes: then the full forward.

    >>> z, y = completion_logits(model, *collate(batch, pad_id))                     # doctest: +SKIP
    """
    target = labels[:, 1:]
    sel = target != IGNORE
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    simple = (head is not None and hasattr(base, "get_decoder") and not getattr(cfg, "final_logit_softcapping", None)
              and getattr(cfg, "logit_scale", None) is None and not isinstance(model, torch.nn.parallel.DistributedDataParallel))
    if simple:
        hidden = base.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return head(hidden[:, :-1][sel]), target[sel]
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][sel], target[sel]


class _TaskRunner:
    """Micro-batches of examples, the completion-only loss (KD with a teacher), and validation."""

    def __init__(self, cfg: TuneConfig, alpha: float, acc, model, teacher, ds: ExampleData, pad_id: int):
        self.cfg, self.alpha, self.acc, self.model, self.teacher, self.ds, self.pad = cfg, alpha, acc, model, teacher, ds, pad_id

    def _batch(self, rows):
        return [t.to(self.acc.device) for t in collate(rows, self.pad)]

    def loss(self, k: int):
        idx = self.ds.batch_indices(k, self.cfg.batch_size, self.cfg.seed)
        ids, mask, labels = self._batch([self.ds.train[i] for i in idx])
        z_s, y = completion_logits(self.model, ids, mask, labels)
        z_t = None
        if self.teacher is not None and self.alpha < 1:
            with torch.no_grad():
                z_t = completion_logits(self.teacher.model, ids, mask, labels)[0]
        total, hard, soft = kd_terms(z_s, z_t, y, self.alpha, self.cfg.temperature)
        return total, (float(total.detach()), float(hard.detach()), float(soft.detach())), int(y.numel()), len(idx)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean NLL of the completion tokens, their top-1 accuracy, and the share of examples whose every
        completion token is the top-1 (teacher-forced exact match), summed over processes."""
        self.model.eval()
        rank, nproc = self.acc.process_index, self.acc.num_processes
        sums = torch.zeros(5, dtype=torch.float64)
        val = self.ds.val[rank::nproc]
        for i in range(0, len(val), self.cfg.batch_size):
            ids, mask, labels = self._batch(val[i : i + self.cfg.batch_size])
            with self.acc.autocast():
                z, y = completion_logits(self.model, ids, mask, labels)
            z = z.float()
            right = z.argmax(-1) == y
            owner = (labels[:, 1:] != IGNORE).nonzero()[:, 0]       # the example each selected position belongs to
            wrong_per_ex = torch.zeros(ids.shape[0], device=z.device).index_add_(0, owner, (~right).float())
            sums += torch.tensor([torch.nn.functional.cross_entropy(z, y, reduction="sum").item(), y.numel(),
                                  right.sum().item(), (wrong_per_ex == 0).sum().item(), ids.shape[0]], dtype=torch.float64)
        sums = self.acc.reduce(sums.to(self.acc.device), reduction="sum").cpu()
        self.model.train()
        if sums[1] == 0:
            return {}
        return {"val_nll": float(sums[0] / sums[1]), "val_token_accuracy": float(sums[2] / sums[1]),
                "val_exact": float(sums[3] / sums[4]), "val_rows": int(sums[4])}


def finetune_lm(model, data, cfg: TuneConfig | None = None, out=None, *, teacher=None, eval_data=None, resume=None,
                run_dir=None, progress: bool = True, force: bool = False, on_step=None) -> DistillResult:
    """Fine-tune causal LM *model* on task examples (JSONL path or list of dicts); returns a ``DistillResult``.

    The trained model (adapters merged unless ``cfg.merge`` is False) is in ``.student``; *out*
    is the folder written; *teacher* adds the KD term; *resume* is a checkpoint (or ``<out>.run``).

    >>> r = finetune_lm("smollm2-135m", "out/smart_home/train.jsonl", TuneConfig(epochs=1), out="out/ft")  # doctest: +SKIP
    >>> r.evals[-1]["val_exact"]                                                                          # doctest: +SKIP
    """
    from accelerate import Accelerator

    cfg = cfg or TuneConfig()
    t_start = time.time()
    student = model if isinstance(model, Loaded) else load(model, task="causal-lm")
    if task_of(student.model) != "causal-lm":
        raise EdgeLLMError(f"finetune_lm trains causal LMs; '{student.meta.name}' is a {task_of(student.model)} model",
                           "use --task classification for an encoder with a label head")
    if teacher is not None and not isinstance(teacher, Loaded):
        teacher = load(teacher, task="causal-lm")
    alpha = cfg.alpha if cfg.alpha is not None else (0.5 if teacher is not None else 1.0)
    if teacher is None and alpha < 1:
        raise EdgeLLMError(f"alpha={alpha} needs a teacher", "pass --teacher, or leave alpha at 1")
    if teacher is not None:
        if teacher.model is student.model:
            teacher = Loaded(copy.deepcopy(student.model), student.tokenizer, student.meta)
        check_compatible(teacher, student, "causal-lm")
        if alpha == 1:
            raise EdgeLLMError("a teacher with alpha=1 is never used", "set --alpha below 1 (e.g. 0.5), or drop --teacher")
    tok = student.tokenizer
    if tok is None:
        raise EdgeLLMError("the model has no tokenizer", "pass a model folder with a tokenizer")
    ds = example_data(tok, data, cfg.max_length, eval_data, val_rows=cfg.val_rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    acc = Accelerator(mixed_precision=_mixed_precision(cfg), cpu=not torch.cuda.is_available())
    nproc = acc.num_processes
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(ds.train) / (cfg.batch_size * cfg.grad_accum * nproc)))
    cfg = cfg.replace(steps=steps, alpha=alpha)
    smodel = student.model
    parts = {"config": {k: v for k, v in cfg.to_dict().items() if k not in ckpt.NOT_FINGERPRINTED + ("merge",)},
             "teacher": None if teacher is None else [teacher.meta.source, teacher.meta.n_params, ckpt.weights_checksum(teacher.model)],
             "student": [student.meta.n_params, ckpt.weights_checksum(smodel)], "data": ds.fingerprint, "processes": nproc}
    fp = ckpt.fingerprint(parts)
    out = Path(out) if out else None
    if out is not None:
        paths = [data, eval_data] + ([teacher.meta.source] if teacher is not None else [])
        check_output(out, force or resume is not None, inputs=[student.meta.source] +
                     [p for p in paths if isinstance(p, (str, Path))])
    torch.manual_seed(cfg.seed)
    if cfg.rank:
        smodel.requires_grad_(False)
        trainable = attach_lora(smodel, cfg)
    else:
        trainable = smodel.requires_grad_(True)
    trainable.train()
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prepared, optimizer = acc.prepare(trainable, optimizer)
    if teacher is not None:
        teacher.model.eval().requires_grad_(False).to(acc.device)
    run_dir = Path(run_dir) if run_dir else (out.with_name(out.name + ".run") if out else None)
    runner = _TaskRunner(cfg, alpha, acc, prepared, teacher, ds, pad_id)
    run = train_loop(cfg, acc, prepared, trainable, optimizer, params, runner, fp=fp, parts=parts, run_dir=run_dir,
                     resume=resume, progress=progress, on_step=on_step,
                     desc="finetune+kd causal-lm" if teacher else "finetune causal-lm")
    logs = run.logs
    result = DistillResult(out=None, steps=run.steps, tokens_seen=run.tokens_seen, examples_seen=run.examples_seen,
                           wall_seconds=run.wall_seconds,
                           final_loss=logs["train.jsonl"][-1]["loss"] if logs["train.jsonl"] else None,
                           evals=logs["eval.jsonl"], train_log=logs["train.jsonl"], checkpoint=run.checkpoint,
                           interrupted=run.interrupted, task="causal-lm", config=cfg.to_dict(), student=student,
                           is_main=acc.is_main_process)
    if run.interrupted:
        return result
    trained = acc.unwrap_model(prepared).eval()
    save = None
    if cfg.rank and cfg.merge:
        trained = trained.merge_and_unload()
    elif cfg.rank:
        trained.peft_config["default"].base_model_name_or_path = student.meta.source
        save = trained.save_pretrained
    result.student = Loaded(trained, tok, student.meta)
    if out is not None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            result.plot = write_outputs(result.student, out, logs, result, force=force or resume is not None,
                                        teacher=teacher.meta.name if teacher else None,
                                        total_seconds=time.time() - t_start, save=save)
            result.out = str(out)
            if run_dir is not None and run_dir.exists():
                ckpt.discard(run_dir)           # renamed away first: a kill never leaves half a checkpoint
    return result
