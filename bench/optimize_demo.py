"""The default demo's figures: ``edgellm optimize`` on SmolLM2 for the host, turned into a benchmark record.

Reads an optimize output folder (``results.json``), or runs the search first, and writes
``bench/results/optimize_demo.json`` (summary table, host prediction-vs-measurement, the pick
against fp32), keeps the search's raw ``results.json`` beside it as
``bench/results/raw/optimize_demo.results.json`` (the file the README table summarises), takes a
screenshot of the report (``docs/img/optimize_demo_report.png``, headless Chromium when installed),
then re-renders docs/benchmarks.md. When the search fails, it exits non-zero and records nothing:
it never falls back on an earlier run's results.json.

Run from the repository root:
     .venv/bin/python -m bench.optimize_demo --out out/demo     (runs the demo: ≤ 15 min, 2 threads)
     .venv/bin/python -m bench.optimize_demo --from out/demo    (only reads an existing run)
     add --name NAME --title "..." to record another search; other arguments go to ``edgellm optimize``
     (e.g. ``--model smollm2-135m --model out/student``)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import RESULTS, ROOT, repo_relative, stamp, write_result
from edgellm.fileio import write_json
from edgellm.report.html import summary_rows


def shown_paths(r: dict) -> dict:
    """*r* with its paths as the repository shows them: the search's ``--cache`` folder as ``<cache>``, the
    rest through ``repo_relative`` (the cache, the virtual environment, the home folder)."""
    text = json.dumps(r)
    cache = (r.get("config") or {}).get("cache")
    if cache:
        text = text.replace(json.dumps(str(Path(cache).resolve()))[1:-1], "<cache>")
        text = text.replace(json.dumps(cache)[1:-1], "<cache>")
    return json.loads(repo_relative(text))


def describe(c: dict) -> str:
    """What the record's quality and speed columns mean, from the search's own config."""
    speed = (f"speed is measured on this host in a {'fresh subprocess' if not c.get('speed_in_process') else 'the search process'} "
             f"(median of {c.get('speed_runs', 5)} runs")
    if c.get("task") == "classification":
        rows = f"{c['max_rows']} rows" if c.get("max_rows") else "all rows"
        rows_file = repo_relative(c.get("tsv") or "SST-2 dev")
        return (f"Quality is the relative drop in accuracy against the fp32 base on the same labelled rows ({rows_file}, "
                f"{rows}; screen {c['screen_rows']} rows with early rejection); {speed}, examples/s).")
    if c.get("task_data"):
        return (f"Quality is the drop in exact match (points) against the fp32 base on the task's examples ({repo_relative(c['task_data'])}); "
                f"{speed}, greedy {c['new_tokens']} new tokens after a {c['prompt_len']}-token prompt).")
    return (f"Quality is the relative perplexity increase over the fp32 base on the same {repo_relative(c.get('eval_text') or 'wikitext-2 test')} "
            f"tokens (ctx {c['ctx']}, {c['full_tokens']} tokens; screen {c['screen_tokens']} tokens with early rejection); "
            f"{speed}, greedy {c['new_tokens']} new tokens after a {c['prompt_len']}-token prompt).")


def screenshot(report: Path, png: Path) -> bool:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp}", f"--screenshot={png}", "--window-size=1280,1700",
                        report.resolve().as_uri()], capture_output=True, timeout=120)
    return png.is_file()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/demo", help="optimize output folder to create")
    ap.add_argument("--from", dest="src", default=None, help="read an existing optimize output folder instead")
    ap.add_argument("--name", default="optimize_demo")
    ap.add_argument("--title", default="edgellm optimize: the default demo (SmolLM2-135M, --device host)")
    args, extra = ap.parse_known_args()
    folder = Path(args.src or args.out)
    wall, optimize_argv = None, None
    if args.src is None:
        cmd = [sys.executable, "-m", "edgellm.cli", "optimize", "--out", args.out, "--force", *extra]
        optimize_argv = ["edgellm", *cmd[3:]]
        t0 = time.time()
        rc = subprocess.run(cmd, check=False).returncode
        wall = time.time() - t0
        if rc != 0:
            raise SystemExit(f"bench.optimize_demo: `{repo_relative(' '.join(optimize_argv))}` failed (exit {rc}); "
                             f"nothing recorded, bench/results/{args.name}.json is unchanged")
    results_json = folder / "results.json"
    if not results_json.is_file():
        raise SystemExit(f"bench.optimize_demo: {repo_relative(str(results_json))} not found: run the search "
                         "(--out) or name a finished optimize output folder (--from)")
    r = json.loads(results_json.read_text())
    finished = datetime.datetime.fromtimestamp(results_json.stat().st_mtime, datetime.timezone.utc)
    when = finished.strftime("%Y-%m-%dT%H:%M:%SZ")          # the search wrote its figures then
    rows = [stamp(x, when) for x in summary_rows(r)]
    checks = [{"candidate": c["label"], "calibrated by": c["calibration"], "decode measured": round(c["decode_measured"], 2),
               "decode predicted (before)": round(c["decode_predicted"], 2),
               "error (before)": f"{100 * c['decode_error']:+.1f}%",
               "decode predicted (leave-one-out)": round(c.get("decode_loo_predicted") or 0, 2),
               "error (leave-one-out)": f"{100 * c['decode_loo_error']:+.1f}%" if c.get("decode_loo_error") is not None else "-",
               "LOO calibrated by": c.get("loo_calibration"),
               "RAM error (LOO)": f"{100 * c['ram_loo_error']:+.1f}%" if c.get("ram_loo_error") is not None else "-",
               "measured_at": when}
              for c in r["host_checks"] if c.get("decode_measured")]
    png = ROOT / "docs" / "img" / f"{args.name}_report.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plots = [f"docs/img/{png.name}"] if screenshot(folder / "report.html", png) else []
    vb = r.get("vs_base") or {}
    unit = "examples/s" if r["config"].get("task") == "classification" else "decode"
    notes = [f"chosen: {r['chosen']['label']}" + (f" — {vb['size_ratio']:.2f}x smaller and {vb['speed_ratio']:.2f}x faster "
                                                  f"({unit}) than {vb['base']}, quality loss {100 * vb['quality_loss']:+.2f}%"
                                                  if vb else "") if r.get("chosen") else
             f"nothing met the constraints; binding: {r['infeasible']['binding']}",
             f"search wall time {r['elapsed_s'] / 60:.1f} min (budget {r['budget']['minutes']} min, "
             f"{r['config']['threads']} threads); skipped: {len(r['budget']['skipped'])}"] + r.get("notes", [])
    for v in r.get("vs_reference") or []:           # the pick against llama.cpp's own files (reference rows)
        notes.append(f"pick vs {v['reference']}: size {v['size_ratio']:.2f}x, perplexity rise "
                     f"{100 * v['quality_loss']:+.2f}% vs {100 * v['reference_quality_loss']:+.2f}% "
                     f"({v['loss_ratio']:.2f}x), decode speed {v['speed_ratio']:.2f}x"
                     + (f" (paired, {v['speed_rounds']} rounds)" if v.get("speed_paired") else " (medians)"))
    result = {
        "title": args.title, "optimize_argv": optimize_argv and [repo_relative(a) for a in optimize_argv],
        "raw_results": f"bench/results/raw/{args.name}.results.json",
        "description": describe(r["config"]),
        "machine": {**r["host"]["details"], "measured_bandwidth_GBps": r["host"]["mem_bandwidth_GBps"]},
        "tables": [{"title": "Candidates", "columns": [c for c in rows[0] if c != "measured_at"] if rows else [],
                    "rows": rows, "notes": notes},
                   {"title": "Cost model on this host: decode prediction vs measurement",
                    "columns": [c for c in checks[0] if c != "measured_at"] if checks else [], "rows": checks}],
        "plots": plots, "wall_seconds": wall or r["elapsed_s"],
    }
    write_json(RESULTS / "raw" / f"{args.name}.results.json", shown_paths(r))   # the raw search the table summarises
    write_result(args.name, result, machine=result["machine"])
    print(json.dumps({"chosen": (r.get("chosen") or {}).get("label"), "vs_base": vb, "wall_s": result["wall_seconds"]}))


if __name__ == "__main__":
    main()
