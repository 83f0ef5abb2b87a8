"""Perplexity by the measurement protocol of docs/design.md §4.

Tokenize the whole text once; cut the first ``max_tokens`` into non-overlapping windows of
``ctx`` tokens (a trailing partial window is dropped unless it is the only one); score =
exp(mean NLL over every predicted token, ctx−1 per window). ``evaluate_lm`` computes KL and
top-1 agreement against a reference runtime in the same pass, on the same windows.

This is the one perplexity loop in edgellm: the search (``select``) and the benchmarks call it
with pre-cut ``windows`` and a ``stop`` callback that rejects a bad candidate after a few windows,
and read the per-window NLLs it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import EdgeLLMError
from ..results import Result
from .agreement import AgreementResult, AgreementAccumulator


@dataclass
class PerplexityResult(Result):
    perplexity: float
    mean_nll: float
    n_tokens: int          # tokens read (windows × ctx)
    n_predicted: int       # tokens scored
    ctx: int
    n_windows: int
    seconds: float
    runtime: str
    agreement: AgreementResult | None = None
    window_nlls: list[float] = field(default_factory=list)   # summed NLL of each scored window, in order
    stopped: bool = False    # True when ``stop`` ended the pass before the last window


def windows(ids: torch.Tensor, ctx: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping windows of *ctx* tokens over the first *max_tokens* of *ids*.

    >>> [w.tolist() for w in windows(torch.arange(7), 3)]
    [[0, 1, 2], [3, 4, 5]]
    """
    if ctx < 2:
        raise EdgeLLMError(f"--ctx must be at least 2 (got {ctx})", "use e.g. --ctx 512")
    ids = ids[:max_tokens] if max_tokens else ids
    if ids.numel() < 2:
        raise EdgeLLMError("the evaluation text has fewer than 2 tokens", "pass a longer text")
    n = ids.numel() // ctx
    if n == 0:
        return [ids]
    return list(ids[: n * ctx].view(n, ctx))


def check_ctx(runtime, ctx: int) -> None:
    limit = getattr(runtime, "max_positions", None)
    if limit and ctx > limit:
        raise EdgeLLMError(f"--ctx {ctx} is beyond the model's maximum position ({limit})", f"use --ctx {min(limit, 512)} or less")


def evaluate_lm(runtime, ids: torch.Tensor | None = None, ctx: int = 512, max_tokens: int | None = 20480,
                reference=None, progress: bool = False, *, chunks: list[torch.Tensor] | None = None,
                done: list[float] | None = None, stop: Callable[[list[float]], bool] | None = None,
                on_window: Callable[[], None] | None = None) -> PerplexityResult:
    """Perplexity of *runtime* on *ids*; with *reference*, KL(reference‖runtime) and top-1 agreement too.

    ``chunks`` passes windows already cut (then *ids*, *ctx* and *max_tokens* are not used for
    cutting); ``done`` holds the NLLs of the first windows, already measured (they are not run
    again); ``stop(nlls)`` is asked after each window and ends the pass early when it says True
    (``result.stopped``); ``on_window()`` is called after each window (a progress tick).

    >>> r = evaluate_lm(rt, ids, ctx=512, max_tokens=20480)     # doctest: +SKIP
    >>> round(r.perplexity, 1)                                   # doctest: +SKIP
    28.7
    """
    if chunks is None:
        if ids is None:
            raise EdgeLLMError("evaluate_lm needs ids or chunks", "pass the tokenized text")
        check_ctx(runtime, ctx)
        wins = windows(ids, ctx, max_tokens)
    else:
        wins = list(chunks)
        if not wins:
            raise EdgeLLMError("evaluate_lm got no windows", "pass at least one window of 2 or more tokens")
        ctx = wins[0].numel()
        check_ctx(runtime, ctx)
    if reference is not None:
        check_ctx(reference, ctx)
        if done:
            raise EdgeLLMError("evaluate_lm cannot resume (done=...) with a reference", "score agreement in one pass")
    nlls = list(done or [])
    agree = AgreementAccumulator() if reference is not None else None
    stopped = False
    t0 = time.perf_counter()
    for w in tqdm(wins[len(nlls):], desc=f"eval {runtime.name}", unit="win", disable=not progress, leave=False):
        logits = runtime.logits(w)[:-1].float()          # [T-1, V]
        nlls.append(F.cross_entropy(logits, w[1:], reduction="sum").item())
        if agree is not None:
            agree.add(reference.logits(w)[:-1].float(), logits)
        if on_window is not None:
            on_window()
        if stop is not None and len(nlls) < len(wins) and stop(nlls):
            stopped = True
            break
    scored = wins[:len(nlls)]
    n_pred = sum(c.numel() - 1 for c in scored)
    mean_nll = sum(nlls) / n_pred
    return PerplexityResult(
        perplexity=math.exp(mean_nll), mean_nll=mean_nll, n_tokens=sum(c.numel() for c in scored),
        n_predicted=n_pred, ctx=ctx if len(wins) > 1 or wins[0].numel() == ctx else wins[0].numel(),
        n_windows=len(scored), seconds=time.perf_counter() - t0, runtime=runtime.name,
        agreement=agree.result() if agree is not None else None, window_nlls=nlls, stopped=stopped,
    )
