"""The running search's state: the device and host, the space, the cache, the clock, the bases and the rows.

``Search`` holds what every stage reads and writes, and small helpers over it (the cache entry of
a row, its recipe, the cost-model prediction it shows); the stages themselves live in
``stages.py`` and ``deploy.py``. ``load_base`` loads each base model with its evaluation data and
its reference quality (from the cache when measured before). Every model is judged against the
FIRST model's fp32 quality on the same tokens, so model selection compares like with like (with a
task, ``--task-data``: against the best base model's exact-match answers, ``quality.task_quality``).
``executor`` is where the work runs (``executors.py``: this process, or a Ray cluster).
Deliberately absent: the scheduling of that work (the executor's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import SST2, WIKI_TEST, data_file, read_tsv, tokenize_file
from ..devices import get_profile
from ..devices.costmodel import Calibration, ModelStats, predict
from ..devices.detect import detect_host
from ..errors import EdgeLLMError
from ..evaluation.perplexity import windows
from ..evaluation.taskdata import read_task
from ..models import cache_dir, load
from ..runtimes.torch import TorchRuntime
from .budget import Budget, Steps
from .cache import Entries, ResultCache, model_fingerprint
from .config import OptimizeConfig
from .executors import make_executor
from .pick import OBJECTIVES, _value
from .quality import correct_flags, lm_reference, task_flags
from .space import Row, constraints_for, search_recipes, search_runtimes


@dataclass
class Base:
    """A base model with its evaluation data and the reference quality every candidate is compared with."""

    spec: str
    loaded: object
    data: list           # LM windows or classification rows
    reference: list      # base per-window NLLs, or per-row correctness
    screen: int          # windows / rows in the screen
    tokens_per_example: float | None = None   # classifiers: mean tokens of a row (speed conversions)


class Search:
    """What the stages share: ``Search(config)`` resolves the device, the space, the cache and the calibration.

    >>> s = Search(OptimizeConfig(models=("smollm2-135m",)), progress=False)     # doctest: +SKIP
    >>> s.runtimes                                                               # doctest: +SKIP
    ['torch', 'llama.cpp']
    """

    def __init__(self, config: OptimizeConfig, progress: bool = True):
        self.cfg = config
        torch.set_num_threads(config.threads)
        self.device = get_profile(config.device, threads=config.threads)
        self.host = self.device if self.device.name == "host" else detect_host(threads=config.threads)
        self.runtimes = search_runtimes(config, self.device, self.host)
        self.recipes = search_recipes(config)
        self.constraints = constraints_for(config, self.device)
        cache = ResultCache(config.cache or cache_dir() / "optimize")
        self.task = read_task(config.task_data, config.schema) if config.task_data else None   # quality by task
        self.entries = Entries(cache, self.protocol(), fresh=config.fresh)   # keyed by the code versions too
        # host measurements of earlier runs calibrate this one; a candidate is never calibrated on itself
        self.host_id = {"cpu": self.host.details.get("cpu_model"), "threads": config.threads,
                        "torch": self.host.details.get("torch"), "host": self.entries.host_key,
                        "code": self.entries.protocol["code"]}
        self.calibration_path = cache.root / f"host-calibration-{config.task}.json"
        self.calibration = Calibration.load(self.calibration_path, self.host_id)
        self.budget = Budget(config.budget_minutes)
        self.step = Steps(progress)
        self.rows: list[Row] = []
        self.references: list[Row] = []           # llama.cpp's own quantizer (reference.py): never picked
        self.reference_recipes: dict = {}         # their pseudo-recipes, by name
        self.bases: dict[str, Base] = {}
        self.stats: dict[int, ModelStats] = {}
        self.executor = make_executor(config)    # local, or a Ray cluster (started by optimize)

    @property
    def lm(self) -> bool:
        return self.cfg.task == "text-generation"

    def protocol(self) -> dict:
        """The evaluation protocol: part of every cache key, so a changed protocol never reuses old figures."""
        c = self.cfg
        if self.task is not None:
            return {"task": c.task, "task_data": self.task.digest(), "max_new_tokens": c.task_new_tokens}
        if self.lm:
            return {"task": c.task, "ctx": c.ctx, "full_tokens": c.full_tokens, "text": c.eval_text or "wiki.test"}
        return {"task": c.task, "tsv": c.tsv or "sst-2 dev", "max_rows": c.max_rows}

    def recipe(self, name: str):
        if name in self.reference_recipes:
            return self.reference_recipes[name]
        return next(r for r in self.recipes if r.name == name)

    def entry(self, row: Row) -> dict:
        """The cache entry of the row's (model, recipe)."""
        return self.entries.get(row.model, self.recipe(row.recipe))

    def save(self, row: Row) -> None:
        self.entries.save(row.model, self.recipe(row.recipe))

    def folder(self, row: Row) -> Path:
        return self.entries.folder(row.model, self.recipe(row.recipe))

    def live(self, status=("planned",)) -> list[Row]:
        return [r for r in self.rows if r.status in status]

    def is_base(self, row: Row) -> bool:
        """The unmodified model on PyTorch: the reference every candidate is judged and calibrated against."""
        return self.recipe(row.recipe).is_identity and row.runtime == "torch"

    def predicted_rank(self, row: Row):
        """Sort key: best first by the objective, on the row's current (predicted or measured) figures."""
        key, direction = OBJECTIVES[self.cfg.objective]
        v = _value(row.to_dict(), key) or 0.0
        return -v if direction == "max" else v

    def apply_prediction(self, row: Row, stats: ModelStats, exact: bool) -> None:
        """The cost model's figures for the row on the device; measured host figures are not overwritten."""
        p = predict(stats, self.device, row.runtime, self.calibration, self.cfg.prompt_len, self.cfg.new_tokens)
        row.predicted = dict(p.to_dict(), exact_stats=exact)
        if not row.measured:
            row.size_bytes, row.peak_ram_bytes, row.ttft_ms = p.size_bytes, p.peak_ram_bytes, p.ttft_ms
            row.prefill_tok_s = p.prefill_tok_s
            if self.lm:
                row.decode_tok_s = p.decode_tok_s
            else:
                row.examples_per_s = p.prefill_tok_s / self.tokens_per_example(row.model)

    def tokens_per_example(self, spec: str) -> float:
        base = self.bases[spec]
        if base.tokens_per_example is None:
            tok, sample = base.loaded.tokenizer, base.data[:64]
            base.tokens_per_example = sum(len(tok(r.text, truncation=True, max_length=128)["input_ids"])
                                          for r in sample) / len(sample)
        return base.tokens_per_example

    def load_base(self, spec: str) -> Base:
        """Load *spec*, its evaluation data and its reference quality (cached under the identity recipe)."""
        self.entries.fingerprints[spec] = model_fingerprint(spec)
        loaded = load(spec, **({"task": "classification"} if not self.lm else {}))
        cfg = self.cfg
        if self.lm:
            if "CausalLM" not in type(loaded.model).__name__:
                raise EdgeLLMError(f"'{spec}' is not a causal LM ({type(loaded.model).__name__})",
                                   "use --task classification for classifiers")
        if self.task is not None:
            data, screen = self.task, min(len(self.task), cfg.screen_examples)
        elif self.lm:
            ids = tokenize_file(loaded.tokenizer, cfg.eval_text or data_file(WIKI_TEST), max_tokens=cfg.full_tokens)
            data = windows(ids, cfg.ctx, cfg.full_tokens)
            screen = max(1, min(len(data), math.ceil(cfg.screen_tokens / cfg.ctx)))
        else:
            data = read_tsv(cfg.tsv or data_file(SST2.format(split="dev")), limit=cfg.max_rows)
            screen = min(len(data), cfg.screen_rows)
        base = Base(spec, loaded, data, [], screen)
        self.bases[spec] = base
        ident = next(r for r in self.recipes if r.is_identity)
        e = self.entries.get(spec, ident)
        ref_key = "nlls" if self.lm and self.task is None else "flags"
        if len(e.get(ref_key, [])) < len(data):
            self.step(f"reference quality of {Path(spec).name}")
            rt = TorchRuntime(loaded, device="cpu", threads=cfg.threads)
            e[ref_key] = (task_flags(rt, data, cfg.task_new_tokens) if self.task is not None
                          else lm_reference(rt, data) if self.lm else correct_flags(rt, data))
            self.entries.save(spec, ident)
        base.reference = e[ref_key]
        if self.task is not None:        # judged against the best base model in the run (answers need no shared tokenizer)
            best = max((self.entries.get(b.spec, ident)["flags"] for b in self.bases.values()), key=sum)
            for b in self.bases.values():
                b.reference = best
            return base
        first = self.bases[cfg.models[0]]
        if first is not base:
            if self.lm and [w.tolist() for w in first.data] != [w.tolist() for w in data]:
                raise EdgeLLMError(f"'{spec}' and '{first.spec}' tokenize the evaluation text differently, so their "
                                   "perplexities are not comparable", "compare models that share a tokenizer")
            base.reference = first.reference
        return base
