"""The optimize report: one self-contained HTML page (tables + the Pareto plots beside it) and the summary table.

Every speed/RAM figure carries its provenance: "measured" (on this host) or "predicted" (cost
model); a non-host device's figures are all predictions and the page says so at the top. Figures
reused from the optimize cache say so ("cached") with the UTC time they were measured.
llama.cpp's own quantizer's reference rows (``results.json["references"]``) are listed with the
candidates, marked "reference", and the pick is compared with each (``comparison_line``).
Deliberately absent: JavaScript and external assets (the page opens offline, from disk).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .table import human_bytes


def comparison_line(c: dict) -> str:
    """One line comparing the pick with a reference row (``results.json["vs_reference"]`` item).

    >>> comparison_line({"reference": "llama.cpp Q4_0 + imatrix (reference)", "size_ratio": 0.9, "quality_loss": 0.02,
    ...                  "reference_quality_loss": 0.05, "loss_ratio": 0.4, "speed_ratio": 1.01, "speed_paired": True})
    'vs llama.cpp Q4_0 + imatrix (reference): size 0.90x, quality loss +2.00% vs +5.00% (0.40x), decode speed 1.01x (paired)'
    """
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    return (f"vs {c['reference']}: size {x(c['size_ratio'])}, quality loss {100 * c['quality_loss']:+.2f}% vs "
            f"{100 * c['reference_quality_loss']:+.2f}% ({x(c['loss_ratio'])}), decode speed {x(c['speed_ratio'])} "
            f"({'paired' if c.get('speed_paired') else 'medians'})")

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}tr.chosen{background:#e3f6e3;font-weight:bold}
tr.pareto td:first-child{border-left:4px solid #1f77b4}tr.reference{background:#fdf0e6;font-style:italic}.pred{color:#a05a00;font-style:italic}
.note{background:#fff8e0;padding:.5em 1em;border-left:4px solid #e0b000}img{max-width:100%}"""


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.2f}%"


def _num(v, d: int = 1) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def when(stamp: str | None) -> str:
    """A UTC stamp for a table cell.

    >>> when("2026-11-30T09:41:11Z")
    '2026-11-30 09:41Z'
    """
    return "-" if not stamp else stamp[:16].replace("T", " ") + "Z"


def cache_note(result: dict) -> str | None:
    """One line saying how many candidates' figures came from the cache and when they were measured, or None.

    >>> cache_note({"rows": [{"from_cache": True, "measured_at": "2026-11-30T09:41:11Z"}]})
    'figures of 1 candidate(s) come from the cache, measured 2026-11-30 09:41Z to 2026-11-30 09:41Z (UTC); --fresh measures them again'
    """
    stamps = sorted(r["measured_at"] for r in result.get("rows", []) if r.get("from_cache") and r.get("measured_at"))
    n = sum(bool(r.get("from_cache")) for r in result.get("rows", []))
    if not n:
        return None
    span = f", measured {when(stamps[0])} to {when(stamps[-1])} (UTC)" if stamps else ""
    return f"figures of {n} candidate(s) come from the cache{span}; --fresh measures them again"


def confidence_line(c: dict) -> str:
    """How sure the pick is, in one line (``results.json["pick_confidence"]``).

    >>> confidence_line({"contested": True, "runner_up": "b", "rounds": 10, "pick_won": 0.8, "median_ratio": 1.04,
    ...                  "iqr": [1.01, 1.06], "switched": False})
    'pick confidence: won 8 of 10 paired rounds against b, median speed ratio 1.040 (IQR 1.010-1.060)'
    """
    if not c.get("contested"):
        return f"pick decided by {c['decided_by']}" + (f" (runner-up: {c['runner_up']})" if c.get("runner_up") else "")
    return (f"pick confidence: won {round(c['pick_won'] * c['rounds'])} of {c['rounds']} paired rounds against "
            f"{c['runner_up']}, median speed ratio {c['median_ratio']:.3f} (IQR {c['iqr'][0]:.3f}-{c['iqr'][1]:.3f})"
            + ("; a tie within the noise (the IQR holds 1), so size, then quality decided" if c.get("tie") else "")
            + ("; the paired rounds overturned the medians' pick" if c.get("switched") else ""))


def summary_rows(result: dict, all_rows: bool = False) -> list[dict]:
    """The summary table (one dict per candidate), shared by the terminal and the report.

    >>> summary_rows({"rows": [], "device_is_host": True})
    []
    """
    lm = result.get("config", {}).get("task", "text-generation") == "text-generation"
    task = bool(result.get("config", {}).get("task_data"))      # quality is task exact match (points of accuracy)
    out = []
    for r in result["rows"] + result.get("references", []):
        if not all_rows and r["status"] == "dropped":
            continue
        src = "measured" if r.get("measured") else "predicted"
        if r.get("measured") and not (r.get("host_check") or {}).get("ram_measured"):
            src = "measured; RAM predicted"
        q = r.get("quality") or {}
        row = {"candidate": f"{Path(r['model']).name} · {r['recipe']}", "runtime": r["runtime"], "status": r["status"],
               "quality loss": _pct(r.get("quality_loss")) + ("" if q.get("protocol") != "screen" else " (screen)")}
        if task:
            row["quality loss"] = (f"{100 * r['quality_loss']:+.1f} pts" if r.get("quality_loss") is not None else "-") + \
                ("" if q.get("protocol") != "screen" else " (screen)")
            row["task accuracy [95% CI]"] = task_accuracy(q)
        if lm and (not task or q.get("perplexity") is not None):
            row["ppl"] = _num(q.get("perplexity"), 2)
        elif not lm:
            row["accuracy"] = _num(100 * q["accuracy"], 2) if q.get("accuracy") is not None else "-"
        row["size"] = human_bytes(r.get("size_bytes"))
        row["peak RAM"] = human_bytes(r.get("peak_ram_bytes"))
        speed = r.get("decode_tok_s") if lm else r.get("examples_per_s")
        row["decode tok/s" if lm else "examples/s"] = _num(speed)
        row["TTFT ms"] = _num(r.get("ttft_ms"), 0)
        row["figures"] = src + ("; cached" if r.get("from_cache") else "")
        row["measured at"] = when(r.get("measured_at"))
        row["pick"] = "CHOSEN" if r.get("chosen") else ("pareto" if r.get("pareto") else
                                                        "reference" if r.get("reference") else "")
        out.append(row)
    return out


def task_accuracy(q: dict) -> str:
    """A task row's exact-match accuracy with its 95% Wilson interval, in percent.

    >>> task_accuracy({"accuracy": 0.9, "interval": [0.744, 0.965], "n_rows": 30})
    '90.0 [74.4, 96.5] of 30'
    """
    if q.get("accuracy") is None:
        return "-"
    lo, hi = q.get("interval") or (None, None)
    band = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    return f"{100 * q['accuracy']:.1f}{band} of {q.get('n_rows', '?')}"


def _table(rows: list[dict], classes: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f'<th class="l">{html.escape(c)}</th>' if i < 2 else f"<th>{html.escape(c)}</th>"
                   for i, c in enumerate(cols))
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        cells = []
        for i, c in enumerate(cols):
            v = html.escape(str(r.get(c, "")))
            css = ' class="l"' if i < 2 or c in ("status", "reason", "figures") else ""
            if v == "predicted":
                v = '<span class="pred">predicted</span>'
            cells.append(f"<td{css}>{v}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_report(result: dict, path: Path) -> Path:
    """Write ``report.html`` for an optimize *result* (the dict saved as results.json)."""
    from ..fileio import atomic_file

    dev = result["device"]
    lm = result["config"]["task"] == "text-generation"
    shown = [r for r in result["rows"] + result.get("references", []) if r["status"] != "dropped"]
    classes = ["chosen" if r.get("chosen") else ("pareto" if r.get("pareto") else
                                                 "reference" if r.get("reference") else "") for r in shown]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgellm optimize report</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>edgellm optimize</h1>",
             f"<p>Device <b>{html.escape(dev['name'])}</b>: {html.escape(dev.get('description') or '')}. "
             f"Figures: <b>{html.escape(result['figures'])}</b>.</p>",
             f"<p class='l'>Device source: {html.escape(dev['source'])}</p>"]
    c = result["constraints"]
    cons = [f"quality loss ≤ {100 * c['max_quality_loss']:.1f}%" if c.get("max_quality_loss") is not None else None,
            f"{'decode tok/s' if lm else 'examples/s'} ≥ {c['min_speed']}" if c.get("min_speed") else None,
            f"peak RAM ≤ {human_bytes(c['max_ram_bytes'])}" if c.get("max_ram_bytes") else None,
            f"size ≤ {human_bytes(c['max_size_bytes'])}" if c.get("max_size_bytes") else None,
            f"TTFT ≤ {c['max_ttft_ms']} ms" if c.get("max_ttft_ms") else None]
    parts.append(f"<p>Constraints: {html.escape('; '.join(x for x in cons if x))}. Objective: "
                 f"{html.escape(result['objective'])}. Elapsed {result.get('elapsed_s', 0) / 60:.1f} min.</p>")
    ch = result.get("chosen")
    if ch:
        vb = result.get("vs_base") or {}
        extra = (f" — {vb['size_ratio']:.2f}× smaller and {vb['speed_ratio']:.2f}× faster than {html.escape(vb['base'])}"
                 if vb else "")
        parts.append(f"<h2>Chosen: {html.escape(ch['label'])}</h2><p>quality loss {_pct(ch['quality_loss'])}{extra}.</p>")
        if result.get("pick_confidence"):
            parts.append(f"<p>{html.escape(confidence_line(result['pick_confidence']))}.</p>")
        if result.get("vs_reference"):
            parts.append("<h3>Against llama.cpp's own quantizer</h3><p>The pick / each reference (importance matrix "
                         "from the same calibration text, measured in this run on llama.cpp):</p><ul>"
                         + "".join(f"<li>{html.escape(comparison_line(c))}</li>" for c in result["vs_reference"])
                         + "</ul>")
        exp = result.get("export") or {}
        if exp:
            v = exp.get("verification") or {}
            parts.append(f"<p>Exported to <code>{html.escape(exp['path'])}</code>; verified on {html.escape(exp['runtime'])}: "
                         f"{'passed' if v.get('passed') else 'not passed'}.</p>")
    else:
        inf = result.get("infeasible") or {}
        parts.append(f"<h2>No candidate meets the constraints</h2><p>Binding constraint: "
                     f"<b>{html.escape(str(inf.get('binding')))}</b>. Closest candidates:</p>")
        parts.append(_table([{"candidate": r["label"], "misses": ", ".join(f"{k} by {100 * v:.1f}%" for k, v in
                                                                            r["shortfalls"].items())}
                             for r in inf.get("closest", [])]))
    parts.append("<h2>Candidates</h2>" + _table(summary_rows(result), classes))
    if cache_note(result):
        parts.append(f"<p class='note'>{html.escape(cache_note(result))}.</p>")
    for p in result.get("plots", []):
        if p.endswith(".svg") and p.startswith("timeline"):      # the Ray executor's tasks (report.timeline)
            parts.append(f"<h2>Task timeline (Ray)</h2><img id='timeline' src='{html.escape(p)}' alt='Task timeline'>")
        elif p.endswith(".svg"):
            parts.append(f"<h2>Pareto frontier</h2><img id='pareto' src='{html.escape(p)}' alt='Pareto plot'>")
        else:
            parts.append(f"<p><a href='{html.escape(p)}'>{html.escape(p)}</a></p>")
    checks = result.get("host_checks") or []
    if checks:
        parts.append("<h2>Cost model on this host: prediction (before measuring) vs measurement</h2>")
        parts.append("<p>'before': predicted just before the measurement, from this host's other measurements (this run's "
                     "so far and earlier runs', kept in the cache's host-calibration-&lt;task&gt;.json) "
                     "(bandwidth efficiency 1 and no overhead when none existed for the runtime: an optimistic bound). "
                     "Decode is t = layers × overhead per token (per runtime) + roofline / bandwidth efficiency "
                     "(one for the machine, fitted across runtimes). "
                     "'leave-one-out': calibrated on every other measurement.</p>")
        parts.append(_table([{"candidate": k["label"], "calibrated by": k["calibration"],
                              "decode meas": _num(k.get("decode_measured")), "decode pred": _num(k.get("decode_predicted")),
                              "decode err": _pct(k.get("decode_error")),
                              "decode LOO pred": _num(k.get("decode_loo_predicted")),
                              "decode LOO err": _pct(k.get("decode_loo_error")), "LOO calibrated by": k.get("loo_calibration"),
                              "prefill err": _pct(k.get("prefill_error")), "prefill LOO err": _pct(k.get("prefill_loo_error")),
                              "RAM err": _pct(k.get("ram_error")), "RAM LOO err": _pct(k.get("ram_loo_error"))}
                             for k in checks]))
    parts.append("<h2>Calibrated efficiency factors</h2>" + _table(
        [{"runtime|kind": k, "source": v["source"], "n": v["n"], "decode fit": v.get("decode_fit"),
          "decode overhead ms/token/layer": _num(1e3 * v.get("decode_overhead_layer_s", 0.0), 3),
          "decode bandwidth eff": _num(v["decode"], 3), "prefill eff": _num(v["prefill"], 3),
          "RAM overhead": human_bytes(v["overhead_bytes"])}
         for k, v in (result.get("calibration") or {}).items()]))
    other = [{"candidate": r["label"], "status": r["status"], "reason": r.get("reason", "")} for r in result["rows"]
             if r["status"] in ("dropped", "rejected", "skipped", "failed") or r.get("reason")]
    parts.append("<h2>Dropped, rejected and skipped</h2>" + _table(other))
    for n in result.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    parts.append(f"<details><summary>results.json</summary><pre>{html.escape(json.dumps(result['config'], indent=1))}"
                 f"</pre></details></body></html>")
    with atomic_file(path) as f:
        f.write("\n".join(parts))
    return path
