"""The optimize report's task timeline (Ray executor): one lane per worker process, each task a bar, as PNG and SVG.

Reads ``results.json["executor"]["tasks"]`` (``task``, ``kind``, ``lane``, ``start``, ``end`` in seconds from the
cluster's start, ``attempts``). Bars are coloured by kind (screen = build + screen, full = export + full protocol,
speed = measurement on the bench node); a task that needed more than one attempt (its worker died) is hatched.
Deliberately absent: the attempts that died (Ray does not return their times) and interactive zoom.
"""

from __future__ import annotations

from pathlib import Path

from .plots import DPI, _matplotlib

COLORS = {"screen": "tab:blue", "full": "tab:green", "speed": "tab:red"}


def lanes(tasks: list[dict]) -> list[str]:
    """The worker lanes in order of their first task.

    >>> lanes([{"lane": "b", "start": 2}, {"lane": "a", "start": 1}, {"lane": "b", "start": 0.5}])
    ['b', 'a']
    """
    first: dict[str, float] = {}
    for t in tasks:
        first[t["lane"]] = min(first.get(t["lane"], t["start"]), t["start"])
    return sorted(first, key=first.get)


def timeline_plot(tasks: list[dict], folder: Path) -> list[str]:
    """Write ``timeline.png`` and ``timeline.svg`` into *folder*; returns their names (none without tasks).

    >>> timeline_plot([{"task": "screen w8", "kind": "screen", "lane": "h:1", "start": 0, "end": 3,
    ...                 "attempts": 1}], Path("out"))                                   # doctest: +SKIP
    ['timeline.png', 'timeline.svg']
    """
    if not tasks:
        return []
    plt = _matplotlib()
    order = lanes(tasks)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * len(order)))
    for t in tasks:
        y = order.index(t["lane"])
        ax.barh(y, t["end"] - t["start"], left=t["start"], height=0.7, color=COLORS.get(t["kind"], "tab:gray"),
                edgecolor="black", linewidth=0.4, hatch="//" if t.get("attempts", 1) > 1 else None)
        if t["end"] - t["start"] > 0.06 * max(x["end"] for x in tasks):
            ax.text(t["start"] + 0.01 * (t["end"] - t["start"]), y, t["task"], va="center", fontsize=6, clip_on=True)
    for kind, c in COLORS.items():
        if any(t["kind"] == kind for t in tasks):
            ax.barh([], [], color=c, label=kind)
    if any(t.get("attempts", 1) > 1 for t in tasks):
        ax.barh([], [], color="white", edgecolor="black", hatch="//", label="retried (a worker died)")
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the cluster started the search")
    ax.set_title(f"task timeline: {len(tasks)} tasks on {len(order)} worker process(es)")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    names = []
    for ext in ("png", "svg"):
        fig.savefig(Path(folder) / f"timeline.{ext}", dpi=DPI)
        names.append(f"timeline.{ext}")
    plt.close(fig)
    return names
