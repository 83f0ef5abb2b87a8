"""Quiet third-party output for the CLI: other libraries' warnings and log lines hidden, edgellm's kept.

Without this, a first ``edgellm optimize`` or ``edgellm export`` opens with lines the user can do
nothing about: torchao's "Failed to load ..._C_mxfp8.so" (its ``torchao`` logger), torch's
``_pytree`` deprecation notes (torch's own log handler, whose levels torch resets on import, so
only ``TORCH_LOGS`` reaches them), onnxruntime's quantizer advice (on the root logger) and
ExecuTorch's ``[cpuinfo_utils.cpp:71] ...`` lines (written by C++ straight to file descriptor 2).
``quiet_third_party()`` hides them for the length of a ``with`` block:

* Python warnings raised in third-party modules are ignored, and so are ``FutureWarning`` and
  ``DeprecationWarning`` from anything but edgellm;
* the loggers in ``THIRD_PARTY`` go to ERROR; ``ENV`` sets ``TORCH_LOGS``, ``TORCH_CPP_LOG_LEVEL``
  and ``TRANSFORMERS_VERBOSITY`` where the user has not (subprocesses inherit them);
* log records below ERROR that reach the root logger from code outside edgellm are dropped;
* when ``sys.stderr`` is the process's own stderr, fd 2 goes through a pipe and a reader thread
  that drops the C/C++ lines ``C_NOISE`` matches and passes everything else on unchanged,
  progress bars included.

edgellm's own warnings (``warnings.warn`` in edgellm modules, ``edgellm.*`` loggers) and every
error still show. Everything is restored when the block ends. The CLI skips all of it with
``--debug``. Deliberately absent: any change at import time (``import edgellm`` touches no global
state; only ``edgellm.cli.main`` calls this).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path

THIRD_PARTY = ("torch", "torchao", "transformers", "accelerate", "onnx", "onnxruntime", "onnxscript", "executorch",
               "huggingface_hub", "tokenizers", "llama_cpp", "gguf", "matplotlib", "PIL", "urllib3", "filelock",
               "fsspec", "datasets", "numexpr")
ENV = {"TORCH_LOGS": "-all", "TORCH_CPP_LOG_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error"}
# C/C++ lines on fd 2: ExecuTorch's ET_LOG "[file.cpp:71] ..." (unless it reports an error) and
# onnxruntime's "2026-01-01 10:00:00.123 [W:onnxruntime:...]" verbose/info/warning lines.
C_NOISE = re.compile(rb"\[[\w./-]+\.(?:cpp|cc|c|h|hpp):\d+\] (?!.*(?:[Ee]rror|ERROR))"
                     rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[VIW]:onnxruntime:")
_THIRD_PARTY_MODULES = r"(?:%s)(?:\.|$)" % "|".join(THIRD_PARTY)
_OURS = str(Path(__file__).resolve().parent)


@contextlib.contextmanager
def quiet_third_party():
    """Hide third-party warnings, log lines and C-level stderr chatter inside the block.

    >>> with quiet_third_party():                          # doctest: +SKIP
    ...     import torchao                                 # no "Failed to load ..." lines
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", module=_THIRD_PARTY_MODULES)
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!edgellm(?:\.|$))")
        stack.enter_context(_env(ENV))
        stack.enter_context(_logger_levels(THIRD_PARTY, logging.ERROR))
        stack.enter_context(_root_handler())
        if sys.stderr is sys.__stderr__ and _fd2_open():
            stack.enter_context(_filter_fd2(C_NOISE))
        yield


@contextlib.contextmanager
def _env(values: dict):
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _logger_levels(names, level: int):
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, before):
            lg.setLevel(lv)


class _OursOrErrors(logging.Filter):
    """Keep a record when it is an error, or was emitted by edgellm (by logger name or source file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.ERROR or record.name.split(".")[0] == "edgellm"
                or str(record.pathname).startswith(_OURS))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (as logging's last-resort handler does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _root_handler():
    """A filtered handler on the root logger, so ``logging.warning(...)`` in a library (which would add an
    unfiltered one through ``basicConfig``) is dropped, and records from edgellm print as ``basicConfig`` would."""
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    handler.addFilter(_OursOrErrors())
    for h in root.handlers:
        h.addFilter(handler.filters[0])
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in root.handlers:
            h.removeFilter(handler.filters[0])


def _fd2_open() -> bool:
    try:
        os.fstat(2)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _filter_fd2(pattern: re.Pattern):
    """Route fd 2 through a pipe; a thread drops whole lines matching *pattern* and copies the rest."""
    sys.stderr.flush()
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    pump = threading.Thread(target=_pump, args=(r, real, pattern), name="edgellm-stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(real, 2)           # the pipe's last write end (unless a child process still holds one) closes here
        pump.join(timeout=2.0)
        if not pump.is_alive():
            os.close(real)


def _pump(r: int, out: int, pattern: re.Pattern) -> None:
    pending = b""

    def write(data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(out, data)

    try:
        while chunk := os.read(r, 1 << 16):
            pieces = re.split(rb"(?<=[\r\n])", pending + chunk)     # each piece keeps its line end
            pending = pieces.pop()
            kept = [p for p in pieces if not pattern.match(p)]
            if pending and not pending[:1].isdigit() and not pending.startswith(b"["):
                kept.append(pending)   # an unfinished line that cannot be noise (a progress bar): pass it on now
                pending = b""
            if kept:
                write(b"".join(kept))
        if pending and not pattern.match(pending):
            write(pending)
    except Exception:              # never block the writers: copy whatever is left unfiltered
        write(pending)
        with contextlib.suppress(OSError):
            while chunk := os.read(r, 1 << 16):
                write(chunk)
    finally:
        os.close(r)
