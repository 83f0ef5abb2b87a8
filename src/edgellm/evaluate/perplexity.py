"""Perplexity by the measurement protocol of DESIGN.md §4.

Tokenize the whole text once; cut the first ``max_tokens`` into non-overlapping windows of
``ctx`` tokens (a trailing partial window is dropped unless it is the only one); score =
exp(mean NLL over every predicted token, ctx−1 per window). ``evaluate_lm`` computes KL and
top-1 agreement against a reference runtime in the same pass, on the same windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import EdgeLLMError
from .agreement import AgreementResult, AgreementAccumulator


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    n_tokens: int          # tokens read (windows × ctx)
    n_predicted: int       # tokens scored
    ctx: int
    n_windows: int
    seconds: float
    runtime: str
    agreement: AgreementResult | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def evaluate_lm(runtime, ids: torch.Tensor, ctx: int = 512, max_tokens: int | None = 20480, reference=None,
                progress: bool = False) -> PerplexityResult:
    """Perplexity of *runtime* on *ids*; with *reference*, KL(reference‖runtime) and top-1 agreement too.

    >>> r = evaluate_lm(rt, ids, ctx=512, max_tokens=20480)     # doctest: +SKIP
    >>> round(r.perplexity, 1)                                   # doctest: +SKIP
    28.7
    """
    check_ctx(runtime, ctx)
    if reference is not None:
        check_ctx(reference, ctx)
    chunks = windows(ids, ctx, max_tokens)
    nll_sum, n_pred = 0.0, 0
    agree = AgreementAccumulator() if reference is not None else None
    t0 = time.perf_counter()
    for w in tqdm(chunks, desc=f"eval {runtime.name}", unit="win", disable=not progress, leave=False):
        logits = runtime.logits(w)[:-1].float()          # [T-1, V]
        target = w[1:]
        nll_sum += F.cross_entropy(logits, target, reduction="sum").item()
        n_pred += target.numel()
        if agree is not None:
            agree.add(reference.logits(w)[:-1].float(), logits)
    mean_nll = nll_sum / n_pred
    return PerplexityResult(
        perplexity=math.exp(mean_nll), mean_nll=mean_nll, n_tokens=sum(c.numel() for c in chunks),
        n_predicted=n_pred, ctx=ctx if len(chunks) > 1 or chunks[0].numel() == ctx else chunks[0].numel(),
        n_windows=len(chunks), seconds=time.perf_counter() - t0, runtime=runtime.name,
        agreement=agree.result() if agree is not None else None,
    )
