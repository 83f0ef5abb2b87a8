"""The optimizer loop every training run shares: ``distill``, ``finetune`` and ``finetune_lm``.

``train_loop`` runs ``cfg.steps`` optimizer steps of a prepared (Accelerate) model: per step the
learning rate from ``lr_at`` (a pure function of the step), ``grad_accum`` micro-batches from
the *runner* (``runner.loss(k)`` for global micro-batch *k*; ``runner.evaluate()`` for the
validation metrics), gradient clipping, a tqdm bar, the JSONL records (``train.jsonl`` every
step, ``eval.jsonl`` every ``eval_every`` steps and at the end), checkpoints every
``save_every`` steps, resume from a checkpoint of the same run (``checkpoint.py``), and Ctrl-C,
which saves a checkpoint and returns with ``interrupted=True``. What the model is, how a
micro-batch is built and what is written at the end belong to the callers. Deliberately
absent: saving the final model (the callers do, atomically) and any notion of a teacher.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import lr_at


@dataclass
class LoopOutcome:
    steps: int
    tokens_seen: int
    examples_seen: int
    wall_seconds: float                      # training time, over every resumed segment
    logs: dict = field(default_factory=dict)   # {"train.jsonl": [...], "eval.jsonl": [...]}
    interrupted: bool = False
    checkpoint: str | None = None


def train_loop(cfg, acc, model, container, optimizer, params, runner, *, fp: str, parts: dict, run_dir=None,
               resume=None, progress: bool = True, on_step=None, desc: str = "train") -> LoopOutcome:
    """Train *model* (``acc.prepare``-d; *container* is the unwrapped module checkpoints hold) for ``cfg.steps``.

    *cfg* needs ``steps, grad_accum, max_grad_norm, eval_every, save_every`` and what ``lr_at``
    reads; *runner* has ``loss(k) -> (loss, (total, hard, soft), tokens, examples)`` and
    ``evaluate() -> dict``. *fp*/*parts* identify the run (a checkpoint with another *fp* is
    refused). *on_step(step, record)* is called after each optimizer step.

    >>> out = train_loop(cfg, acc, model, model, opt, params, runner, fp=fp, parts=parts)   # doctest: +SKIP
    >>> out.logs["train.jsonl"][-1]["loss"]                                                 # doctest: +SKIP
    """
    rank, nproc = acc.process_index, acc.num_processes
    run_dir = Path(run_dir) if run_dir else None
    step, logs, state = 0, {"train.jsonl": [], "eval.jsonl": []}, {}
    if resume is not None:
        state, logs = ckpt.load_checkpoint(resume, fp, parts, container, optimizer, acc)
        step = state["step"]
        ckpt.rng_restore(state["rng"])
    tokens_seen = state.get("tokens_seen", 0)
    examples_seen = state.get("examples_seen", 0)
    elapsed_before = state.get("wall_seconds", 0.0)
    if step == 0 and not logs["eval.jsonl"]:
        logs["eval.jsonl"].append({"step": 0, **runner.evaluate()})
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress or not acc.is_main_process, unit="step")
    interrupted, saved, t0 = False, None, time.time()
    rng = None
    save_state = lambda: {"fingerprint": fp, "fingerprint_parts": parts, "tokens_seen": tokens_seen,  # noqa: E731
                          "examples_seen": examples_seen, "wall_seconds": elapsed_before + time.time() - t0,
                          "config": cfg.to_dict()}
    try:
        while step < cfg.steps:
            rng = ckpt.rng_snapshot()
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            sums = torch.zeros(4)
            n_ex = 0
            for micro in range(cfg.grad_accum):
                k = (step * cfg.grad_accum + micro) * nproc + rank
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else acc.no_sync(model)
                with sync:
                    with acc.autocast():
                        loss, terms, n_tok, n_ex = runner.loss(k)
                    acc.backward(loss / cfg.grad_accum)
                sums += torch.tensor([*terms, 0.0]) / cfg.grad_accum
                sums[3] += n_tok
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rng = None                       # the step is done: a Ctrl-C from here on saves the RNG as it is now
            red = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
            tokens_seen += int(red[3])
            examples_seen += n_ex * cfg.grad_accum * nproc
            rec = {"step": step, "loss": float(red[0] / nproc), "hard": float(red[1] / nproc),
                   "soft": float(red[2] / nproc), "lr": lr, "tokens_seen": tokens_seen,
                   "seconds": round(elapsed_before + time.time() - t0, 2)}
            logs["train.jsonl"].append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
            if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
                logs["eval.jsonl"].append({"step": step, "tokens_seen": tokens_seen, **runner.evaluate()})
                bar.write(json.dumps(logs["eval.jsonl"][-1])) if progress and acc.is_main_process else None
            if run_dir and cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                saved = ckpt.save_checkpoint(run_dir, step, container, optimizer, ckpt.rng_snapshot(), save_state(), logs, acc)
            if on_step is not None:
                on_step(step, rec)
    except KeyboardInterrupt:
        interrupted = True
        optimizer.zero_grad(set_to_none=True)
        if run_dir is None:
            raise
        rng = rng if rng is not None else ckpt.rng_snapshot()     # mid-step: the RNG at the step's start
        saved = ckpt.save_checkpoint(run_dir, step, container, optimizer, rng, save_state(), logs, acc)
        if acc.is_main_process:
            print(f"\ninterrupted at step {step}: checkpoint saved to {saved} (continue with --resume {saved})")
    finally:
        bar.close()
    return LoopOutcome(steps=step, tokens_seen=tokens_seen, examples_seen=examples_seen,
                       wall_seconds=elapsed_before + time.time() - t0, logs=logs, interrupted=interrupted,
                       checkpoint=str(saved) if saved else None)
