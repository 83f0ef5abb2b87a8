"""After the search: the pick (or why nothing fits), the chosen model's export, and the outputs in ``DIR``.

When the speed pick's measured spread overlaps the runner-up's, paired rounds decide it
(``pick.settle_noise``) and ``results.json["pick_confidence"]`` says how sure the pick is.
llama.cpp's own quantizer's rows are ``results.json["references"]`` (never picked), and
``["vs_reference"]`` compares the pick with each (``reference.compare``).
Everything lands in a temporary sibling of ``DIR`` first (``fileio.atomic_dir``): ``model/`` (the
chosen artifact, verified again where it lies, with a manifest), ``results.json``, ``report.html``,
the Pareto plots and, with the Ray executor, the task timeline; the folder appears only when all of it is written.
Deliberately absent: exporting more than the one chosen candidate.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..fileio import atomic_dir, write_json
from ..report.html import write_report
from ..report.plots import pareto_plots
from ..report.timeline import timeline_plot
from . import reference
from .deploy import export_chosen
from .litert import export_chosen_litert
from .pick import choose, settle_noise


def finish(search, out: Path, force: bool = False) -> dict:
    """Pick among the search's rows, export the chosen one to ``out/model`` and write the report; returns results.json's dict.

    >>> finish(search, Path("out/demo"))["chosen"]["label"]      # doctest: +SKIP
    'smollm2-135m · w8-rtn-g32 · llama.cpp'
    """
    rows = search.rows
    chosen, explanation = choose(rows, search.constraints, search.cfg.objective, search.device.measured)
    confidence = None
    if chosen is not None and search.device.measured and search.lm:
        chosen, confidence = settle_noise(rows, chosen, search.constraints, search.cfg.objective, speed_spreads(search),
                                          lambda row: open_row(search, row), search.cfg.paired_rounds,
                                          search.cfg.prompt_len, search.cfg.new_tokens)
    result = results_dict(search, chosen, explanation)
    result["pick_confidence"] = confidence
    result["vs_reference"] = reference.compare(search, chosen, lambda row: open_row(search, row))
    with atomic_dir(out, force=force, inputs=search.cfg.inputs()) as tmp:
        if chosen is not None:
            result["export"] = (export_chosen_litert if chosen.runtime == "litert" else export_chosen)(
                search, chosen, tmp / "model")
            result["export"]["path"] = str(out / Path(result["export"]["path"]).relative_to(tmp))
        result["plots"] = pareto_plots([r.to_dict() for r in rows], tmp, search.lm,
                                       predicted=not search.device.measured,
                                       references=[r.to_dict() for r in search.references])
        result["plots"] += timeline_plot(result["executor"].get("tasks", []), tmp)
        result["elapsed_s"] = search.budget.elapsed()
        write_json(tmp / "results.json", result)
        write_report(result, tmp / "report.html")
    result["out"] = str(out)
    return result


def speed_spreads(search) -> dict:
    """label -> (min, max) of the measured decode tok/s runs of every row measured on the host."""
    out = {}
    for row in search.rows:
        if row.status == "measured":
            s = (search.entry(row).get(f"speed_{row.runtime}") or {}).get("result", {}).get("speed", {})
            d = s.get("decode_tok_s") or {}
            if d.get("min") is not None and d.get("max") is not None:
                out[row.label] = (d["min"], d["max"])
    return out


def open_row(search, row):
    """The row's artifact opened on its runtime, in this process (for paired speed rounds)."""
    from ..runtimes import open_runtime

    spec = row.artifact or row.model
    return open_runtime(spec, runtime=row.runtime, threads=search.cfg.threads,
                        **({"device": "cpu"} if row.runtime == "torch" else {}))


def results_dict(search, chosen, explanation) -> dict:
    """results.json's content: the config, the device and host, every row, the choice, the calibration and timings."""
    rows = [with_provenance(search, r) for r in search.rows]
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
        "references": [with_provenance(search, r) for r in search.references],   # never picked
        "chosen": with_provenance(search, chosen) if chosen is not None else None,
        "vs_base": vs_base,
        "infeasible": explanation,
        "calibration": search.calibration.to_dict(),
        "host_checks": checks,
        "host_decode_error_max": max((abs(c["decode_error"]) for c in calibrated), default=None),
        "host_decode_loo_error_max": max((abs(c["decode_loo_error"]) for c in loo), default=None),
        "budget": {"minutes": search.cfg.budget_minutes, "skipped": search.budget.skipped},
        "timings": {f"{k[0]}|{k[1]}": v for k, v in search.budget.timings.items()},
        "steps": search.step.seconds,
        "executor": search.executor.summary(),     # Ray: the cluster and its task timeline (report.timeline)
        "notes": notes(search),
        "cache": {"fresh": search.cfg.fresh, "host": search.entries.host, "code": search.entries.code,
                  "from_cache": sum(bool(r["from_cache"]) for r in rows)},
    }


# the entry field holding a row's full-protocol quality, by task (LM?) and runtime
QUALITY_FIELDS = {(True, "torch"): "nlls", (False, "torch"): "flags", (True, "llama.cpp"): "gguf_nlls",
                  (False, "llama.cpp"): "gguf_flags", (False, "onnxruntime"): "onnx_flags",
                  (True, "litert"): "litert_nlls", (False, "litert"): "litert_flags"}


def with_provenance(search, row) -> dict:
    """The row's dict with where its figures come from: ``provenance`` per figure (quality; speed and RAM when
    measured on the host) as ``{"measured_at", "from_cache"}``, ``from_cache`` (any figure reused from the cache)
    and ``measured_at`` (the oldest figure's UTC time)."""
    d = row.to_dict()
    recipe = search.recipe(row.recipe)
    prov = {}
    if row.quality and row.model in search.entries.fingerprints:
        field = QUALITY_FIELDS.get((search.lm and search.task is None, row.runtime))    # a task keeps flags
        if field and (p := search.entries.provenance(row.model, recipe, field)):
            prov["quality"] = p
    if row.status == "measured" and (p := search.entries.provenance(row.model, recipe, f"speed_{row.runtime}")):
        prov["speed"] = p
    times = [p["measured_at"] for p in prov.values() if p.get("measured_at")]
    d.update(provenance=prov, from_cache=any(p["from_cache"] for p in prov.values()),
             measured_at=min(times) if times else None)
    return d


def notes(search) -> list[str]:
    """Caveats a reader of the report needs (a recipe's result that is no evidence; predicted figures)."""
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
