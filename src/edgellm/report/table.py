"""Plain-text tables for the terminal, and human units."""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
    """>>> human_bytes(1536)
    '1.5 KiB'
    """
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict], columns: list[str] | None = None, title: str | None = None) -> str:
    """Rows of dicts as an aligned table.

    >>> print(format_table([{"a": 1, "b": "x"}]))
    a  b
    -  -
    1  x
    """
    if not rows:
        return title or ""
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(([title] if title else []) + lines)


def key_values(d: dict, title: str | None = None) -> str:
    """A two-column table of key: value lines."""
    width = max(len(k) for k in d)
    body = "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in d.items())
    return f"{title}\n{body}" if title else body
