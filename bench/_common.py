"""The result envelope every bench script writes: provenance around one experiment's tables.

``write_result(name, result)`` adds to the script's own fields (title, description, tables, plots,
raw, ...; format at the top of bench/render.py) the provenance of the measurement, writes
``bench/results/<name>.json`` atomically (``edgellm.fileio.write_json``) and re-renders
docs/benchmarks.md:

- ``argv``: the real command line of this process (``sys.argv``, with ``python -m bench.<name>`` when
  run as a module), every path shown relative to the repository: no absolute path into a home folder,
  a virtual environment or a cache (``repo_relative``);
- ``command``: ``argv`` joined for a shell, unless the script passes the history of several runs;
- ``machine``: ``edgellm.measure.machine_info()`` unless the script passes the one it measured beside
  its rows;
- ``measured_at``: UTC time of the write (ISO 8601); ``stamp(row)`` gives a table row its own time
  of measurement, for rows measured at different moments;
- ``commit`` and ``dirty``: ``git rev-parse HEAD``, and whether tracked files differed from it
  (untracked files are not counted); both ``None`` outside a git checkout.

It leaves out the experiment itself (each script's own) and the rendering (bench/render.py). Scripts
run from the repository root as modules, ``python -m bench.<name>``, so they import the installed
``edgellm`` and this helper without touching ``sys.path``.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FORMAT = "edgellm-bench/2"          # files with this "format" carry the whole envelope
ENVELOPE = ("format", "argv", "command", "machine", "measured_at", "commit", "dirty")
# a record re-measured in part (some of its phases, others still from before the envelope) keeps a
# "provenance" that starts with this, names the old phases and how to re-measure them
PARTLY_LEGACY = "partly legacy: "

# generic forms, for text recorded on another machine (or before this helper existed)
_HOME = r"(?<![\w.~$<>-])(?:/root|/home/[^/\s]+|/Users/[^/\s]+)"
_GENERIC = [
    (re.compile(r"(?<![\w.~$<>-])[^\s'\"=]*/site-packages(?=/)"), "<site-packages>"),
    (re.compile(_HOME + r"/\.cache/edgellm(?=/|\b)"), "$EDGELLM_CACHE"),
    (re.compile(_HOME + r"(?=/|\b)"), "~"),
]


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second: ``2025-01-31T14:05:09Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(row: dict, when: str | None = None) -> dict:
    """*row* with ``measured_at`` (now, or *when*) unless it already has one.

    >>> stamp({"model": "fp32", "tok/s": 9.8}, "2025-01-31T14:05:09Z")["measured_at"]
    '2025-01-31T14:05:09Z'
    """
    return row if "measured_at" in row else {**row, "measured_at": when or now_utc()}


def _prefixes() -> list[tuple[str, str]]:
    """This machine's absolute prefixes and how to show them, most specific first."""
    out = [(p, "<site-packages>") for p in {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")} if p]
    try:
        from edgellm.models import cache_dir

        out.append((str(cache_dir()), "$EDGELLM_CACHE"))
    except ImportError:
        out.append((str(Path.home() / ".cache" / "edgellm"), "$EDGELLM_CACHE"))
    out.append((str(ROOT), "."))
    if not Path(sys.prefix).resolve().is_relative_to(ROOT):
        out.append((sys.prefix, "<venv>"))
    out.append((str(Path.home()), "~"))
    return sorted({(p.rstrip("/"), s) for p, s in out if p.rstrip("/")}, key=lambda x: -len(x[0]))


_BEFORE = r"(?<![\w.~$<>-])"          # a path starts the text or follows a space, quote, "=", ":" ...
_AFTER = r"(?=/|$|[\s'\";:,=)\]])"   # and the prefix ends at a path separator or the end of the word


def repo_relative(text: str) -> str:
    """*text* (a path, an argument or a whole command) with absolute paths shown relative to the repository.

    Paths in the repository become relative (``bench/results/x.json``), site-packages becomes
    ``<site-packages>``, the edgellm cache ``$EDGELLM_CACHE``, a virtual environment outside the
    repository ``<venv>``, the home folder ``~``; the same is done for those forms recorded on another
    machine (``/home/USER/...``, ``/root/...``, ``.../site-packages/...``).

    >>> repo_relative(str(ROOT / "bench" / "results" / "x.json"))
    'bench/results/x.json'
    >>> repo_relative("--rec-source /home/ann/.cache/edgellm/bench-prune/models/m")
    '--rec-source $EDGELLM_CACHE/bench-prune/models/m'
    """
    for prefix, shown in _prefixes():
        if shown == ".":     # inside the repository: drop the prefix and its slash; the root itself is "."
            text = re.sub(_BEFORE + re.escape(prefix) + "/", "", text)
        text = re.sub(_BEFORE + re.escape(prefix) + _AFTER, lambda _m, s=shown: s, text)
    for pat, shown in _GENERIC:
        text = pat.sub(lambda _m, s=shown: s, text)
    return text


def invocation(argv: list[str] | None = None, module: str | None = None) -> list[str]:
    """The real command line of this process, repository-relative: ``[python, -m, bench.x, *args]``.

    *argv* defaults to ``sys.argv``, and then *module* to the ``__main__`` module's name when it was run
    with ``python -m`` (``argv[0]`` is then the file's path, which hides the ``-m``). The interpreter is
    shown by its path in the repository (``.venv/bin/python``), else as ``python``.

    >>> invocation(["/any/where/bench/foundation.py", "--threads", "2"], module="bench.foundation")[1:]
    ['-m', 'bench.foundation', '--threads', '2']
    """
    if argv is None:
        argv = list(sys.argv)
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if module is None and spec is not None and spec.name != "__main__":
            module = spec.name
    exe = Path(sys.executable)
    python = repo_relative(str(exe)) if exe.is_relative_to(ROOT) else "python"
    head = [python, "-m", module] if module else [python, repo_relative(argv[0])] if argv else [python]
    return head + [repo_relative(a) for a in argv[1:]]


def git_commit(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """``(HEAD's sha, whether tracked files differ from it)``; ``(None, None)`` without git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return sha or None, bool(dirty)


def envelope(machine: dict | None = None, command: str | None = None, argv: list[str] | None = None) -> dict:
    """The provenance fields (``ENVELOPE``) for a result measured now.

    >>> sorted(envelope(machine={"cpu_model": "x"}))   # doctest: +SKIP
    ['argv', 'command', 'commit', 'dirty', 'format', 'machine', 'measured_at']
    """
    argv = invocation() if argv is None else argv
    if machine is None:
        from edgellm.measure import machine_info

        machine = machine_info()
    sha, dirty = git_commit()
    return {"format": FORMAT, "argv": argv, "command": repo_relative(command) if command else shlex.join(argv),
            "machine": machine, "measured_at": now_utc(), "commit": sha, "dirty": dirty}


def write_result(name: str | os.PathLike, result: dict, *, machine: dict | None = None, command: str | None = None,
                 render: bool = True) -> Path:
    """Write *result* with its envelope to ``bench/results/<name>.json`` (or the path *name*), atomically,
    then re-render docs/benchmarks.md when the file lies in bench/results/. Returns the path.

    *machine* and *command* override the defaults (``machine_info()``; the real argv); the script's own
    keys are kept, the envelope's win.

    >>> write_result("foundation", {"title": "...", "tables": [...]})   # doctest: +SKIP
    PosixPath('.../bench/results/foundation.json')
    """
    from edgellm.fileio import check_output, write_json

    path = Path(name) if os.sep in str(name) or str(name).endswith(".json") else RESULTS / f"{name}.json"
    # replaces a results file edgellm wrote, never anything else; the JSON files in bench/results/ are this
    # repository's own records (the older ones predate the format tag), so they count as its own
    check_output(path, force=True, own=path.resolve().parent == RESULTS.resolve() and path.suffix == ".json")
    # a re-measured legacy record sheds its marker; one re-measured in part keeps its "partly legacy" note
    fresh = {k: v for k, v in result.items() if k != "provenance" or str(v).startswith(PARTLY_LEGACY)}
    out = write_json(path, {**fresh, **envelope(machine if machine is not None else result.get("machine"), command)})
    if render and path.resolve().parent == RESULTS.resolve():
        from bench.render import render as render_docs

        render_docs()
    return out
