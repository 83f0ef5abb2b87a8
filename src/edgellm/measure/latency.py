"""Prefill, TTFT and decode speed through the Runtime interface (docs/design.md §4).

One run = generate *new_tokens* greedy tokens after a *prompt_len*-token prompt, EOS ignored.
TTFT is the time to the first generated token (prefill + first sample); prefill tok/s is
prompt_len / TTFT; decode tok/s is (new_tokens − 1) / (time from first to last token).
Warm-up runs first, then the median of at least 5 runs, with min and max.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..errors import EdgeLLMError
from ..results import Result


@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values) -> "Stat":
        values = list(values)
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class SpeedResult(Result):
    runtime: str
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    runs: int
    prefill_tok_s: Stat
    ttft_ms: Stat
    decode_tok_s: Stat
    weight_bytes: int


def fixed_prompt(vocab_size: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """A seeded prompt of ordinary token ids (ids below 100 are skipped: they hold special tokens)."""
    low = min(100, max(vocab_size // 4, 1))
    return torch.randint(low, vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed))


def one_run(runtime, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float, int]:
    """(ttft_s, decode_s, n_tokens) of one greedy generation."""
    t0 = time.perf_counter()
    t_first = t_last = None
    n = 0
    for _ in runtime.generate(prompt, new_tokens, temperature=0.0):
        n += 1
        t_last = time.perf_counter()
        if t_first is None:
            t_first = t_last
    if t_first is None:
        raise EdgeLLMError(f"runtime '{runtime.name}' generated no tokens", "check the model")
    return t_first - t0, t_last - t_first, n


def measure_speed(runtime, prompt_len: int = 128, new_tokens: int = 128, runs: int = 5, warmup: int = 1,
                  vocab_size: int | None = None, seed: int = 0) -> SpeedResult:
    """Median-of-*runs* speed of *runtime*.

    >>> r = measure_speed(rt, prompt_len=128, new_tokens=128, runs=5)    # doctest: +SKIP
    >>> r.decode_tok_s.median                                            # doctest: +SKIP
    12.3
    """
    if runs < 1 or new_tokens < 2 or prompt_len < 1:
        raise EdgeLLMError("speed runs need runs ≥ 1, new_tokens ≥ 2, prompt_len ≥ 1", "raise the values")
    max_pos = getattr(runtime, "max_positions", None)
    if max_pos and prompt_len + new_tokens > max_pos:
        raise EdgeLLMError(f"prompt + new tokens ({prompt_len + new_tokens}) exceed the model's {max_pos} positions",
                           "use a shorter --prompt-len / --new-tokens")
    vocab_size = vocab_size or _vocab_size(runtime)
    prompt = fixed_prompt(vocab_size, prompt_len, seed)
    for _ in range(warmup):
        one_run(runtime, prompt, new_tokens)
    ttft, decode = [], []
    for _ in range(runs):
        t_first, t_decode, n = one_run(runtime, prompt, new_tokens)
        ttft.append(t_first)
        decode.append((n - 1) / t_decode if t_decode > 0 else float("inf"))
    return SpeedResult(
        runtime=runtime.name, threads=getattr(runtime, "threads", None), prompt_tokens=prompt_len,
        new_tokens=new_tokens, runs=runs, prefill_tok_s=Stat.of(prompt_len / t for t in ttft),
        ttft_ms=Stat.of(t * 1e3 for t in ttft), decode_tok_s=Stat.of(decode), weight_bytes=runtime.weight_bytes(),
    )


def measure_paired(runtimes: dict, rounds: int = 20, prompt_len: int = 128, new_tokens: int = 128, warmup: int = 1,
                   seed: int = 0) -> dict:
    """Speed of two or more runtimes loaded side by side, run by run in turn, the order flipped every round.

    Each round runs every runtime once on the same prompt, so slow phases of a shared machine hit all of them
    alike; the per-round ratio to the first runtime cancels them. Returns, per label, the per-round prefill and
    decode tok/s, and for every label after the first the per-round ratios to the first with their median
    and interquartile range.

    >>> r = measure_paired({"a": rt_a, "b": rt_b}, rounds=20)       # doctest: +SKIP
    >>> r["ratios"]["b"]["decode"]["median"]                          # doctest: +SKIP
    1.004
    """
    if rounds < 1 or new_tokens < 2 or prompt_len < 1 or len(runtimes) < 2:
        raise EdgeLLMError("paired speed runs need two runtimes, rounds ≥ 1, new_tokens ≥ 2, prompt_len ≥ 1",
                           "raise the values")
    labels = list(runtimes)
    prompt = fixed_prompt(min(_vocab_size(rt) for rt in runtimes.values()), prompt_len, seed)
    for label in labels:
        for _ in range(warmup):
            one_run(runtimes[label], prompt, new_tokens)
    runs = {label: {"prefill": [], "decode": []} for label in labels}
    for i in range(rounds):
        for label in (labels if i % 2 == 0 else labels[::-1]):
            t_first, t_decode, n = one_run(runtimes[label], prompt, new_tokens)
            runs[label]["prefill"].append(prompt_len / t_first)
            runs[label]["decode"].append((n - 1) / t_decode if t_decode > 0 else float("inf"))
    ratios = {}
    for label in labels[1:]:
        ratios[label] = {}
        for kind in ("prefill", "decode"):
            r = [b / a for a, b in zip(runs[labels[0]][kind], runs[label][kind])]
            q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
            ratios[label][kind] = {"median": statistics.median(r), "q1": q[0], "q3": q[2], "per_round": r}
    return {"reference": labels[0], "rounds": rounds, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "runs": runs, "ratios": ratios}


def _vocab_size(runtime) -> int:
    if hasattr(runtime, "vocab_size"):
        return int(runtime.vocab_size)
    model = getattr(runtime, "model", None)
    return int(model.config.vocab_size)
