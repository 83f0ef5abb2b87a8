"""Issue 21's fine-tune figures: a finished ``make smart-home`` fine-tune (or its first steps) turned into a record.

Reads the folder ``make smart-home`` writes (default ``out/smart_home``):
``ft/distill/summary.json`` (steps, examples and tokens seen, seconds, the last validation),
``dev_eval.json`` (``edgellm eval --task-data dev.jsonl``: held-out phrasings) and, when present,
``ft_commands_eval.json`` (the same on the 30 test commands) and ``base_commands_eval.json`` (the base model
with worked examples), and writes ``bench/results/smart_home_ft.json`` (exact match with its 95% Wilson
interval, schema validity, latency per example) plus the fine-tune curve as
``docs/img/smart_home_finetune.png``. It never re-runs anything: the figures are the run's own, measured
on the machine that ran it (this one, whose ``machine_info()`` goes in the envelope).

    make smart-home                      # or its first three commands: generate, finetune, eval
    .venv/bin/edgellm eval out/smart_home/ft --task-data examples/smart_home/commands.jsonl \\
        --schema examples/smart_home/schema.json --constrained --threads 2 --json out/smart_home/ft_commands_eval.json
    .venv/bin/python -m bench.smart_home_ft --from out/smart_home

Deliberately absent: the optimize pick and the served score (``examples/smart_home/score.py`` writes those).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench._common import ROOT, repo_relative, write_result

EVALS = (("ft_commands_eval.json", "fine-tuned fp32", "30 test commands"),
         ("dev_eval.json", "fine-tuned fp32", "dev: held-out phrasings"),
         ("base_commands_eval.json", "base + worked examples", "30 test commands"))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def task_row(ev: dict, artifact: str, on: str) -> dict:
    """One table row from an ``edgellm eval --task-data --json`` file."""
    lo, hi = ev["interval"]
    return {"artifact": artifact, "runtime": ev["runtime"], "examples": on, "n": ev["n"],
            "exact": f"{ev['exact_match']}/{ev['n']}", "exact 95% CI": f"{_pct(lo)}–{_pct(hi)}",
            "schema-valid": f"{ev['schema_valid']}/{ev['n']}", "constrained": ev["constrained"],
            "latency s": round(ev["mean_latency_s"], 3), "prompt tokens": round(ev["mean_prompt_tokens"], 1)}


def build(folder: Path, img: Path | None) -> dict:
    summary = json.loads((folder / "ft" / "distill" / "summary.json").read_text())
    ft = {"model": summary["student"], "steps": summary["steps"], "batch": summary["config"]["batch_size"],
          "examples seen": summary["examples_seen"], "tokens seen": summary["tokens_seen"],
          "train s": round(summary["train_seconds"], 1), "total s": round(summary["total_seconds"], 1),
          "LoRA rank": summary["config"]["rank"], "lr": summary["config"]["lr"],
          "final val exact": summary["final_eval"].get("val_exact"), "final val nll": summary["final_eval"]["val_nll"]}
    rows = [task_row(json.loads((folder / f).read_text()), art, on) for f, art, on in EVALS if (folder / f).exists()]
    if not rows:
        raise SystemExit(f"bench.smart_home_ft: no eval JSON in {repo_relative(str(folder))} (run the eval step first)")
    plots = []
    curve = folder / "ft" / "distill" / "curves.png"
    if img is not None and curve.exists():
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curve, img)
        plots.append(repo_relative(str(img)))
    return {"title": "Smart-home fine-tune (issue 21): SmolLM2-135M, LoRA on generated commands",
            "description": "LoRA fine-tune of SmolLM2-135M-Instruct on examples/smart_home/generate.py's training set "
                           "(loss on the completion tokens only, the model's chat template), then exact match of "
                           "the parsed JSON action, decoding constrained to schema.json, through `edgellm eval "
                           "--task-data` on torch. Intervals are 95% Wilson intervals. Train seconds exclude model "
                           "load and the merge; total seconds include them.",
            "source": repo_relative(str(folder)),
            "tables": [{"title": "Fine-tune", "columns": list(ft), "rows": [ft]},
                       {"title": "Task accuracy", "columns": list(rows[0]), "rows": rows}],
            "plots": plots}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default="out/smart_home", help="the make smart-home output folder")
    ap.add_argument("--out", default="smart_home_ft", help="result name in bench/results/, or a .json path")
    ap.add_argument("--img", default=str(ROOT / "docs" / "img" / "smart_home_finetune.png"),
                    help="where the fine-tune curve is copied ('' for nowhere)")
    args = ap.parse_args(argv)
    result = build(Path(args.src), Path(args.img) if args.img else None)
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()
