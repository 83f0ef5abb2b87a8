"""Quality against the base model on the same data: relative perplexity increase (LMs), accuracy drop
(classifiers), or the drop in task exact match, in points of accuracy (``--task-data``).

LM windows are scored by the one perplexity loop, ``evaluation.perplexity.evaluate_lm``: it resumes
from the NLLs already measured (``done``) and asks a ``stop`` callback after each window, which
rejects a candidate during the screen once its running loss is beyond ``reject_factor × max_loss``.
The full protocol continues on the same windows, so the screen's work is reused. Classifiers are
scored row batch by row batch with the same early rejection. The ``*_summary`` functions turn the
cached per-window NLLs / per-row flags into the reported figures without running anything.
A task (``evaluation/task.py``) is answered example by example, constrained to its schema when it has
one; its loss is the best base model's exact-match accuracy minus the candidate's on the same examples
(0.05 = 5 points), and the screen rejects early only when even the top of the candidate's 95% Wilson
interval is more than ``reject_factor × max_loss`` below the base (a few examples prove little).
Deliberately absent: any other metric (KL, agreement): the export verification measures those.
"""

from __future__ import annotations

import math

from ..evaluation.perplexity import evaluate_lm
from ..evaluation.task import TaskRunner
from ..evaluation.taskdata import wilson


def lm_reference(runtime, windows: list) -> list[float]:
    """The base model's summed NLL of each window (what every candidate is compared against)."""
    return evaluate_lm(runtime, chunks=windows).window_nlls


def lm_quality(runtime, windows: list, base_nlls: list[float], max_loss: float | None, screen_windows: int,
               reject_factor: float = 2.0, done: list[float] | None = None, full: bool = True) -> dict:
    """Relative perplexity increase over the base on the same windows, with early rejection in the screen.

    Windows are scored in order from ``len(done)``; while inside the first *screen_windows*, a running
    loss above ``reject_factor × max_loss`` rejects the candidate (``early_rejected``). With
    ``full=False`` only the screen's windows are scored.

    >>> r = lm_quality(rt, wins, base_nlls, 0.1, screen_windows=4, full=False)   # doctest: +SKIP
    >>> r["n_windows"], r["early_rejected"]                                      # doctest: +SKIP
    (4, False)
    """
    done = list(done or [])
    n_pred = windows[0].numel() - 1
    limit = len(windows) if full else min(screen_windows, len(windows))

    def over(nlls: list[float]) -> bool:
        return max_loss is not None and len(nlls) <= screen_windows and \
            _loss(nlls, base_nlls, n_pred) > reject_factor * max_loss

    if len(done) >= limit:
        return lm_summary(done, base_nlls, n_pred)
    res = evaluate_lm(runtime, chunks=windows[:limit], done=done, stop=over)
    # the check after the last window scored counts too (evaluate_lm asks only while windows remain)
    return lm_summary(res.window_nlls, base_nlls, n_pred, rejected=res.stopped or over(res.window_nlls))


def lm_summary(nlls: list[float], base_nlls: list[float], n_pred: int, rejected: bool = False) -> dict:
    """The reported figures of the windows scored so far (*n_pred* predictions each)."""
    n_tok = n_pred * len(nlls)
    base = sum(base_nlls[: len(nlls)])
    return {"quality_loss": _loss(nlls, base_nlls, n_pred), "perplexity": math.exp(sum(nlls) / n_tok),
            "base_perplexity": math.exp(base / n_tok), "n_tokens": n_tok, "n_windows": len(nlls),
            "early_rejected": rejected, "nlls": list(nlls)}


def _loss(nlls: list[float], base_nlls: list[float], n_pred: int) -> float:
    """exp(mean NLL − mean base NLL) − 1 over the windows scored so far (all *n_pred* predictions long)."""
    k = len(nlls)
    return math.exp((sum(nlls) - sum(base_nlls[:k])) / (k * n_pred)) - 1 if k else 0.0


def correct_flags(runtime, rows, batch_size: int = 32) -> list[bool]:
    """Whether the classifier gets each row right."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        pred = runtime.classify([r.text for r in batch]).argmax(-1).tolist()
        out.extend(p == r.label for p, r in zip(pred, batch))
    return out


def cls_quality(runtime, rows, base_flags: list[bool], max_loss: float | None, screen_rows: int,
                reject_factor: float = 2.0, done: list[bool] | None = None, full: bool = True,
                batch_size: int = 32) -> dict:
    """Relative accuracy drop against the base on the same rows, with early rejection in the screen.

    >>> r = cls_quality(rt, rows, base_flags, 0.05, screen_rows=64, full=False)   # doctest: +SKIP
    >>> r["n_rows"]                                                               # doctest: +SKIP
    64
    """
    flags = list(done or [])
    limit = len(rows) if full else min(screen_rows, len(rows))
    rejected = False
    while len(flags) < limit:
        start = len(flags)
        flags.extend(correct_flags(runtime, rows[start : min(start + batch_size, limit)], batch_size))
        if max_loss is not None and len(flags) <= screen_rows and _acc_loss(flags, base_flags) > reject_factor * max_loss:
            rejected = True
            break
    return cls_summary(flags, base_flags, rejected)


def cls_summary(flags: list[bool], base_flags: list[bool], rejected: bool = False) -> dict:
    """The reported figures of the rows scored so far."""
    n = len(flags)
    return {"quality_loss": _acc_loss(flags, base_flags), "accuracy": sum(flags) / n,
            "base_accuracy": sum(base_flags[:n]) / n, "n_rows": n, "early_rejected": rejected, "flags": list(flags)}


def _acc_loss(flags: list[bool], base_flags: list[bool]) -> float:
    base = sum(base_flags[: len(flags)])
    return (base - sum(flags)) / base if base else 0.0


def task_flags(runtime, task, max_new_tokens: int = 64, start: int = 0, stop: int | None = None) -> list[bool]:
    """Whether the model answers each task example exactly (constrained to the task's schema when it has one)."""
    runner = TaskRunner(runtime, task, constrained=task.schema is not None, max_new_tokens=max_new_tokens)
    return [bool(runner.answer(i)["exact"]) for i in range(start, len(task) if stop is None else stop)]


def task_quality(runtime, task, base_flags: list[bool], max_loss: float | None, screen: int,
                 reject_factor: float = 2.0, done: list[bool] | None = None, full: bool = True,
                 max_new_tokens: int = 64) -> dict:
    """Drop in task exact match against the base (points of accuracy), with interval-based early rejection.

    >>> r = task_quality(rt, task, base_flags, 0.05, screen=10, full=False)   # doctest: +SKIP
    >>> r["n_rows"], r["accuracy"], r["interval"]                             # doctest: +SKIP
    (10, 0.9, (0.596, 0.982))
    """
    flags = list(done or [])
    limit = len(task) if full else min(screen, len(task))
    rejected, runner = False, None
    while len(flags) < limit:
        runner = runner or TaskRunner(runtime, task, constrained=task.schema is not None, max_new_tokens=max_new_tokens)
        flags.append(bool(runner.answer(len(flags))["exact"]))
        if max_loss is not None and len(flags) <= screen and _task_loss_low(flags, base_flags) > reject_factor * max_loss:
            rejected = True
            break
    return task_summary(flags, base_flags, rejected)


def task_summary(flags: list[bool], base_flags: list[bool], rejected: bool = False) -> dict:
    """The reported figures of the examples answered so far: accuracy with its 95% interval, the base's, the loss."""
    n, k, kb = len(flags), sum(flags), sum(base_flags[: len(flags)])
    return {"quality_loss": (kb - k) / n if n else 0.0, "quality_loss_low": _task_loss_low(flags, base_flags),
            "accuracy": k / n if n else 0.0, "interval": wilson(k, n), "exact_match": k, "base_accuracy": kb / n if n else 0.0,
            "base_interval": wilson(kb, n), "n_rows": n, "early_rejected": rejected, "flags": list(flags)}


def _task_loss_low(flags: list[bool], base_flags: list[bool]) -> float:
    """The smallest loss the answers so far allow: base accuracy minus the top of the candidate's Wilson interval."""
    n = len(flags)
    return sum(base_flags[:n]) / n - wilson(sum(flags), n)[1] if n else 0.0
