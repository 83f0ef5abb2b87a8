"""``edgellm optimize`` locally and on Ray on this machine, and a projection of a larger search onto N nodes.

One setting per invocation (a failed one is re-run alone), each a fresh search with its own empty cache, on the
default search space plus the GPTQ recipe (``--recipes`` changes the space), with a 180-minute time budget that no
setting should reach (the table counts skipped steps):

    .venv/bin/python -m bench.ray_scaling --setting local      # in-process, --threads 2
    .venv/bin/python -m bench.ray_scaling --setting ray-1x2    # a private Ray instance: tasks of 2 threads
    .venv/bin/python -m bench.ray_scaling --setting ray-2x1    #                          tasks of 1 thread
    .venv/bin/python -m bench.ray_scaling --report             # the tables, the projection and the plot

On a 2-CPU machine the Ray settings are 1 worker x 2 threads and 2 workers x 1 thread (the table shows the
cluster's CPUs and the workers that follow). Each setting stores its optimize folder's results.json, trimmed, as
``bench/results/raw/ray_scaling.<setting>.json`` (``--raw-dir``); ``--report`` writes
``bench/results/ray_scaling.json`` (``--out``; rendered into docs/benchmarks.md) and ``docs/img/ray_scaling.png``
(``--img-dir``). Measured per setting: wall time of the whole ``edgellm optimize`` process (Ray's start included),
time per stage (build + screen, export + full protocol, speed, the driver's own steps) and the fraction of wall time
spent in the serialized speed measurements. **Projection** (not a measurement) for 5 models x 15 recipes on 1, 4,
16 and 64 nodes like this one, from a Ray run's recorded task durations (ray-2x1's, else ray-1x2's): the parallel
phase takes max(work / task slots, critical path) (work: the mean (model, recipe) unit's task time x 75 units;
critical path: the longest unit's screen + its longest full protocol), plus the serialized stage that does not scale:
the speed measurements (this run's per unit, x 75 units, on the one bench node) and the driver's steps (reference
quality, pick, export, report: this run's x 5 models). ``--model``, ``--recipes`` and extra ``optimize`` arguments
after ``--`` let a tiny model check the script end to end (tests/bench_scripts/test_ray_scaling_dry.py).
Deliberately absent: a real multi-node measurement (one machine here) and GPU nodes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import RESULTS, ROOT, repo_relative, stamp, write_result
from edgellm.fileio import write_json

SETTINGS = {"local": ("local", 2), "ray-1x2": ("ray", 2), "ray-2x1": ("ray", 1)}   # executor, threads per task
GPTQ = ("w4-gptq-g32-sym-fast",)
BUDGET_MINUTES = 180           # far above any setting's wall time: a budget cut would leave rows skipped
NODES = (1, 4, 16, 64)
PROJECTED = (5, 15)            # models x recipes
PROJECTION_TITLE = f"PROJECTION (not measured): {PROJECTED[0]} models x {PROJECTED[1]} recipes on N nodes like this one"
MEASURED_TITLE = "Measured on this machine: one search per setting, empty cache each"


def stage_of(step: str) -> str:
    """The stage a driver step belongs to (``Steps`` names every unit of work by its first word).

    >>> stage_of("build w8-rtn-g32"), stage_of("full fp32 (llama.cpp)"), stage_of("pick, export and report")
    ('build+screen', 'export+full', 'driver')
    """
    word = step.split()[0].rstrip(":")
    return {"build": "build+screen", "screen": "build+screen", "export": "export+full", "full": "export+full",
            "speed": "speed"}.get(word, "driver")


def stages(result: dict) -> dict:
    """Seconds per stage: the driver's steps, and for Ray the tasks' own durations (summed over workers; the
    driver's steps that wait on tasks are left out, so nothing counts twice).

    >>> stages({"steps": [["reference quality of m", 4.0], ["speed fp32 (torch)", 3.5]],
    ...         "executor": {"tasks": [{"kind": "speed", "start": 1.0, "end": 4.0}]}})
    {'driver': 4.0, 'speed': 3.0}
    """
    out: dict[str, float] = {}
    tasks = result.get("executor", {}).get("tasks", [])
    for step, sec in result.get("steps", []):
        if step.startswith("ray:") or (tasks and stage_of(step) != "driver"):
            continue                          # the cluster's work: its tasks are counted below
        out[stage_of(step)] = out.get(stage_of(step), 0.0) + sec
    names = {"screen": "build+screen", "full": "export+full", "speed": "speed"}
    for t in tasks:
        k = names[t["kind"]]
        out[k] = out.get(k, 0.0) + t["end"] - t["start"]
    return {k: round(v, 1) for k, v in out.items()}


def recipe_paths(names: list[str]) -> list[str]:
    """Recipe files for *names*: a path as given, a name as ``recipes/<name>.yaml``.

    >>> recipe_paths(["fp32"])[0].endswith("recipes/fp32.yaml")
    True
    """
    out = []
    for n in names:
        p = Path(n) if n.endswith((".yaml", ".yml")) else ROOT / "recipes" / f"{n}.yaml"
        if not p.is_file():
            raise SystemExit(f"bench.ray_scaling: no recipe file {p}")
        out.append(str(p))
    return out


def default_recipes() -> list[str]:
    """The default LM space's recipe names plus ``GPTQ`` (``--recipes`` replaces the default space, so the
    script passes it in full)."""
    from edgellm.optimization.config import OptimizeConfig
    from edgellm.optimization.space import search_recipes

    return [r.name for r in search_recipes(OptimizeConfig())] + list(GPTQ)


def run_setting(name: str, model: str, recipes: list[str], extra: list[str], raw: Path) -> Path:
    """Run one setting's search in a fresh ``edgellm optimize`` process with an empty cache; returns its record."""
    executor, threads = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "edgellm.cli", "optimize", "--model", model, "--executor", executor,
               "--threads", str(threads), "--cache", f"{tmp}/cache", "--out", f"{tmp}/out", "--no-progress",
               "--budget-minutes", str(BUDGET_MINUTES), "--recipes", *recipe_paths(recipes), *extra]
        t0 = time.time()
        rc = subprocess.run(cmd).returncode
        wall = time.time() - t0
        found = Path(f"{tmp}/out/results.json")
        if rc not in (0, 2) or not found.is_file():      # 2 with results: no candidate met the constraints
            raise SystemExit(f"bench.ray_scaling: the {name} search failed (exit {rc}); nothing recorded")
        result = json.loads(found.read_text())
    keep = {k: result[k] for k in ("rows", "chosen", "steps", "timings", "executor", "elapsed_s", "budget", "recipes")}
    keep.update(setting=name, threads=threads, wall_s=round(wall, 2), model=repo_relative(model),
                extra=[repo_relative(e) for e in extra], measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    raw.mkdir(parents=True, exist_ok=True)
    return write_json(raw / f"ray_scaling.{name}.json", keep)


def projection(ray_run: dict) -> tuple[list[dict], dict]:
    """Projected wall time of a 5 x 15 search on N nodes like this one, from one Ray run's task durations."""
    tasks = ray_run["executor"]["tasks"]
    slots_per_node = max(1, int(ray_run["executor"]["cluster"]["cpus"] // ray_run["threads"]))
    units: dict[str, dict] = {}
    for t in tasks:
        if t["kind"] == "speed":
            continue
        name = t["task"].split()
        unit = f"{name[1]} {name[-1]}"                           # the recipe and the [model]
        u = units.setdefault(unit, {"screen": 0.0, "full": [0.0]})
        if t["kind"] == "screen":
            u["screen"] += t["end"] - t["start"]
        else:
            u["full"].append(t["end"] - t["start"])
    work = [u["screen"] + sum(u["full"]) for u in units.values()]
    chain = max(u["screen"] + max(u["full"]) for u in units.values())
    n_units = PROJECTED[0] * PROJECTED[1]
    total_work = sum(work) / len(work) * n_units
    speed = sum(t["end"] - t["start"] for t in tasks if t["kind"] == "speed") / len(units) * n_units
    driver = stages(ray_run).get("driver", 0.0) * PROJECTED[0]
    rows = []
    for n in NODES:
        parallel = max(total_work / (n * slots_per_node), chain)
        rows.append({"nodes": n, "task slots": n * slots_per_node, "parallel phase (min)": round(parallel / 60, 1),
                     "serialized speed (min)": round(speed / 60, 1), "driver (min)": round(driver / 60, 1),
                     "projected wall (min)": round((parallel + speed + driver) / 60, 1)})
    basis = {"units_measured": len(units), "mean_unit_work_s": round(sum(work) / len(work), 1),
             "critical_path_s": round(chain, 1), "slots_per_node": slots_per_node,
             "speed_per_unit_s": round(speed / n_units, 1), "driver_per_model_s": round(driver / PROJECTED[0], 1)}
    return rows, basis


def measured_row(name: str, r: dict) -> dict:
    """One setting's row of the measured table."""
    st = stages(r)
    ex = r["executor"]
    cpus = ex.get("cluster", {}).get("cpus")
    speed = st.get("speed", 0.0)
    return stamp({"setting": name, "threads per task": r["threads"],
                  "workers": int(cpus // r["threads"]) if cpus else 1, "cluster CPUs": cpus,
                  "wall (min)": round(r["wall_s"] / 60, 2), **{f"{k} (s)": v for k, v in sorted(st.items())},
                  "speed share of wall": f"{100 * speed / r['wall_s']:.1f}%",
                  "tasks": len(ex.get("tasks", [])) or None, "retries": ex.get("retries"),
                  "skipped": len(r["budget"]["skipped"]),
                  "pick": (r.get("chosen") or {}).get("label")}, r["measured_at"])


def report(raw: Path, out: Path, img_dir: Path) -> Path:
    """Write the measured table, the projection table and its plot from the settings recorded in *raw*."""
    runs = {n: json.loads((raw / f"ray_scaling.{n}.json").read_text()) for n in SETTINGS
            if (raw / f"ray_scaling.{n}.json").is_file()}
    if not runs:
        raise SystemExit("bench.ray_scaling: no setting measured yet (run --setting local first)")
    measured = [measured_row(n, r) for n, r in runs.items()]
    tables = [{"title": MEASURED_TITLE,
               "columns": sorted({c for row in measured for c in row if c != "measured_at"}, key=_col_order),
               "rows": measured,
               "notes": ["Ray stage times are the tasks' own durations summed over workers (they overlap in wall "
                         "time); the local search's are its steps. Wall time is the whole optimize process, Ray's "
                         "start included.",
                         f"Recipes: {', '.join(next(iter(runs.values()))['recipes'])}."]}]
    plots = []
    ray_run = runs.get("ray-2x1") or runs.get("ray-1x2")
    if ray_run is not None:
        proj, basis = projection(ray_run)
        tables.append({"title": PROJECTION_TITLE, "columns": list(proj[0]), "rows": proj,
                       "notes": [f"From the {ray_run['setting']} run; basis: {json.dumps(basis)}.",
                                 "parallel phase = max(work / task slots, critical path); the speed measurements "
                                 "stay serialized on the one bench node; a projection, not a measurement."]})
        plots.append(plot(proj, img_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_result(out, {"title": "optimize on Ray: local vs Ray on this machine, and a projection",
                              "description": __doc__.split("\n\n")[0], "tables": tables, "plots": plots})


def _col_order(c: str) -> tuple:
    first = ["setting", "threads per task", "workers", "cluster CPUs", "wall (min)"]
    last = ["speed share of wall", "tasks", "retries", "skipped", "pick"]
    return (first.index(c) if c in first else len(first) + 1 + last.index(c) if c in last else len(first), c)


def plot(rows: list[dict], img_dir: Path) -> str:
    """The projection as a log-log plot of wall time over nodes; returns its repository-relative path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["nodes"] for r in rows]
    ax.plot(n, [r["projected wall (min)"] for r in rows], "o-", label="projected wall")
    ax.plot(n, [r["serialized speed (min)"] + r["driver (min)"] for r in rows], "--", label="serialized floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("nodes")
    ax.set_ylabel("minutes")
    ax.set_title(f"PROJECTION (not measured): {PROJECTED[0]} models x {PROJECTED[1]} recipes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    img_dir.mkdir(parents=True, exist_ok=True)
    path = img_dir / "ray_scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return repo_relative(str(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=list(SETTINGS))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipes", nargs="+", default=None, help="recipe names or files (default: the default "
                    f"space + {', '.join(GPTQ)})")
    ap.add_argument("--raw-dir", type=Path, default=RESULTS / "raw")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_scaling.json")
    ap.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    args, extra = ap.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    if args.setting:
        run_setting(args.setting, args.model, args.recipes or default_recipes(), extra, args.raw_dir)
    if args.report or not args.setting:
        report(args.raw_dir, args.out, args.img_dir)


if __name__ == "__main__":
    main()
