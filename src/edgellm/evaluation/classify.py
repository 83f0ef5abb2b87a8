"""Classifier accuracy (and throughput) over labelled rows, through a runtime's ``classify``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm

from ..data import LabeledText
from ..errors import EdgeLLMError
from ..results import Result


@dataclass
class ClassifyResult(Result):
    accuracy: float
    n: int
    seconds: float
    examples_per_s: float
    batch_size: int
    runtime: str


def accuracy(runtime, rows: list[LabeledText], batch_size: int = 32, progress: bool = False) -> ClassifyResult:
    """Accuracy of ``runtime.classify`` on *rows*.

    >>> accuracy(rt, read_tsv("sst-2/dev.tsv"), batch_size=32).accuracy    # doctest: +SKIP
    0.91
    """
    if not hasattr(runtime, "classify"):
        raise EdgeLLMError(f"runtime '{runtime.name}' cannot run classifiers", "use a classifier model and runtime")
    correct, t0 = 0, time.perf_counter()
    for i in tqdm(range(0, len(rows), batch_size), desc="classify", disable=not progress, leave=False):
        batch = rows[i : i + batch_size]
        pred = runtime.classify([r.text for r in batch]).argmax(-1).tolist()
        correct += sum(int(p == r.label) for p, r in zip(pred, batch))
    dt = time.perf_counter() - t0
    return ClassifyResult(accuracy=correct / len(rows), n=len(rows), seconds=dt, examples_per_s=len(rows) / dt,
                          batch_size=batch_size, runtime=runtime.name)
