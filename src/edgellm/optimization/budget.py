"""The search's clock: the wall-clock budget with per-stage time estimates, and the step log with its progress bar.

``Budget.fits(seconds)`` keeps a reserve for the final export and report; ``Budget.estimate``
is the mean time a stage took on a runtime so far, so a stage that would overrun is skipped (and
listed) instead of started; ``Budget.replay()`` suspends that while the stages read work a Ray cluster
already did (which the cluster's own budget checks paid for). ``Steps`` names each unit of work as it starts, on the progress bar
and in ``(step, seconds)`` pairs for the report. Deliberately absent: predicting a stage's time
before it has run once (the first one always starts when any time is left).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from tqdm import tqdm


SKIPPED = object()     # what Budget.timed returns for a step the time budget had no room for


class Budget:
    """Wall-clock budget; ``fits(seconds)`` keeps a reserve for the final export and report.

    >>> b = Budget(15)
    >>> b.fits(60), b.fits(15 * 60)
    (True, False)
    """

    def __init__(self, minutes: float, reserve_fraction: float = 0.12):
        self.t0 = time.monotonic()
        self.total = minutes * 60
        self.reserve = max(20.0, reserve_fraction * self.total)
        self.skipped: list[str] = []
        self.timings: dict[tuple[str, str], list[float]] = {}    # (stage, runtime) -> seconds of each run
        self._replay = False

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, estimate_s: float = 0.0, final: bool = False) -> bool:
        if self._replay:
            return True
        return self.elapsed() + estimate_s <= self.total - (0 if final else self.reserve)

    @contextmanager
    def replay(self):
        """Every step fits while the stages replay work already done and paid for (the Ray executor's).

        >>> b = Budget(0.001)
        >>> with b.replay():
        ...     b.fits(60)
        True
        """
        self._replay = True
        try:
            yield self
        finally:
            self._replay = False

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def record(self, stage: str, runtime: str, seconds: float) -> None:
        self.timings.setdefault((stage, runtime), []).append(seconds)

    def estimate(self, stage: str, runtime: str) -> float:
        """Seconds the same stage took on the same runtime so far (0 before the first)."""
        seen = self.timings.get((stage, runtime))
        return sum(seen) / len(seen) if seen else 0.0

    def timed(self, row, stage: str, runtime: str, why_skipped: str, fn):
        """``fn()`` for *row* when *stage*'s estimate on *runtime* fits the time left, its time recorded
        for the next estimate; else *row* is skipped with *why_skipped* and ``SKIPPED`` returned.
        Exceptions from ``fn`` propagate (and record no time)."""
        if not self.fits(self.estimate(stage, runtime)):
            self.skip_rows([row], why_skipped)
            return SKIPPED
        t0 = time.monotonic()
        out = fn()
        self.record(stage, runtime, time.monotonic() - t0)
        return out

    def skip_rows(self, rows: list, why: str) -> None:
        """Mark *rows* skipped for lack of time, and list them."""
        for r in rows:
            r.status, r.reason = "skipped", why
            self.skip(f"{r.label}: {why}")


class Steps:
    """The named steps of the search, timed in order and shown on a progress bar (when *progress*)."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.bar = None
        self.seconds: list[tuple[str, float]] = []       # (step, seconds) in order, for the report
        self._last: tuple[str, float] | None = None

    def open(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="step", disable=not self.progress, leave=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.seconds.append((self._last[0], round(now - self._last[1], 2)))
        self._last = (text, now)
        if self.bar is not None:
            self.bar.set_description_str(text[:60])
            self.bar.update(1)
