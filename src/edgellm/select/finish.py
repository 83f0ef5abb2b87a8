"""After the search: Pareto frontier, the pick (or why nothing fits), export + verify, and the outputs.

Everything lands in a temporary sibling of ``DIR`` first (``fileio.atomic_dir``): ``model/`` (the
chosen artifact, verified again where it lies, with a manifest), ``results.json``, ``report.html``
and the Pareto plots; the folder appears only when all of it is written.
Deliberately absent: exporting more than the one chosen candidate.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import EdgeLLMError
from .pareto import explain_infeasible, pareto_front, pick


def eligible(search, row) -> bool:
    """A row may be picked once its quality passed the full protocol and its speed is known:
    measured on the host, or (other devices) predicted from a calibrated cost model."""
    if row.quality.get("protocol") != "full" or row.status not in ("measured", "evaluated"):
        return False
    if search.device.measured:
        return row.status == "measured"
    return bool(row.predicted.get("calibrated"))


def finish(search, _result, out: Path, force: bool = False) -> dict:
    from ..fileio import atomic_dir, write_json
    from ..report.html import write_report
    from ..report.plots import pareto_plots

    rows = search.rows
    pool = [r for r in rows if eligible(search, r)]
    dicts = [r.to_dict() for r in pool]
    for i in pareto_front(dicts):
        pool[i].pareto = True
    best_i = pick(dicts, search.constraints, search.cfg.objective)
    chosen = pool[best_i] if best_i is not None else None
    explanation = None
    if chosen is None:
        # the measured pool; else whatever got a quality figure; else the predictions that dropped everything
        cands = pool or [r for r in rows if r.status != "dropped" and r.quality_loss is not None] or rows
        e = explain_infeasible([r.to_dict() for r in cands], search.constraints, missing_ok=not pool)
        explanation = {"binding": e["binding"], "constraints": e["constraints"],
                       "closest": [dict(cands[i].to_dict(), shortfalls=f) for i, f in zip(e["closest"], e["shortfalls"])]}
    else:
        chosen.chosen = True
    result = results_dict(search, chosen, explanation)
    with atomic_dir(out, force=force) as tmp:
        if chosen is not None:
            result["export"] = export_chosen(search, chosen, tmp / "model")
            result["export"]["path"] = str(out / Path(result["export"]["path"]).relative_to(tmp))
        result["plots"] = pareto_plots([r.to_dict() for r in rows], tmp, search.lm,
                                       predicted=not search.device.measured)
        result["elapsed_s"] = search.budget.elapsed()
        write_json(tmp / "results.json", result)
        write_report(result, tmp / "report.html")
    result["out"] = str(out)
    return result


def results_dict(search, chosen, explanation) -> dict:
    from dataclasses import asdict

    rows = [r.to_dict() for r in search.rows]
    base = next((r for r in search.rows if search.is_base(r)
                 and r.status == "measured"), None)
    vs_base = None
    if chosen is not None and base is not None:
        speed = "decode_tok_s" if search.lm else "examples_per_s"
        vs_base = {"base": base.label, "size_ratio": base.size_bytes / chosen.size_bytes,
                   "speed_ratio": getattr(chosen, speed) / getattr(base, speed),
                   "quality_loss": chosen.quality_loss}
    checks = [dict(r.host_check, label=r.label) for r in search.rows if r.host_check]
    calibrated = [c for c in checks if c.get("calibrated") and c.get("decode_error") is not None]
    loo = [c for c in checks if c.get("loo_calibration", "none") != "none" and c.get("decode_loo_error") is not None]
    return {
        "format": "edgellm-optimize/1",
        "config": asdict(search.cfg),
        "device": search.device.to_dict(),
        "device_is_host": search.device.measured,
        "figures": "measured on this host" if search.device.measured else
                   f"PREDICTED for {search.device.name} (quality measured on the host; speed and RAM predicted by "
                   f"the cost model calibrated on the host)",
        "host": search.host.to_dict(),
        "constraints": asdict(search.constraints),
        "objective": search.cfg.objective,
        "runtimes": search.runtimes,
        "recipes": [r.name for r in search.recipes],
        "rows": rows,
        "chosen": chosen.to_dict() if chosen is not None else None,
        "vs_base": vs_base,
        "infeasible": explanation,
        "calibration": search.calibration.to_dict(),
        "host_checks": checks,
        "host_decode_error_max": max((abs(c["decode_error"]) for c in calibrated), default=None),
        "host_decode_loo_error_max": max((abs(c["decode_loo_error"]) for c in loo), default=None),
        "budget": {"minutes": search.cfg.budget_minutes, "skipped": search.budget.skipped},
        "timings": {f"{k[0]}|{k[1]}": v for k, v in search.timings.items()},
        "steps": search.step_seconds,
        "notes": notes(search),
    }


def notes(search) -> list[str]:
    out = []
    for spec in search.cfg.models:
        if spec == "smollm2-135m":
            for r in search.recipes:
                q = r.steps.get("quantize")
                if q is not None and q.bits == 4 and q.group_size == 32 and not q.symmetric:
                    out.append(f"{r.name}: SmolLM2-135M shipped as Q4_1, so its weights already lie on the 4-bit g32 "
                               f"asymmetric grid; this recipe's near-zero loss is not evidence for the method.")
    if not search.device.measured:
        out.append(f"Speed, TTFT and RAM for '{search.device.name}' are predictions: {search.device.source}")
    return out


def export_chosen(search, row, dest: Path) -> dict:
    """Copy the chosen artifact into *dest* and verify it there against the model holding its weights."""
    from ..exporters.verify import verify_artifact
    from ..fileio import write_manifest
    from ..models import load, save

    recipe = search._recipe(row.recipe)
    base = search.bases[row.model]
    task = {"task": "classification"} if not search.lm else {}
    # the export module's standard check: 4,096 tokens (fewer when the search's own protocol reads fewer)
    vkw = {"ppl_tokens": min(4096, search.cfg.full_tokens), "text": search.cfg.eval_text, "ctx": search.cfg.ctx}
    source = base.loaded if recipe.is_identity else load(search.entry(row)["build"]["path"], **task)
    threads = search.cfg.threads
    if row.runtime == "llama.cpp":
        dest.mkdir(parents=True)
        target = dest / Path(row.artifact).name
        shutil.copy2(row.artifact, target)
        write_manifest(dest)
        tol = "f16" if row.kind in ("f16", "f32") else "int8-act"
        check = verify_artifact(str(target), source, "llama.cpp", tol, threads=threads, **vkw)
    elif row.runtime == "onnxruntime":
        from ..exporters.onnx import verify_classifier

        shutil.copytree(row.artifact, dest)
        target = dest
        # dynamic int8 is made from the base's fp32 graph, so that is what it is checked against
        ref = base.loaded if row.kind == "int8" else source
        check = verify_classifier(dest, ref, row.kind, threads=threads)
    else:
        if recipe.is_identity:
            save(base.loaded, dest)
        else:
            shutil.copytree(row.artifact, dest)
        target = dest
        if search.lm:
            check = verify_artifact(str(dest), source, "torch", "f32", threads=threads, **vkw)
        else:
            check = _verify_classifier(dest, source, base.data[:64], threads)
    return {"path": str(target), "runtime": row.runtime, "verification": check}


def _verify_classifier(folder: Path, source, rows, threads: int) -> dict:
    from ..models import load
    from ..runtimes.torch import TorchRuntime

    texts = [r.text for r in rows]
    a = TorchRuntime(load(str(folder), task="classification"), device="cpu", threads=threads).classify(texts)
    b = TorchRuntime(source, device="cpu", threads=threads).classify(texts)
    diff = float((a - b).abs().max())
    same = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    if diff > 1e-4 or same < 1.0:
        raise EdgeLLMError(f"the exported classifier differs from its source (max |Δlogit| {diff:.3g}, "
                           f"{100 * same:.1f}% same labels)", "re-run; report the model if it persists")
    return {"rows": len(texts), "max_abs_diff": diff, "same_label": same, "passed": True}
