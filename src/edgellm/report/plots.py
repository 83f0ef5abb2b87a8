"""Pareto plots for the optimize report: size × speed and size × quality loss, as PNG and SVG.

Matplotlib with the Agg backend (no display). Candidates on the frontier are outlined, the chosen
one is a star, predicted figures say so in the axis label. The quality axis is symmetric-log
(linear within ±``LINTHRESH`` %, logarithmic beyond, as its label says), so one failed candidate at
+7,000% does not flatten the rest. Labels are placed greedily (``place_labels``): each one tries
offsets at growing distances from its point until its box overlaps no label already placed and
no marker. llama.cpp's own quantizer's reference rows are drawn as one dashed curve, in the
legend. Deliberately absent: interactive plots and an iterative (force-directed) label layout.
"""

from __future__ import annotations

from pathlib import Path

MARKERS = {"torch": "o", "llama.cpp": "s", "onnxruntime": "^", "executorch": "D"}   # one marker per runtime
LINTHRESH = 1.0          # % quality loss: the symlog axis is linear inside ±1%
REFERENCE_STYLE = dict(color="tab:orange", linestyle="--", marker="D", markersize=7, linewidth=1.5)
DPI = 110


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from ..errors import EdgeLLMError

        raise EdgeLLMError("the report's plots need matplotlib", "pip install 'edgellm[plot]'") from e
    return plt


def _offsets(rings: int = 14):
    """Label offsets in points, nearest first: right/left of the point, above/below, further out ring by ring."""
    for k in range(rings):
        for dx, dy in ((5, 3 + 9 * k), (5, -10 - 9 * k), (-5, 3 + 9 * k), (-5, -10 - 9 * k)):
            yield dx + (6 * k if dx > 0 else -6 * k), dy


def place_labels(ax, items: list[tuple[float, float, str]], renderer, fontsize: float = 7) -> list:
    """Annotate each ``(x, y, text)`` at the first offset whose box lies inside the axes and overlaps no placed
    label, no marker and not the legend.

    Offsets are tried nearest first (``_offsets``); a label that finds no free place keeps its nearest
    one. Labels far from their point get a thin leader line (a patch). Returns the annotations.

    >>> place_labels(ax, [(1.0, 2.0, "w4 (llama.cpp)")], fig.canvas.get_renderer())   # doctest: +SKIP
    """
    from matplotlib.transforms import Bbox

    pad = 4.0     # pixels around each marker
    marks = [ax.transData.transform((x, y)) for x, y, _ in items]
    marker_boxes = [Bbox([[u - pad, v - pad], [u + pad, v + pad]]) for u, v in marks]
    legend = ax.get_legend()
    if legend is not None:
        marker_boxes.append(legend.get_window_extent(renderer))
    frame = ax.bbox
    placed, out = [], []

    def note(text, x, y, dx, dy):
        return ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                           ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")

    def leader(x, y, dx, dy):        # a thin line from the point to its label (a patch: not one of ax.lines)
        from matplotlib.patches import FancyArrowPatch

        u, v = ax.transData.transform((x, y))
        end = ax.transData.inverted().transform((u + dx * ax.figure.dpi / 72, v + dy * ax.figure.dpi / 72))
        ax.add_patch(FancyArrowPatch((x, y), tuple(end), arrowstyle="-", color="0.6", linewidth=0.5,
                                     shrinkA=3, shrinkB=0))

    for (x, y, text) in items:
        choice = None
        for dx, dy in _offsets():
            a = note(text, x, y, dx, dy)
            bb = a.get_window_extent(renderer)
            a.remove()
            if choice is None:
                choice = (dx, dy, bb)
            inside = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
            if inside and not any(bb.overlaps(o) for o in placed + marker_boxes):
                choice = (dx, dy, bb)
                break
        dx, dy, bb = choice
        out.append(note(text, x, y, dx, dy))
        if abs(dy) > 12:
            leader(x, y, dx, dy)
        placed.append(bb)
    return out


def pareto_plots(rows: list[dict], folder: Path, lm: bool = True, predicted: bool = False,
                 references: list[dict] | None = None) -> list[str]:
    """Write ``pareto.png`` and ``pareto.svg`` into *folder*; returns their file names.

    *references* (llama.cpp's own quantizer, ``results.json["references"]``) are drawn as a dashed curve.

    >>> pareto_plots(result["rows"], Path("out/demo"), references=result["references"])   # doctest: +SKIP
    ['pareto.png', 'pareto.svg']
    """
    plt = _matplotlib()
    speed = "decode_tok_s" if lm else "examples_per_s"
    pts = [r for r in rows if r.get("quality_loss") is not None and r.get("size_bytes") and r.get(speed)]
    refs = sorted((r for r in references or [] if r.get("quality_loss") is not None and r.get("size_bytes")),
                  key=lambda r: r["size_bytes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=DPI)
    tag = " (predicted)" if predicted else ""
    several = len({r.get("model") for r in pts}) > 1              # model selection: say which model each point is
    labels1, labels2 = [], []
    for r in pts:
        size = r["size_bytes"] / 2**20
        color = "tab:green" if r.get("chosen") else ("tab:blue" if r.get("pareto") else "tab:gray")
        marker = "*" if r.get("chosen") else MARKERS.get(r["runtime"], "o")
        ms = 16 if r.get("chosen") else 8
        hollow = not r.get("measured") and not predicted
        kw = dict(marker=marker, markersize=ms, color=color, markerfacecolor="none" if hollow else color, linestyle="")
        ax1.plot(size, r[speed], **kw)
        ax2.plot(size, 100 * r["quality_loss"], **kw)
        short = (f"{Path(r['model']).name} · " if several else "") + f"{r['recipe']} ({r['runtime']})"
        labels1.append((size, r[speed], short))
        labels2.append((size, 100 * r["quality_loss"], short))
    if refs:
        ref_label = "llama.cpp + imatrix (reference)"
        timed = [r for r in refs if r.get(speed)]
        if timed:
            ax1.plot([r["size_bytes"] / 2**20 for r in timed], [r[speed] for r in timed], label=ref_label,
                     **REFERENCE_STYLE)
        ax2.plot([r["size_bytes"] / 2**20 for r in refs], [100 * r["quality_loss"] for r in refs], label=ref_label,
                 **REFERENCE_STYLE)
        for r in refs:
            short = "llama.cpp " + r.get("kind", "").upper()
            if r.get(speed):
                labels1.append((r["size_bytes"] / 2**20, r[speed], short))
            labels2.append((r["size_bytes"] / 2**20, 100 * r["quality_loss"], short))
        for ax in (ax1, ax2):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
    ax1.set_xlabel("size on disk (MiB)")
    ax1.set_ylabel(("decode tok/s" if lm else "examples/s") + tag)
    shown = [rt for rt in MARKERS if any(r["runtime"] == rt for r in pts)] or ["torch"]
    ax1.set_title("speed vs size (" + ", ".join(f"{MARKERS[rt]} {rt}" for rt in shown) + ", * chosen; blue = Pareto)")
    ax2.set_xlabel("size on disk (MiB)")
    ax2.set_ylabel(("perplexity increase" if lm else "accuracy drop") + f" (%; symlog, linear within ±{LINTHRESH:g}%)")
    ax2.set_yscale("symlog", linthresh=LINTHRESH)
    ax2.set_title("quality vs size (hollow = speed predicted, not measured)")
    sizes = [r["size_bytes"] for r in pts + refs]
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if sizes and max(sizes) / min(sizes) > 8:
            ax.set_xscale("log")
    fig.tight_layout()
    fig.canvas.draw()                    # final layout and scales: label boxes measured where they will be drawn
    renderer = fig.canvas.get_renderer()
    place_labels(ax1, labels1, renderer)
    place_labels(ax2, labels2, renderer)
    names = []
    for ext in ("png", "svg"):
        fig.savefig(folder / f"pareto.{ext}", dpi=DPI)
        names.append(f"pareto.{ext}")
    plt.close(fig)
    return names
