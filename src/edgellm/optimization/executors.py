"""Where the search's work runs: ``local`` (this process, one step after another) or ``ray`` (a Ray cluster).

The seam is small. ``optimize`` calls ``start`` before the stages, ``prefetch`` once the rows are planned (the Ray
executor runs every build, screen, export and full protocol as Ray tasks there, filling the result cache), ``apply``
before the screen and the full protocol (failures and budget skips of tasks become the rows' statuses), ``speed`` for
each host measurement, and ``close`` at the end. The stages then run as in a local search: with the cache filled,
they only read it, so both executors make every decision with the same code and report the same figures.
``LocalExecutor`` does nothing in the hooks and measures speed in this process; the Ray one is ``ray_exec.py``.
Deliberately absent: any other backend (Dask, multiprocessing, a home-made scheduler).
"""

from __future__ import annotations

from .deploy import row_speed
from .ray_exec import RayExecutor


class LocalExecutor:
    """Today's in-process search: the hooks do nothing and speed is measured here.

    >>> LocalExecutor().summary()
    {'executor': 'local'}
    """

    name = "local"

    def start(self, search) -> None:
        pass

    def prefetch(self, search) -> None:
        pass

    def apply(self, stage: str, search) -> None:
        pass

    def speed(self, search, row) -> dict:
        return row_speed(search, row)

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        return {"executor": "local"}


def make_executor(config):
    """The executor ``config.executor`` names (the Ray one checks that Ray is installed when it starts).

    >>> from edgellm.optimization.config import OptimizeConfig
    >>> make_executor(OptimizeConfig()).name
    'local'
    """
    if config.executor == "ray":
        return RayExecutor(config)
    return LocalExecutor()
