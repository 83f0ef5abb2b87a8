"""``OptimizeConfig``: everything ``edgellm optimize`` takes, validated when it is made.

The tasks it searches and the runtimes each task can be measured on (``SEARCH_RUNTIMES``; those in
``PROFILE_RUNTIMES`` only where a device profile lists them, or ``--runtimes`` names them) live
here too. The defaults (protocol sizes, budget, margins) are stated once, in the fields.
Deliberately absent: anything derived from the device (constraints come from the profile when the
search starts, ``space.constraints_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..calibconfig import config_field
from ..errors import EdgeLLMError
from .pick import OBJECTIVES

TASKS = ("text-generation", "classification")
EXECUTORS = ("local", "ray")     # where the candidates' work runs (executors.py)
SEARCH_RUNTIMES = {"text-generation": ("torch", "llama.cpp", "litert"), "classification": ("torch", "onnxruntime")}
# deployment runtimes searched where a device profile lists them; on the measured host (whose list is
# whatever is installed) only when --runtimes names them, so a host search keeps its runtimes and time
PROFILE_RUNTIMES = ("litert",)


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
    paired_rounds: int = 10                    # paired speed rounds when the finalists' spreads overlap (and pick vs references)
    fresh: bool = False                        # measure every figure again, ignoring the cache (builds are reused)
    reference: bool | None = None              # llama.cpp's own Q4_K_M/Q4_0 + imatrix as reference rows; None = on
                                               # for perplexity searches of LMs on llama.cpp (off with --task-data)
    ladder: bool = False                       # also llama.cpp's types RTN onto their grids and a budgeted mix
    task_data: str | None = None               # LMs: a task JSONL; quality = drop in exact match (points), not perplexity
    schema: str | None = None                  # the task's JSON schema: answers decoded constrained to it
    screen_examples: int = 10                  # task examples in the screen
    task_new_tokens: int = 64                  # longest task answer
    executor: str = config_field("local", "where candidates run: local (this process) or ray (a Ray cluster; "
                                 "pip install 'edgellm[ray]')", choices=EXECUTORS)
    ray_address: str | None = config_field(None, "with --executor ray: join the cluster at HOST:PORT or 'auto' "
                                           "(default $RAY_ADDRESS, else a private instance on 127.0.0.1)",
                                           metavar="HOST:PORT")

    @property
    def references(self) -> bool:
        """Whether llama.cpp's reference rows are wanted: as set, else on unless the search is scored on a task.

        >>> OptimizeConfig().references, OptimizeConfig(task_data="t.jsonl").references
        (True, False)
        """
        return self.task_data is None if self.reference is None else self.reference

    def inputs(self) -> tuple[str, ...]:
        """The paths the search reads (models, recipes, data): ``--out`` may be none of them, nor hold or lie in one.

        >>> OptimizeConfig(models=("out/w4",), eval_text="t.txt").inputs()
        ('out/w4', 't.txt')
        """
        return tuple(p for p in (*self.models, *self.recipes, self.eval_text, self.tsv, self.task_data, self.schema) if p)

    def __post_init__(self):
        if self.task not in TASKS:
            raise EdgeLLMError(f"unknown task '{self.task}'", f"use one of: {', '.join(TASKS)}")
        if not self.models:
            raise EdgeLLMError("no model to optimize", "pass --model NAME (repeatable)")
        for name in ("budget_minutes", "threads", "ctx", "screen_tokens", "full_tokens", "screen_rows", "speed_runs",
                     "prompt_len", "new_tokens", "max_finalists", "reject_factor", "verify_tokens", "paired_rounds",
                     "screen_examples", "task_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise EdgeLLMError(f"{name} must be a positive number (got {v!r})", f"fix --{name.replace('_', '-')}")
        for name in ("max_ram", "max_ttft_ms", "max_rows"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise EdgeLLMError(f"{name} must be a positive number (got {v!r})",
                                   f"fix --{name.replace('_', '-')}, or leave it out")
        if self.max_ram is not None and self.max_ram > 1 << 50:
            raise EdgeLLMError(f"max_ram {self.max_ram:.3g} bytes is absurd (over 1 PiB)", "give --max-ram like 2GiB")
        for name in ("max_quality_loss", "min_decode_tok_s"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise EdgeLLMError(f"{name} cannot be negative (got {v!r})", f"fix --{name.replace('_', '-')}")
        if self.dominance_margin < 1:
            raise EdgeLLMError(f"dominance_margin must be at least 1 (got {self.dominance_margin!r})",
                               "use 1.25 (the default), or a large value to evaluate every runtime")
        if self.schema is not None and self.task_data is None:
            raise EdgeLLMError("--schema goes with --task-data", "add --task-data FILE.jsonl, or drop --schema")
        if self.task_data is not None and self.task != "text-generation":
            raise EdgeLLMError("--task-data scores generated answers: it needs --task text-generation",
                               "drop --task classification (classifiers take --tsv)")
        if self.task_data is not None and self.reference:
            raise EdgeLLMError("llama.cpp's reference rows are scored by perplexity, not on a task",
                               "add --no-reference")
        if self.screen_tokens > self.full_tokens:
            raise EdgeLLMError("the screen cannot read more tokens than the full protocol",
                               "lower --screen-tokens or raise --full-tokens")
        if self.executor not in EXECUTORS:
            raise EdgeLLMError(f"unknown executor '{self.executor}'", f"use one of: {', '.join(EXECUTORS)}")
        if self.ray_address is not None and (self.executor != "ray" or not self.ray_address.strip()):
            raise EdgeLLMError(f"--ray-address {self.ray_address!r} needs --executor ray and a HOST:PORT or 'auto'",
                               "add --executor ray, or leave --ray-address out")
        if self.objective not in OBJECTIVES:
            raise EdgeLLMError(f"unknown objective '{self.objective}'", f"use one of: {', '.join(OBJECTIVES)}")
