"""Atomic writes and content manifests.

Outputs are written into a temporary sibling and renamed into place, so a failure or
Ctrl-C never leaves a half-written file or folder behind. Inputs are never modified;
``read_yaml`` reads the YAML inputs (recipes, device profiles) with one error for both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import EdgeLLMError


def check_writable_target(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing output unless *force*; make sure the parent is writable."""
    path = Path(path)
    if path.exists() and not force:
        raise EdgeLLMError(f"output '{path}' already exists", "choose another path or pass --force")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeLLMError(f"cannot create output folder '{parent}': {e.strerror}", "choose a writable --out") from e
    if not os.access(parent, os.W_OK):
        raise EdgeLLMError(f"output folder '{parent}' is not writable", "choose a writable --out")
    return path


def read_yaml(path: str | os.PathLike, what: str, hint: str = "check the path"):
    """The parsed YAML file *path*; a missing file or invalid YAML raises ``EdgeLLMError`` naming *what* it is.

    >>> read_yaml("recipes/w8-rtn.yaml", "recipe")["name"]    # doctest: +SKIP
    'w8-rtn'
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EdgeLLMError(f"{what} '{path}' not found", hint)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise EdgeLLMError(f"{what} '{path}' is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from e


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False):
    """Yield a temporary folder next to *path*; on success it replaces *path*.

    >>> with atomic_dir("out/model") as tmp:   # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    path = check_writable_target(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = True, mode: str = "w"):
    """Yield an open temporary file next to *path*; renamed onto *path* when the block succeeds."""
    path = check_writable_target(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write *obj* as indented JSON, atomically (overwrites)."""
    with atomic_file(path, force=True) as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    return Path(path)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike) -> dict:
    """Write ``manifest.json`` with the size and sha256 of every other file in *folder*."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {"format": "edgellm-manifest/1", "files": files}
    write_json(folder / "manifest.json", manifest)
    return manifest


def verify_manifest(folder: str | os.PathLike) -> None:
    """Raise EdgeLLMError when a file listed in ``manifest.json`` is missing or altered."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.exists():
        return
    manifest = json.loads(mpath.read_text())
    for name, info in manifest.get("files", {}).items():
        p = folder / name
        if not p.exists():
            raise EdgeLLMError(f"'{p}' is listed in the manifest but missing", "re-create the model folder")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise EdgeLLMError(f"'{p}' does not match its sha256 in manifest.json (corrupt or edited)",
                               "re-create the model folder")


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
