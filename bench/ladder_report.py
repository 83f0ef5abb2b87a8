"""The report side of bench/ladder.py: issue 17's verdict per (model, reference), the table rows and the plot.

``verdict`` applies the three conditions (no larger, paired decode ratio >= 0.97, perplexity rise at most
half the reference's on both texts) and says whether a win counts as evidence (not when the file holds an
asymmetric block-32 type, Q4_1/Q5_1, on a model whose shipped grid is one). ``summarize`` turns one model's
cached measurements into its ladder entry and table rows; ``plot`` draws size against rise (symlog) with
llama.cpp's presets as a curve and edgellm's picks as points. Measuring is left to bench/ladder.py.
"""

from __future__ import annotations

from pathlib import Path

from bench._common import repo_relative

ASYMMETRIC_B32 = {"Q4_1", "Q5_1"}             # hold a Q4_1 grid (Q5_1 with half the scale); Q5_K falls back to Q5_1
TEXTS = ("wikitext", "sst2")


def verdict(ref: dict, ours: dict, decode_ratio: float | None, privileged: bool) -> dict:
    """Issue 17's three conditions for *ours* against *ref*, and whether a win counts as evidence.

    *ref* and *ours*: ``{"bytes": int, "rise": {"wikitext": %, "sst2": %}, "types": {"Q4_0": n, ...}}``;
    *decode_ratio*: ours ÷ reference (paired median); *privileged*: the model's shipped grid is asymmetric
    block-32 (SmolLM2 as shipped), so a file holding Q4_1/Q5_1 proves nothing. Missing figures give None.

    >>> v = verdict({"bytes": 100, "rise": {"wikitext": 6.0, "sst2": 8.0}, "types": {"Q4_0": 9}},
    ...             {"bytes": 99, "rise": {"wikitext": 2.9, "sst2": 3.5}, "types": {"Q5_1": 2, "Q4_0": 7}}, 0.99, True)
    >>> v["conditions_met"], v["asymmetric_types"], v["evidence"], v["met"]
    (True, ['Q5_1'], False, False)
    """
    size_ok = ours["bytes"] <= ref["bytes"]
    speed_ok = None if decode_ratio is None else decode_ratio >= 0.97
    quality = {}
    for t in TEXTS:
        a, b = ref.get("rise", {}).get(t), ours.get("rise", {}).get(t)
        quality[t] = None if a is None or b is None else b <= 0.5 * a
    asym = sorted(k for k in ours.get("types", {}) if k.upper() in ASYMMETRIC_B32)
    checks = [size_ok, speed_ok, *quality.values()]
    conditions = None if None in checks else all(checks)
    evidence = not (privileged and asym)
    return {"size_ok": size_ok, "speed_ok": speed_ok, "quality_ok": quality, "conditions_met": conditions,
            "asymmetric_types": asym, "evidence": evidence, "met": bool(conditions) and evidence}


def summarize(m, refs: list, sel: dict, ev: dict, sp: dict) -> dict:
    """One model's ladder entry (files, held-out perplexities, base, per reference: the reference, edgellm's pick,
    paired ratios, verdict, candidates by held-out perplexity) and its table ``rows``, from what is measured so far.

    *m* is bench.ladder's ``Model``; *sel*, *ev*, *sp* what its select, eval and speed steps return.
    """
    files, base = m.built(), ev.get("f32", {})

    def rise(name):
        return {t: 100 * (ev[name][t]["perplexity"] / base[t]["perplexity"] - 1)
                for t in TEXTS if t in ev.get(name, {}) and t in base}

    def info(name):
        return {"file": name, "bytes": files[name]["bytes"], "types": files[name]["tensor_types"], "rise": rise(name),
                "ppl": {t: ev[name][t]["perplexity"] for t in ev.get(name, {})},
                "tokens": {t: ev[name][t]["n_tokens"] for t in ev.get(name, {})}, "heldout_ppl": sel["heldout_ppl"].get(name)}

    rows, out = [], {"privileged_grid": m.privileged, "files": {n: {k: v for k, v in e.items() if k != "command"}
                                                               for n, e in files.items()},
                     "heldout_ppl": sel["heldout_ppl"], "base": info("f32") if "f32" in files else None, "ladder": {},
                     # the pool is every file in the cache folder: the invocations that built it, oldest first
                     "build_commands": list(dict.fromkeys(e["command"] for e in sorted(
                         files.values(), key=lambda e: e.get("measured_at", "")) if e.get("command")))}
    for q in refs:
        if f"ref-{q}" not in files:
            continue
        ref, pick = info(f"ref-{q}"), sel["picks"].get(q, {}).get("pick")
        ours = info(pick) if pick else None
        ratio = sp.get(q, {}).get("decode_ratio")
        v = verdict(ref, ours, ratio, m.privileged) if ours else None
        out["ladder"][q] = {"reference": ref, "edgellm": ours, "decode_ratio": ratio,
                            "prefill_ratio": sp.get(q, {}).get("prefill_ratio"), "verdict": v,
                            "candidates_by_heldout_ppl": sel["picks"].get(q, {}).get("candidates", []),
                            "speed_checked": sel["picks"].get(q, {}).get("speed_checked", [])}

        def pct(d, t):
            return None if d is None or t not in d["rise"] else round(d["rise"][t], 2)

        rows.append({"reference": f"{q.upper()} + imatrix", "ref MB": round(ref["bytes"] / 1e6, 3),
                     "ref wikitext rise %": pct(ref, "wikitext"), "ref SST-2 rise %": pct(ref, "sst2"),
                     "edgellm file": pick, "MB": round(ours["bytes"] / 1e6, 3) if ours else None,
                     "wikitext rise %": pct(ours, "wikitext"), "SST-2 rise %": pct(ours, "sst2"),
                     "decode ratio": round(ratio, 3) if ratio is not None else None,
                     "types": ", ".join(f"{k}×{n}" for k, n in sorted(ours["types"].items())) if ours else None,
                     "evidence": None if not v else ("yes" if v["evidence"] else "no: " + "/".join(v["asymmetric_types"])),
                     "met": None if not v or v["conditions_met"] is None else ("MET" if v["met"] else "not met")})
    out["rows"] = rows
    base_held = sel["heldout_ppl"].get("f32")
    out["candidates"] = [
        {"model": m.label, "file": n, "MB": round(e["bytes"] / 1e6, 3), "held-out ppl": round(sel["heldout_ppl"][n], 3),
         "held-out rise %": round(100 * (sel["heldout_ppl"][n] / base_held - 1), 2) if base_held else None,
         "wikitext rise %": round(r["wikitext"], 2) if "wikitext" in r else None,
         "SST-2 rise %": round(r["sst2"], 2) if "sst2" in r else None,
         "types": ", ".join(f"{k}×{c}" for k, c in sorted(e["tensor_types"].items()))}
        for n, e in sorted(files.items(), key=lambda x: (x[1]["bytes"], x[0]))
        if n != "f32" and n in sel["heldout_ppl"] for r in [rise(n)]]
    return out


def plot(label: str, model: dict, path: Path) -> Path | None:
    """Size against perplexity rise (symlog) on each text: llama.cpp's ladder as a curve, edgellm's picks as points.

    Written to *path* atomically; None (nothing drawn) while no reference has a measured rise.

    >>> plot("smollm2-135m", models["smollm2-135m"], Path("docs/img/ladder_smollm2-135m.png"))   # doctest: +SKIP
    PosixPath('docs/img/ladder_smollm2-135m.png')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgellm.fileio import atomic_file

    lad = model["ladder"]
    refs = sorted((v["reference"] for v in lad.values()), key=lambda r: r["bytes"])
    ours = {v["edgellm"]["file"]: v["edgellm"] for v in lad.values() if v["edgellm"]}
    if not any(r["rise"] for r in refs):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, t, title in zip(axes, TEXTS, ("wikitext-2 test", "SST-2 sentences")):
        pts = [(r["bytes"] / 1e6, r["rise"][t], r["file"][4:].upper()) for r in refs if t in r["rise"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o--", color="tab:gray", label="llama.cpp + imatrix")
            for x, y, s in pts:
                ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:gray")
        mine = [(o["bytes"] / 1e6, o["rise"][t], n) for n, o in ours.items() if t in o["rise"]]
        if mine:
            ax.plot([p[0] for p in mine], [p[1] for p in mine], "s", color="tab:blue", label="edgellm pick")
            for x, y, s in mine:
                ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
        ax.set_yscale("symlog", linthresh=0.5)
        ax.set(xlabel="file size (MB, on disk)", ylabel="perplexity rise vs F32 GGUF, % (symlog)",
               title=f"{label}: {title} (linear within ±0.5%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, mode="wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path


def report(a, models: dict, rows: list, plots: list, seconds: float) -> dict:
    """The result file's fields (``write_result`` adds the envelope) from every model's summary and *a*, the
    parsed arguments of bench/ladder.py."""
    verdicts = [v["verdict"] for r in models.values() for v in r["ladder"].values()]
    met = bool(verdicts) and len(verdicts) == len(a.models) * len(a.refs) and all(v and v["met"] for v in verdicts)
    notes = [
        f"Perplexity through llama.cpp ({a.threads} threads), ctx {a.ctx}, non-overlapping windows over the first "
        f"{a.max_tokens:,} tokens (or all there are) of the wikitext-2 test and of the SST-2 dev+test sentences joined "
        "one per line; rise against the same model's F32 GGUF; sizes are bytes on disk.",
        f"Choice of edgellm's file per reference: lowest perplexity on {a.select_windows} held-out windows of wiki.valid "
        f"(tiles of {a.calib_len} tokens no calibration window drew, cut to {a.ctx}) among files no larger than the "
        "reference" + (f", the first in that order (at most {a.speed_tries} tried) whose paired decode ratio against the "
                       f"reference is ≥ {a.min_decode}" if a.min_decode > 0 else "") + "; the evaluation texts never choose.",
        f"Calibration for all ({a.calib_samples}×{a.calib_len} tokens of wiki.valid, seed 0): llama.cpp's importance "
        "matrix, GPTQ after AWQ's prescale (symmetric g32, act-order, static groups, MSE clip), the mixes' sensitivities.",
        f"Decode ratio: edgellm ÷ reference, median of {a.rounds} paired rounds (both in one process, order flipped), "
        f"{a.prompt_len}-token prompt then {a.new_tokens} greedy tokens.",
        "Verdict: no larger, decode ratio ≥ 0.97, rise ≤ half the reference's on both texts. On SmolLM2 as shipped "
        "(a Q4_1 checkpoint) files holding Q4_1/Q5_1 are not evidence" +
        (" (they were allowed into the pick: --allow-asymmetric)." if a.allow_asymmetric else " and are left out of the pick."),
    ]
    for label, r in models.items():
        if len(r.get("build_commands", [])) > 1:
            notes.append(f"{label}: the candidate pool is every file in its cache folder, built by "
                         f"{len(r['build_commands'])} invocations (each file cached once, then reused): "
                         + "; ".join(f"`{repo_relative(c)}`" for c in r["build_commands"]))
    result = {
        "title": "The GGUF ladder: edgellm against llama.cpp's presets with an importance matrix (issue 17)",
        "description": "Per model and llama.cpp reference, edgellm's best file no larger (RTN on each type's grid, "
                       "GPTQ+AWQ codes on Q4_0/Q5_0, budgeted mixes), measured through llama.cpp on two texts.",
        "tables": [{"title": "Ladder: each reference against edgellm's pick", "rows": rows,
                    "columns": ["model", "reference", "ref MB", "ref wikitext rise %", "ref SST-2 rise %", "edgellm file",
                                "MB", "wikitext rise %", "SST-2 rise %", "decode ratio", "evidence", "met", "types"],
                    "notes": notes},
                   {"title": "Every candidate: held-out perplexity (the selection) and the evaluation texts where measured",
                    "rows": [c for r in models.values() for c in r.get("candidates", [])],
                    "columns": ["model", "file", "MB", "held-out ppl", "held-out rise %", "wikitext rise %", "SST-2 rise %",
                                "types"],
                    "notes": ["References (ref-*) and edgellm's files, by size. The evaluation texts are measured for the "
                              "references and each run's picks only; '-' where a file was never a pick."]}],
        "plots": plots,
        "selection": {"text": "wiki.valid held-out tiles (not calibration)", "windows": a.select_windows, "ctx": a.ctx,
                      "min_decode": a.min_decode, "speed_tries": a.speed_tries,
                      "calib_windows": a.calib_samples, "calib_len": a.calib_len, "evaluation_texts_used": False,
                      "asymmetric_excluded_on_privileged": not a.allow_asymmetric},
        "protocol": {"ctx": a.ctx, "max_tokens": a.max_tokens, "texts": {"wikitext": "wikitext-2/wiki.test.raw",
                     "sst2": "sst-2/dev.tsv + sst-2/test.tsv sentences, one per line"}, "runtime": "llama.cpp",
                     "threads": a.threads, "paired_rounds": a.rounds},
        "target": {"met": met, "pairs": len(verdicts), "pairs_met": sum(bool(v and v["met"]) for v in verdicts)},
        "models": models, "wall_seconds": round(seconds, 1),
    }
    return result
