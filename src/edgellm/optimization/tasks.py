"""The search's units of work as plain functions a worker process runs: screen a (model, recipe), score a row on its
runtime, time a row. The Ray executor (``ray_exec.py``) ships them to its workers; nothing here imports Ray.

Each function takes a ``Context`` (the search's settings, the bases' evaluation data and reference quality, the
recipes) and a copy of the cache entry it works on, and runs **the same code the local search runs**
(``stages.built_folder``, ``stages.torch_quality``, ``deploy.llamacpp_quality`` …) on a ``TaskSearch``: a stand-in for
``Search`` whose cache entry lives in memory. Artifacts go to the entry's folder in the cache; the entry's changed
fields come back in the return value, and the driver alone writes ``entry.json`` (two tasks of one candidate never
overwrite each other's fields). A failure comes back as ``{"error": reason}``, as the local search records it.
Deliberately absent: any scheduling, retry or budget decision (the driver makes those).
"""

from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

from ..models import load
from .build import task_kwargs
from .cache import digest
from .deploy import llamacpp_quality, llamacpp_screen, onnx_quality, row_speed
from .litert import litert_quality
from .space import base_weights
from .stages import built_folder, screen_rejects, torch_quality, why

KILL_HOOK_ENV = "EDGELLM_TEST_KILL_ONCE"   # tests: a folder; a worker that renames its kill file there SIGKILLs itself


@dataclass
class Context:
    """What every task needs from the driver's search, shipped once (``ray.put``) and shared by the tasks."""

    cfg: object                       # OptimizeConfig
    max_quality_loss: float
    recipes: dict                     # name -> Recipe (reference pseudo-recipes included)
    bases: dict = field(default_factory=dict)   # spec -> (data, reference, screen)
    task: object = None               # the search's task data (--task-data), when quality is judged on one

    @classmethod
    def of(cls, search) -> "Context":
        """The context of a running ``Search`` (``search.bases`` already loaded)."""
        recipes = {r.name: r for r in search.recipes} | dict(search.reference_recipes)
        bases = {s: (b.data, b.reference, b.screen) for s, b in search.bases.items()}
        return cls(search.cfg, search.constraints.max_quality_loss, recipes, bases, getattr(search, "task", None))


class TaskBase:
    """A base model in a worker: evaluation data and reference from the driver, the model itself loaded on first use."""

    def __init__(self, spec: str, task: str, data, reference, screen: int):
        self.spec, self.task, self.data, self.reference, self.screen = spec, task, data, reference, screen
        self.tokens_per_example = None

    @cached_property
    def loaded(self):
        return load(self.spec, **task_kwargs(self.task))


class TaskEntries:
    """One cache entry in memory: ``get``/``save``/``folder`` as ``Entries`` has them, for the one (model, recipe)."""

    def __init__(self, entry: dict, folder: Path):
        self.entry, self.root, self.read = copy.deepcopy(entry), Path(folder), {k: digest(v) for k, v in entry.items()}

    def get(self, spec, recipe) -> dict:
        return self.entry

    def save(self, spec, recipe) -> None:      # the driver writes entry.json from changed()
        pass

    def folder(self, spec, recipe) -> Path:
        return self.root

    def changed(self) -> dict:
        """The fields this task set or changed."""
        return {k: v for k, v in self.entry.items() if self.read.get(k) != digest(v)}


class TaskSearch:
    """The attributes of ``Search`` the stage functions read, for one entry in a worker."""

    def __init__(self, ctx: Context, entry: dict, folder: Path):
        self.cfg = ctx.cfg
        self.constraints = SimpleNamespace(max_quality_loss=ctx.max_quality_loss)
        self.entries = TaskEntries(entry, folder)
        self._recipes = ctx.recipes
        self.task = ctx.task
        self.bases = {s: TaskBase(s, ctx.cfg.task, *b) for s, b in ctx.bases.items()}
        torch.set_num_threads(ctx.cfg.threads)

    @property
    def lm(self) -> bool:
        return self.cfg.task == "text-generation"

    def step(self, text: str) -> None:       # the driver's progress line shows the tasks instead
        pass

    def recipe(self, name: str):
        return self._recipes[name]

    def entry(self, row) -> dict:
        return self.entries.entry

    def save(self, row) -> None:
        pass

    def folder(self, row) -> Path:
        return self.entries.root


def _where() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _done(ts: TaskSearch, t0: float, **out) -> dict:
    return {"fields": ts.entries.changed(), "start": t0, "end": time.time(), **_where(), **out}


def screen_unit(ctx: Context, spec: str, recipe_name: str, rows: list, entry: dict, folder: str) -> dict:
    """Build (model, recipe) unless its entry holds the build, and screen its quality (``stages.screen``'s unit).

    Returns the entry's changed fields, the screen's figures (``summary``), the rows' ``artifact`` and ``rejected``
    (the screen is far beyond the quality budget: no full protocol follows), or ``error``.

    >>> out = screen_unit(ctx, "tiny", "w8-rtn-g32", rows, {}, "cache/abc/def")    # doctest: +SKIP
    >>> sorted(out["fields"])                                                      # doctest: +SKIP
    ['build', 'nlls']
    """
    t0 = time.time()
    ts = TaskSearch(ctx, entry, Path(folder))
    recipe = ts.recipe(recipe_name)
    try:
        if not base_weights(recipe) and not entry.get("build"):
            _test_kill_hook()
        built = built_folder(ts, spec, recipe)
        if "gguf" in recipe.steps:         # its weights exist only in the GGUF: screened on llama.cpp
            rows[0].artifact = str(built)
            res = llamacpp_screen(ts, rows[0], recipe)
            artifact = rows[0].artifact
        else:
            res = torch_quality(ts, spec, recipe, built, full=False)
            artifact = str(built)
    except Exception as e:  # noqa: BLE001 — one candidate's failure is its row's, as in the local search
        return _done(ts, t0, error=why(e))
    summary = {k: v for k, v in res.items() if k not in ("nlls", "flags")}
    return _done(ts, t0, summary=summary, artifact=artifact, rejected=screen_rejects(res, ctx.max_quality_loss))


def full_row(ctx: Context, row, entry: dict, folder: str, screen: dict) -> dict:
    """The full protocol of *row* on its runtime (exported and verified there first), after its unit's *screen*.

    A screen that failed or rejected the candidate makes this a no-op (``skipped``): the driver cancels such tasks,
    and one that already started ends here.
    """
    t0 = time.time()
    if screen.get("error") or screen.get("rejected"):
        return {"skipped": True, "fields": {}, "start": t0, "end": time.time(), **_where()}
    ts = TaskSearch(ctx, dict(entry, **screen["fields"]), Path(folder))
    recipe = ts.recipe(row.recipe)
    row.artifact = screen["artifact"]
    try:
        if row.runtime == "torch":
            res = torch_quality(ts, row.model, recipe, Path(row.artifact), full=True)
        elif row.runtime == "onnxruntime":
            res = onnx_quality(ts, row, recipe)
        elif row.runtime == "litert":
            res = litert_quality(ts, row, recipe)
        else:
            res = llamacpp_quality(ts, row, recipe)
    except Exception as e:  # noqa: BLE001
        return _done(ts, t0, error=why(e))
    return _done(ts, t0, quality_loss=res["quality_loss"], artifact=row.artifact)


def speed_row(ctx: Context, row, entry: dict, folder: str) -> dict:
    """``deploy.row_speed`` of *row* in this worker (which the driver placed on the measuring node, alone)."""
    t0 = time.time()
    ts = TaskSearch(ctx, entry, Path(folder))
    return {"result": row_speed(ts, row), "fields": {}, "start": t0, "end": time.time(), **_where()}


def _test_kill_hook() -> None:
    """Tests' fault injection: when ``$EDGELLM_TEST_KILL_ONCE/kill`` exists, the one worker that renames it to
    ``killed`` SIGKILLs itself in the middle of its task (a dead worker, as an OOM kill leaves it)."""
    folder = os.environ.get(KILL_HOOK_ENV)
    if not folder:
        return
    try:
        os.rename(Path(folder) / "kill", Path(folder) / "killed")
    except OSError:
        return
    time.sleep(1.0)                 # well under way (its start reported to the progress board) when it dies
    os.kill(os.getpid(), 9)
