"""The end of a run: the curves PNG and the output HF folder (weights, tokenizer, logs, manifest).

The folder (a plain HF model, or a LoRA adapter folder when the caller passes ``save``) is
written atomically; ``distill/`` inside it holds ``train.jsonl``,
``eval.jsonl``, ``summary.json`` and ``curves.png``. Deliberately absent: interactive plots.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_dir, write_json, write_manifest


def plot_curves(train: list[dict], evals: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Training loss (total, hard, soft) and the validation metric against the step, as a PNG.

    Returns None when matplotlib is not installed (``pip install 'edgellm[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["step"] for r in train]
    for key, style in (("loss", "-"), ("hard", ":"), ("soft", "--")):
        ys = [r.get(key) for r in train]
        if any(y for y in ys):
            a.plot(steps, ys, style, label=key)
    a.set_xlabel("step"), a.set_ylabel("training loss"), a.legend(), a.grid(alpha=0.3)
    metric = "val_accuracy" if evals and "val_accuracy" in evals[0] else "val_nll"
    pts = [(e["step"], e[metric]) for e in evals if metric in e]
    if pts:
        b.plot(*zip(*pts), "o-")
    b.set_xlabel("step"), b.set_ylabel(metric.replace("_", " ")), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(student, out, logs: dict, result, force: bool, teacher: str | None, total_seconds: float,
                  save=None) -> str | None:
    """Save the student as a plain HF folder with the run's logs and curves; returns the PNG path.

    *save(folder)*, when given, writes the model files instead of ``save_pretrained`` (a LoRA adapter folder).
    """
    out = Path(out)
    summary = {"teacher": teacher, "student": student.meta.name, "steps": result.steps,
               "tokens_seen": result.tokens_seen, "examples_seen": result.examples_seen,
               "train_seconds": result.wall_seconds, "total_seconds": total_seconds, "final_loss": result.final_loss,
               "final_eval": result.evals[-1] if result.evals else None, "config": result.config,
               "kept_layers": student.meta.edgellm.get("kept_layers")}
    with atomic_dir(out, force=force, inputs=(student.meta.source,)) as tmp:
        if save is not None:
            save(tmp)
        else:
            student.model.config.edgellm = {"distill": {k: summary[k] for k in ("teacher", "steps", "tokens_seen", "kept_layers")}}
            student.model.save_pretrained(tmp, safe_serialization=True)
        if student.tokenizer is not None:
            student.tokenizer.save_pretrained(tmp)
        logdir = tmp / "distill"
        logdir.mkdir()
        for name, rows in logs.items():
            (logdir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(logdir / "summary.json", summary)
        png = plot_curves(logs["train.jsonl"], logs["eval.jsonl"], logdir / "curves.png",
                          title=f"{student.meta.name} ← {teacher or 'labels'}")
        write_manifest(tmp)
    return str(out / "distill" / "curves.png") if png else None
