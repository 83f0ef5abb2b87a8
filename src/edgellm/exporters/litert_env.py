"""The separate Python environment in which ``litert-torch`` converts programs to ``.tflite``.

``litert-torch`` cannot be installed beside edgellm: its converter pins ``xdsl==0.28.0``, which
pins ``typing-extensions<4.13``, while pydantic, anyio and openai in the main environment need
≥ 4.14 (``pip install --dry-run`` would downgrade typing-extensions to 4.12.2 and pydantic to 2.11).
So the converter lives in its own virtual environment, built on first use under edgellm's cache
(``modelfiles.cache_dir()/litert-converter-<version>``, rebuilt when the main torch changes) from the package registry, with the same
torch version as the main environment (programs are handed over with ``torch.export.save``).
``$EDGELLM_LITERT_PYTHON`` names an existing interpreter instead. One converter process serves an edgellm
process's conversions in turn (``run_converter``), so that ``optimize`` on a phone profile pays the
converter's import once, not per candidate. The runtime side,
``ai-edge-litert``, installs in the main environment (the ``litert`` extra).

The build is serialised with a file lock and marked complete by a ``ready`` file, so two exports
never build it at once and an interrupted build is rebuilt. Deliberately absent: upgrading or
repairing an environment in place (delete its folder to rebuild it).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import EdgeLLMError
from ..modelfiles import cache_dir

LITERT_TORCH = "0.10.0"            # the converter version the environment pins


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def converter_python(*, build: bool = True) -> Path:
    """The Python of the converter environment, building it first when *build* and it is missing.

    >>> converter_python().name                      # doctest: +SKIP
    'python'
    """
    override = os.environ.get("EDGELLM_LITERT_PYTHON")
    if override:
        path = Path(override)
        if not path.exists():
            raise EdgeLLMError(f"$EDGELLM_LITERT_PYTHON names '{path}', which does not exist",
                               "point it at a Python with litert-torch installed, or unset it")
        return path
    root = cache_dir() / f"litert-converter-{LITERT_TORCH}"
    python = root / "bin" / "python"
    if _ready(root):
        return python
    if not build:
        raise EdgeLLMError(f"the LiteRT converter environment is not built ({root})", "run edgellm export --format litert once")
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _ready(root):
            _build(root)
    return python


def _ready(root: Path) -> bool:
    """Built completely, with the main environment's torch version."""
    marker = root / "ready"
    return marker.exists() and f"torch=={_torch_version()}" in marker.read_text().split()


def _build(root: Path) -> None:
    import venv

    shutil.rmtree(root, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(root)
    cmd = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
           f"torch=={_torch_version()}", f"litert-torch=={LITERT_TORCH}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise EdgeLLMError(f"building the LiteRT converter environment failed: {last}",
                           "it needs the package registry once; or set $EDGELLM_LITERT_PYTHON to a Python with "
                           f"litert-torch=={LITERT_TORCH}")
    (root / "ready").write_text(f"litert-torch=={LITERT_TORCH} torch=={_torch_version()}\n")


# A conversion of a tiny model takes a second or two; importing litert_torch takes 6-7 s. So one converter
# process serves the conversions of one edgellm process in turn (litert_convert.py --serve), and is closed after
# a conversion that took longer than KEEP_SECONDS (the import is then a small share, and a large model's
# converter should not sit in memory), after any failure, and at exit.
KEEP_SECONDS = 30.0


class _Converter:
    """One converter process: job paths in on stdin, one JSON answer line each on stdout, its stderr in a file."""

    def __init__(self):
        script = Path(__file__).with_name("litert_convert.py")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.owner = os.getpid()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(converter_python()), str(script), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def stderr_since(self, offset: int) -> str:
        self.log.seek(offset)
        return self.log.read().decode(errors="replace")

    def run(self, job_file: Path, timeout: float | None) -> dict:
        """The answer to one job: ``{"ok": true}`` or ``{"ok": false, "error": ...}``, with ``stderr``."""
        offset = os.fstat(self.log.fileno()).st_size
        try:
            self.proc.stdin.write(f"{job_file}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass                                    # it died; read() below sees the end of its output
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise EdgeLLMError(f"the LiteRT conversion took longer than {timeout:.0f} s", "use a smaller model or max_len")
        line = self.proc.stdout.readline()
        if not line:                                # killed or crashed inside the converter
            code = self.proc.wait()
            answer = {"ok": False, "crash": f"the converter process ended with code {code}"}
        else:
            answer = json.loads(line)
        return {**answer, "stderr": self.stderr_since(offset)}

    def close(self) -> None:
        if self.owner != os.getpid():
            return                                  # a forked child's copy: the parent's process, not ours
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_converter: _Converter | None = None
_lock = threading.Lock()


def _close_converter() -> None:
    global _converter
    if _converter is not None:
        _converter.close()
        _converter = None


atexit.register(_close_converter)


def run_converter(job_file: Path, *, timeout: float | None = None) -> None:
    """Run the job ``job_file`` (see ``litert_convert.py``) in the converter process; a failure becomes an EdgeLLMError
    naming its last error line.

    >>> run_converter(Path("job.json"))             # doctest: +SKIP
    """
    global _converter
    with _lock:
        if _converter is None or not _converter.usable():
            _close_converter()                      # a dead one is reaped; a forked child's copy is left alone
            _converter = _Converter()
        t0 = time.perf_counter()
        try:
            answer = _converter.run(job_file, timeout)
        except BaseException:
            _close_converter()                      # Ctrl-C or a timeout: never reuse a converter mid-job
            raise
        if not answer["ok"] or time.perf_counter() - t0 > KEEP_SECONDS:
            _close_converter()
    if not answer["ok"]:
        lines = [ln for ln in answer["stderr"].strip().splitlines() if ln.strip()]
        errors = ([answer["error"]] if "error" in answer else
                  [ln for ln in lines if "Error" in ln or "error:" in ln] or lines[-1:] or [answer["crash"]])
        if os.environ.get("EDGELLM_DEBUG"):
            sys.stderr.write(answer["stderr"])
        raise EdgeLLMError(f"LiteRT conversion failed: {errors[-1].strip()[:300]}", "report it with the model's config")


__all__ = ["LITERT_TORCH", "converter_python", "run_converter"]
