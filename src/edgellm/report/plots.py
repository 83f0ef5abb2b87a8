"""Pareto plots for the optimize report: size × speed and size × quality loss, as PNG and SVG.

Matplotlib with the Agg backend (no display). Candidates on the frontier are outlined, the chosen
one is a star, predicted figures say so in the axis label. Deliberately absent: interactive plots.
"""

from __future__ import annotations

from pathlib import Path

MARKERS = {"torch": "o", "llama.cpp": "s", "onnxruntime": "^", "executorch": "D"}   # one marker per runtime


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from ..errors import EdgeLLMError

        raise EdgeLLMError("the report's plots need matplotlib", "pip install 'edgellm[plot]'") from e
    return plt


def pareto_plots(rows: list[dict], folder: Path, lm: bool = True, predicted: bool = False) -> list[str]:
    """Write ``pareto.png`` and ``pareto.svg`` into *folder*; returns their file names.

    >>> pareto_plots(result["rows"], Path("out/demo"))          # doctest: +SKIP
    ['pareto.png', 'pareto.svg']
    """
    plt = _matplotlib()
    speed = "decode_tok_s" if lm else "examples_per_s"
    pts = [r for r in rows if r.get("quality_loss") is not None and r.get("size_bytes") and r.get(speed)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    tag = " (predicted)" if predicted else ""
    several = len({r.get("model") for r in pts}) > 1              # model selection: say which model each point is
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
        ax1.annotate(short, (size, r[speed]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax2.annotate(short, (size, 100 * r["quality_loss"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax1.set_xlabel("size on disk (MiB)")
    ax1.set_ylabel(("decode tok/s" if lm else "examples/s") + tag)
    shown = [rt for rt in MARKERS if any(r["runtime"] == rt for r in pts)] or ["torch"]
    ax1.set_title("speed vs size (" + ", ".join(f"{MARKERS[rt]} {rt}" for rt in shown) + ", * chosen; blue = Pareto)")
    ax2.set_xlabel("size on disk (MiB)")
    ax2.set_ylabel("quality loss (%): " + ("perplexity increase" if lm else "accuracy drop"))
    ax2.set_title("quality vs size (hollow = speed predicted, not measured)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if pts and max(r["size_bytes"] for r in pts) / min(r["size_bytes"] for r in pts) > 8:
            ax.set_xscale("log")
    fig.tight_layout()
    names = []
    for ext in ("png", "svg"):
        fig.savefig(folder / f"pareto.{ext}", dpi=110)
        names.append(f"pareto.{ext}")
    plt.close(fig)
    return names
