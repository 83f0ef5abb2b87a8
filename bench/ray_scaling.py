"""``edgellm optimize`` locally and on Ray on this machine, and a projection of a larger search onto N nodes.

One setting per invocation (resumable), each a fresh search with its own empty cache, on the default search space
plus the GPTQ recipes:

    .venv/bin/python -m bench.ray_scaling --setting local      # in-process, --threads 2
    .venv/bin/python -m bench.ray_scaling --setting ray-1x2    # a private Ray instance: 1 worker x 2 threads
    .venv/bin/python -m bench.ray_scaling --setting ray-2x1    #                          2 workers x 1 thread
    .venv/bin/python -m bench.ray_scaling --report             # the table, the projection and the plot

Each setting stores its optimize folder's results.json under ``bench/results/raw/ray_scaling.<setting>.json``;
``--report`` writes ``bench/results/ray_scaling.json`` (rendered into docs/benchmarks.md) and
``docs/img/ray_scaling.png``. Measured per setting: wall time, time per stage (build + screen, export + full
protocol, speed, the driver's own steps), and the fraction of wall time spent in the serialized speed
measurements. **Projection** (not a measurement) for 5 models x 15 recipes on 1, 4, 16 and 64 nodes like this one,
from the Ray run's recorded task durations: the parallel phase takes max(work / task slots, critical path) (work:
the mean (model, recipe) unit's task time x 75 units; critical path: the longest unit's screen + its longest full
protocol), plus the serialized stage that does not scale: the speed measurements (5 x this run's, one node) and the
driver's steps (reference quality per model, pick, export, report). ``--model`` and extra ``optimize`` arguments
after ``--`` let a tiny model check the script end to end. Deliberately absent: a real multi-node measurement (one
machine here) and GPU nodes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import RESULTS, ROOT, stamp, write_result

SETTINGS = {"local": ("local", 2), "ray-1x2": ("ray", 2), "ray-2x1": ("ray", 1)}   # executor, threads per task
GPTQ = ("w4-gptq-g32-sym-fast",)
NODES = (1, 4, 16, 64)
PROJECTED = (5, 15)            # models x recipes
RAW = RESULTS / "raw"


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


def run_setting(name: str, model: str, extra: list[str]) -> None:
    executor, threads = SETTINGS[name]
    recipes = [str(ROOT / f"recipes/{r}.yaml") for r in GPTQ]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "edgellm.cli", "optimize", "--model", model, "--executor", executor,
               "--threads", str(threads), "--cache", f"{tmp}/cache", "--out", f"{tmp}/out", "--no-progress",
               "--recipes", *default_recipes(), *recipes, *extra]
        t0 = time.time()
        rc = subprocess.run(cmd).returncode
        wall = time.time() - t0
        if rc not in (0, 2):
            raise SystemExit(f"bench.ray_scaling: the {name} search failed (exit {rc}); nothing recorded")
        result = json.loads(Path(f"{tmp}/out/results.json").read_text())
    RAW.mkdir(parents=True, exist_ok=True)
    keep = {k: result[k] for k in ("rows", "chosen", "steps", "timings", "executor", "elapsed_s", "budget")}
    keep.update(setting=name, threads=threads, wall_s=wall, model=model, extra=extra,
                measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (RAW / f"ray_scaling.{name}.json").write_text(json.dumps(keep, indent=1))


def default_recipes() -> list[str]:
    """The default LM space's recipe files (``--recipes`` replaces the default space, so it is passed in full)."""
    from edgellm.optimization.config import OptimizeConfig
    from edgellm.optimization.space import search_recipes

    names = [r.name for r in search_recipes(OptimizeConfig())]
    return [str(p) for n in names if (p := ROOT / f"recipes/{n}.yaml").is_file()]


def projection(ray_run: dict) -> tuple[list[dict], dict]:
    """Projected wall time of a 5 x 15 search on N nodes like this one, from one Ray run's task durations."""
    tasks = ray_run["executor"]["tasks"]
    slots_per_node = max(1, int(ray_run["executor"]["cluster"]["cpus"] // ray_run["threads"]))
    units: dict[str, dict] = {}
    for t in tasks:
        if t["kind"] == "speed":
            continue
        unit = t["task"].split()[1]                           # the recipe name
        u = units.setdefault(unit, {"screen": 0.0, "full": [0.0]})
        if t["kind"] == "screen":
            u["screen"] += t["end"] - t["start"]
        else:
            u["full"].append(t["end"] - t["start"])
    work = [u["screen"] + sum(u["full"]) for u in units.values()]
    chain = max(u["screen"] + max(u["full"]) for u in units.values())
    n_units = PROJECTED[0] * PROJECTED[1]
    total_work = sum(work) / len(work) * n_units
    speed = sum(t["end"] - t["start"] for t in tasks if t["kind"] == "speed") * PROJECTED[0]
    driver = stages(ray_run).get("driver", 0.0) * PROJECTED[0]
    rows = []
    for n in NODES:
        parallel = max(total_work / (n * slots_per_node), chain)
        rows.append({"nodes": n, "task slots": n * slots_per_node, "parallel phase (min)": round(parallel / 60, 1),
                     "serialized speed (min)": round(speed / 60, 1), "driver (min)": round(driver / 60, 1),
                     "projected wall (min)": round((parallel + speed + driver) / 60, 1)})
    basis = {"units_measured": len(units), "mean_unit_work_s": round(sum(work) / len(work), 1),
             "critical_path_s": round(chain, 1), "slots_per_node": slots_per_node}
    return rows, basis


def report() -> None:
    runs = {n: json.loads((RAW / f"ray_scaling.{n}.json").read_text()) for n in SETTINGS
            if (RAW / f"ray_scaling.{n}.json").is_file()}
    if not runs:
        raise SystemExit("bench.ray_scaling: no setting measured yet (run --setting local first)")
    measured = []
    for name, r in runs.items():
        st = stages(r)
        speed = sum(t["end"] - t["start"] for t in r["executor"].get("tasks", []) if t["kind"] == "speed") \
            if r["executor"]["executor"] == "ray" else st.get("speed", 0.0)
        measured.append(stamp({"setting": name, "threads per task": r["threads"], "wall (min)": round(r["wall_s"] / 60, 2),
                               **{f"{k} (s)": v for k, v in sorted(st.items())},
                               "speed share of wall": f"{100 * speed / r['wall_s']:.1f}%",
                               "pick": (r.get("chosen") or {}).get("label")}, r["measured_at"]))
    tables = [{"title": "Measured on this machine (one search per setting, empty cache each)",
               "columns": sorted({c for row in measured for c in row if c != "measured_at"}, key=_col_order),
               "rows": measured,
               "notes": ["Ray stage times are the tasks' own durations summed over workers (they overlap in wall time)."]}]
    plots = []
    ray_run = runs.get("ray-2x1") or runs.get("ray-1x2")
    if ray_run is not None:
        proj, basis = projection(ray_run)
        tables.append({"title": f"PROJECTION (not measured): {PROJECTED[0]} models x {PROJECTED[1]} recipes on N nodes "
                                 f"like this one, from the {ray_run['setting']} run",
                       "columns": list(proj[0]), "rows": proj,
                       "notes": [f"basis: {json.dumps(basis)}; parallel phase = max(work / slots, critical path); "
                                 "speed measurements stay serialized on the one bench node"]})
        plots.append(plot(proj))
    write_result("ray_scaling", {"title": "optimize on Ray: local vs Ray on this machine, and a projection",
                                 "description": __doc__.split("\n\n")[0], "tables": tables, "plots": plots})


def _col_order(c: str) -> tuple:
    first = ["setting", "threads per task", "wall (min)"]
    return (first.index(c) if c in first else len(first), c)


def plot(rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["nodes"] for r in rows]
    ax.plot(n, [r["projected wall (min)"] for r in rows], "o-", label="projected wall")
    ax.plot(n, [r["serialized speed (min)"] + r["driver (min)"] for r in rows], "--", label="serialized floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("minutes")
    ax.set_title(f"PROJECTION: {PROJECTED[0]} models x {PROJECTED[1]} recipes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = ROOT / "docs/img/ray_scaling.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out.relative_to(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=list(SETTINGS))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    if args.setting:
        run_setting(args.setting, args.model, extra)
    if args.report or not args.setting:
        report()


if __name__ == "__main__":
    main()
