"""The separate Python environment in which ``litert-torch`` converts programs to ``.tflite``.

``litert-torch`` cannot be installed beside edgellm: its converter pins ``xdsl==0.28.0``, which
pins ``typing-extensions<4.13``, while pydantic, anyio and openai in the main environment need
≥ 4.14 (``pip install --dry-run`` would downgrade typing-extensions to 4.12.2 and pydantic to 2.11).
So the converter lives in its own virtual environment, built on first use under edgellm's cache
(``modelfiles.cache_dir()/litert-converter-<version>``, rebuilt when the main torch changes) from the package registry, with the same
torch version as the main environment (programs are handed over with ``torch.export.save``).
``$EDGELLM_LITERT_PYTHON`` names an existing interpreter instead. The runtime side,
``ai-edge-litert``, installs in the main environment (the ``litert`` extra).

The build is serialised with a file lock and marked complete by a ``ready`` file, so two exports
never build it at once and an interrupted build is rebuilt. Deliberately absent: upgrading or
repairing an environment in place (delete its folder to rebuild it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def run_converter(job_file: Path, *, timeout: float | None = None) -> None:
    """Run ``litert_convert.py job_file`` in the converter environment; its last error line becomes an EdgeLLMError.

    >>> run_converter(Path("job.json"))             # doctest: +SKIP
    """
    script = Path(__file__).with_name("litert_convert.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        r = subprocess.run([str(converter_python()), str(script), str(job_file)], capture_output=True, text=True,
                           env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EdgeLLMError(f"the LiteRT conversion took longer than {timeout:.0f} s", "use a smaller model or max_len") from e
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error:" in ln] or lines or ["(no output)"]
        if os.environ.get("EDGELLM_DEBUG"):
            sys.stderr.write(r.stderr)
        raise EdgeLLMError(f"LiteRT conversion failed: {errors[-1].strip()[:300]}", "report it with the model's config")


__all__ = ["LITERT_TORCH", "converter_python", "run_converter"]
