"""``optimize``: the main job. Candidates → predict → screen → full protocol → measure → Pareto → pick → export → report.

Candidates are base models × recipes × the runtimes the device has (and this host can run, so
quality and speed can be measured). In order:

1. **Predict** every candidate's size, RAM and speed on the device with the cost model (calibrated
   by the host measurements made so far, else optimistic bounds) and drop those that cannot fit.
2. **Build** each surviving (model, recipe) once, into the cache, and **screen** its quality on the
   first windows (rows) against the base model on the same tokens, rejecting early when the
   running loss is far beyond the budget.
3. **Full protocol** (docs/design.md §4) for the contenders, on each candidate's own runtime; a
   llama.cpp candidate is first exported to GGUF and verified on llama.cpp.
4. **Measure speed** on the host (fresh subprocess, peak RSS) for the finalists; each measurement
   is first predicted, so the report holds prediction-vs-measurement errors, then calibrates.
5. **Pareto** frontier over quality × size × speed; **pick** the best candidate meeting every
   constraint (or explain the binding one); **export** it to ``DIR/model`` and verify it there.
6. Write ``DIR/results.json``, ``DIR/report.html`` (+ plots) atomically, and print a summary.

The time budget is checked before every step; steps that no longer fit are skipped and listed.
Deliberately absent: distillation inside the search (pass a distilled student as another
``--model``) and runtimes this host cannot run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import EdgeLLMError

TASKS = ("text-generation", "classification")
SEARCH_RUNTIMES = {"text-generation": ("torch", "llama.cpp"), "classification": ("torch", "onnxruntime")}


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything ``edgellm optimize`` takes; the CLI flags map onto these fields.

    >>> OptimizeConfig(models=("smollm2-135m",), max_quality_loss=0.1).device
    'host'
    """

    models: tuple[str, ...] = ("smollm2-135m",)
    device: str = "host"
    task: str = "text-generation"
    recipes: tuple[str, ...] = ()              # recipe YAML paths; empty = the default search space
    runtimes: tuple[str, ...] = ()             # restrict the runtimes tried; empty = all the device has
    max_quality_loss: float | None = None      # relative; None = the device's, else 10%
    min_decode_tok_s: float | None = None      # or examples/s for classifiers
    max_ram: int | None = None                 # bytes; None = the device's ram_bytes_for_model
    max_ttft_ms: float | None = None
    objective: str = "speed"                   # speed | size | quality: what the pick maximises
    budget_minutes: float = 15.0
    threads: int = 2
    ctx: int = 512
    screen_tokens: int = 2048
    full_tokens: int = 20480
    eval_text: str | None = None               # default wikitext-2 test
    tsv: str | None = None                     # classification rows (default SST-2 dev)
    screen_rows: int = 256
    max_rows: int | None = None
    speed_runs: int = 5
    speed_in_process: bool = False             # measure speed in this process (faster; peak RAM then predicted)
    prompt_len: int = 128
    new_tokens: int = 128
    max_finalists: int = 4
    dominance_margin: float = 1.25             # skip a row whose same weights on another runtime are predicted this much faster
    reject_factor: float = 2.0
    cache: str | None = None
    verify_tokens: int = 1024                  # perplexity tokens in each search-time export verification

    def __post_init__(self):
        if self.task not in TASKS:
            raise EdgeLLMError(f"unknown task '{self.task}'", f"use one of: {', '.join(TASKS)}")
        if not self.models:
            raise EdgeLLMError("no model to optimize", "pass --model NAME (repeatable)")
        for name in ("budget_minutes", "threads", "ctx", "screen_tokens", "full_tokens", "screen_rows", "speed_runs",
                     "prompt_len", "new_tokens", "max_finalists", "reject_factor", "verify_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise EdgeLLMError(f"{name} must be a positive number (got {v!r})", f"fix --{name.replace('_', '-')}")
        if self.dominance_margin < 1:
            raise EdgeLLMError(f"dominance_margin must be at least 1 (got {self.dominance_margin!r})",
                               "use 1.25 (the default), or a large value to evaluate every runtime")
        if self.screen_tokens > self.full_tokens:
            raise EdgeLLMError("the screen cannot read more tokens than the full protocol",
                               "lower --screen-tokens or raise --full-tokens")
        from .select.pareto import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise EdgeLLMError(f"unknown objective '{self.objective}'", f"use one of: {', '.join(OBJECTIVES)}")


@dataclass
class Row:
    """One candidate's record: what was predicted, measured and decided."""

    model: str
    recipe: str
    runtime: str
    kind: str
    status: str = "planned"        # planned, dropped, rejected, screened, evaluated, measured, skipped, failed
    reason: str = ""
    quality_loss: float | None = None
    quality: dict = field(default_factory=dict)
    size_bytes: int | None = None
    peak_ram_bytes: int | None = None
    decode_tok_s: float | None = None
    examples_per_s: float | None = None
    prefill_tok_s: float | None = None
    ttft_ms: float | None = None
    measured: bool = False         # speed/RAM figures measured on the host (else predicted)
    predicted: dict = field(default_factory=dict)          # prediction on the device
    host_check: dict = field(default_factory=dict)         # host prediction vs measurement
    artifact: str | None = None
    build: dict = field(default_factory=dict)
    pareto: bool = False
    chosen: bool = False

    @property
    def label(self) -> str:
        return f"{Path(self.model).name} · {self.recipe} · {self.runtime}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


class Budget:
    """Wall-clock budget; ``fits(seconds)`` keeps a reserve for the final export and report."""

    def __init__(self, minutes: float, reserve_fraction: float = 0.12):
        self.t0 = time.monotonic()
        self.total = minutes * 60
        self.reserve = max(20.0, reserve_fraction * self.total)
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, estimate_s: float = 0.0, final: bool = False) -> bool:
        return self.elapsed() + estimate_s <= self.total - (0 if final else self.reserve)

    def skip(self, what: str) -> None:
        self.skipped.append(what)


def optimize(config: OptimizeConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Search the candidates, pick the best one that meets the constraints, export it, write the report.

    >>> r = optimize(OptimizeConfig(models=("smollm2-135m",)), "out/demo")     # doctest: +SKIP
    >>> r["chosen"]["label"]                                                   # doctest: +SKIP
    'smollm2-135m · w4-gptq-g32 · llama.cpp'
    """
    from .fileio import check_writable_target
    from .select.runner import Search

    out = check_writable_target(out, force)
    search = Search(config, progress=progress)
    result = search.run()
    from .select.finish import finish

    return finish(search, result, out, force=force)
