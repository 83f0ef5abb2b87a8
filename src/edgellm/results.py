"""``Result``: the base of edgellm's public result dataclasses, so each has the same ``to_dict()``.

``to_dict()`` is ``dataclasses.asdict`` with paths written as strings, so ``json.dumps`` takes it.
A result that carries something that is not data (a live model, a long log) overrides it to leave
that out. Deliberately left out: reading results back (they are reports, not inputs).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePath


def _plain(v):
    if isinstance(v, PurePath):
        return str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class Result:
    """Mixin for a result dataclass: ``to_dict()`` gives its fields as JSON-serialisable data.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Timing(Result):
    ...     seconds: float
    >>> Timing(1.5).to_dict()
    {'seconds': 1.5}
    """

    def to_dict(self) -> dict:
        return _plain(asdict(self))
