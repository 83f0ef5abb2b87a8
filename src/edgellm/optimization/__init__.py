"""``edgellm.optimize``: the main job. Candidates → predict → screen → full protocol → measure → Pareto → pick → export → report.

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
   For a causal LM on llama.cpp, llama.cpp's own Q4_K_M and Q4_0 with an importance matrix from the
   same calibration text are built, scored and timed in the same run as **reference rows**
   (``reference``): shown beside the candidates and compared with the pick, never picked.
6. Write ``DIR/results.json``, ``DIR/report.html`` (+ plots) atomically, and print a summary.

The package, by concern: ``config`` (``OptimizeConfig``), ``space`` (the candidates and their
predictions), ``cache`` (the resumable measurement cache), ``quality`` (scores against the base),
``build`` and ``deploy`` (artifacts per runtime), ``speed``, ``stages`` (screen, full protocol,
speed), ``reference`` (llama.cpp's own quantizer as reference rows), ``pick`` (Pareto front and
choice), ``budget`` (the clock), ``search`` (the state the
stages share) and ``outputs`` (results.json, the report, the exported model).

The time budget is checked before every step; steps that no longer fit are skipped and listed.
``--executor ray`` runs steps 2 and 3 as Ray tasks and step 4 alone on the measuring node
(``executors.py``, ``ray_exec.py``); the decisions and figures are the local search's.
Deliberately absent: distillation inside the search (pass a distilled student as another
``--model``) and runtimes this host cannot run.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ..fileio import check_output
from . import reference, stages
from .config import OptimizeConfig
from .outputs import finish
from .search import Search
from .space import plan_rows

__all__ = ["OptimizeConfig", "optimize"]


def optimize(config: OptimizeConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Search the candidates, pick the best one that meets the constraints, export it, write the report.

    >>> r = optimize(OptimizeConfig(models=("smollm2-135m",)), "out/demo")     # doctest: +SKIP
    >>> r["chosen"]["label"]                                                   # doctest: +SKIP
    'smollm2-135m · w4-gptq-g32 · llama.cpp'
    """
    out = check_output(out, force, inputs=config.inputs())    # before the search, not after it
    search = Search(config, progress=progress)
    n_units = len(config.models) * (1 + len(search.recipes) * (2 + 3 * len(search.runtimes)))
    search.step.open(n_units)
    try:
        search.executor.start(search)
        for spec in config.models:
            search.load_base(spec)
        reference.build(search)
        search.recipes += reference.mix_recipes(search)
        search.rows = plan_rows(search)
        search.executor.prefetch(search)         # Ray: the builds, screens and full protocols run on the cluster
        with search.budget.replay() if search.executor.name == "ray" else nullcontext():
            search.executor.apply("screen", search)
            stages.screen(search)
            search.executor.apply("full", search)
            stages.full(search)
        reference.evaluate(search)
        stages.measure(search)
        reference.measure(search)
        stages.final_predictions(search)
        search.step("pick, export and report")
    finally:
        search.step.close()
        search.executor.close()
    return finish(search, out, force=force)
