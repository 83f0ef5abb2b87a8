"""The optimize report's task timeline (Ray executor): one lane per worker process, each task a bar, as PNG and SVG.

Reads ``results.json["executor"]["tasks"]`` (``task``, ``kind``, ``lane``, ``start``, ``end`` in seconds from the
cluster's start, ``attempts``, and ``died``: the dead attempts, each with ``seen_at``, when the driver saw its worker
die). Bars are coloured by kind (screen = build + screen, full = export + full protocol, speed = measurement on the
bench node); a task that needed more than one attempt is hatched and labelled with its attempt count, and each dead
attempt is a cross at the moment the driver saw it, on a lane of its own (the dead worker's process is gone).
Deliberately absent: the dead attempts' start times (their workers never reported back) and interactive zoom.
"""

from __future__ import annotations

from pathlib import Path

from .plots import DPI, _matplotlib

COLORS = {"screen": "tab:blue", "full": "tab:green", "speed": "tab:red"}
DEAD = "dead attempts (seen by the driver)"


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
    dead = [(d["seen_at"], t["task"]) for t in tasks for d in t.get("died", [])]
    order = lanes(tasks) + ([DEAD] if dead else [])
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * len(order)))
    for t in tasks:
        y = order.index(t["lane"])
        retried = t.get("attempts", 1) > 1
        ax.barh(y, t["end"] - t["start"], left=t["start"], height=0.7, color=COLORS.get(t["kind"], "tab:gray"),
                edgecolor="black", linewidth=0.4, hatch="//" if retried else None)
        if t["end"] - t["start"] > 0.06 * max(x["end"] for x in tasks):
            label = t["task"] + (f" (attempt {t['attempts']})" if retried else "")
            ax.text(t["start"] + 0.01 * (t["end"] - t["start"]), y, label, va="center", fontsize=6, clip_on=True)
    for at, name in dead:
        ax.plot([at], [order.index(DEAD)], "x", color="black", markersize=7)
        ax.text(at, order.index(DEAD) - 0.3, name, fontsize=6, ha="center", clip_on=True)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="black", label=kind) for kind, c in COLORS.items()
               if any(t["kind"] == kind for t in tasks)]
    if any(t.get("attempts", 1) > 1 for t in tasks):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="retried (a worker died)"))
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the cluster started the search")
    ax.set_title(f"task timeline: {len(tasks)} tasks on {len(lanes(tasks))} worker process(es), "
                 f"{len(dead)} dead attempt(s) retried")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    names = []
    for ext in ("png", "svg"):
        fig.savefig(Path(folder) / f"timeline.{ext}", dpi=DPI)
        names.append(f"timeline.{ext}")
    plt.close(fig)
    return names
