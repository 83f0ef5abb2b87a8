"""Atomic writes and content manifests.

Outputs are written into a temporary sibling and renamed into place, so a failure or
Ctrl-C never leaves a half-written file or folder behind. ``check_output`` guards every output
first: ``--force`` only ever replaces something edgellm wrote, never an input, the home folder, a
repository root or ``/``. Inputs are never modified;
``read_yaml`` reads the YAML inputs (recipes, device profiles) with one error for both.

A SIGKILL (or a power cut) cannot be caught: it can leave the writer's temporary sibling
``.NAME.tmp-PID-*`` (or, in the instant of a forced replacement, the previous output moved aside
as ``.NAME.old-PID``) next to the output, never a half-written output. The next write of the same
output (``check_output``, ``clean_stale``) removes the temporaries whose process is gone and puts
back a moved-aside output whose replacement never landed. Deliberately absent: fsync (a killed
process loses nothing the kernel already holds; a power cut can still lose the last output).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import EdgeLLMError


def check_output(path: str | os.PathLike, force: bool = False, *, inputs=(), own: bool = False) -> Path:
    """The one guard every output passes before anything is written; returns *path* (its parent created).

    Refused with ``EdgeLLMError`` (the CLI's exit 2), nothing touched:

    - ``/``, the home folder, a folder that holds either, and a repository root (a folder with
      ``.git``), even with *force*;
    - a path that is one of *inputs* (resolved, ``samefile``), holds one, or lies inside one;
    - an existing path without *force*; with *force*, an existing non-empty folder or file that
      edgellm did not write (``written_by_edgellm``). *own* skips that last check for paths the
      caller names itself (a cache entry, a training checkpoint).

    After the first two refusals and before the existence check, it removes what a killed edgellm left
    beside *path* (``clean_stale``), so a moved-aside output is back in place before it is judged.

    >>> check_output("out/model", inputs=("out/model",))        # doctest: +SKIP
    Traceback (most recent call last):
    edgellm.errors.EdgeLLMError: output 'out/model' is the input 'out/model'
    """
    path = Path(path)
    real = path.expanduser().resolve()
    hint = "choose a new folder for --out"
    if real == real.parent:
        raise EdgeLLMError(f"output '{path}' is the filesystem root", hint)
    home = Path.home().expanduser().resolve()
    if real == home or home.is_relative_to(real):
        raise EdgeLLMError(f"output '{path}' is {'the home folder' if real == home else 'a folder holding the home folder'}",
                           hint)
    if (real / ".git").exists():
        raise EdgeLLMError(f"output '{path}' is a repository root (it holds .git)", hint)
    for inp in inputs:
        _check_not_input(path, real, inp)
    clean_stale(path)                     # a killed writer's temporaries; a moved-aside output goes back
    if path.exists() or path.is_symlink():
        if not force:
            raise EdgeLLMError(f"output '{path}' already exists", "choose another path or pass --force")
        if not own and not written_by_edgellm(path):
            raise EdgeLLMError(f"output '{path}' exists and edgellm did not write it (no edgellm manifest), so --force "
                               "will not replace it", "choose a new path, or move it away yourself")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeLLMError(f"cannot create output folder '{parent}': {e.strerror}", "choose a writable --out") from e
    if not os.access(parent, os.W_OK):
        raise EdgeLLMError(f"output folder '{parent}' is not writable", "choose a writable --out")
    return path


check_writable_target = check_output     # the older name, kept for its callers


def _check_not_input(path: Path, real: Path, inp) -> None:
    if inp is None or str(inp) == "":
        return
    src = Path(inp).expanduser()
    if not src.exists():
        return                            # a hub id or a built-in name: nothing on disk to protect here
    rsrc = src.resolve()
    hint = "write to a new path outside the input"
    if real == rsrc or (path.exists() and os.path.samefile(path, src)):
        raise EdgeLLMError(f"output '{path}' is the input '{inp}'", hint)
    if rsrc.is_relative_to(real):
        raise EdgeLLMError(f"output '{path}' contains the input '{inp}'", hint)
    if real.is_relative_to(rsrc):
        raise EdgeLLMError(f"output '{path}' lies inside the input '{inp}'", hint)


_STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp-(?P<pid>\d+)-.*|old-(?P<old>\d+))$")


def temp_prefix(path: str | os.PathLike) -> str:
    """The name prefix of this process's temporary siblings of *path*: ``.NAME.tmp-PID-`` (``clean_stale`` reads it).

    >>> temp_prefix("out/model").startswith(".model.tmp-")
    True
    """
    return f".{Path(path).name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                       # another user's live process
    return True


def clean_stale(path: str | os.PathLike) -> list[str]:
    """Remove the temporary siblings of *path* (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) whose process is gone,
    as a SIGKILLed writer leaves them; an ``.old`` copy whose output is missing is renamed back onto it.
    *path*'s name may be a glob (``checkpoint-*``). Returns the names removed or put back.

    >>> clean_stale("out/model")      # after `edgellm quantize ... --out out/model` was killed     # doctest: +SKIP
    ['.model.tmp-4242-k3j9x1']
    """
    import fnmatch

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    done = []
    for e in entries:
        m = _STALE.match(e.name)
        if not m or not fnmatch.fnmatchcase(m["name"], path.name) or _alive(int(m["pid"] or m["old"])):
            continue
        p, target = Path(e.path), parent / m["name"]
        if m["old"] and not (target.exists() or target.is_symlink()):
            os.replace(p, target)         # killed between moving the old output aside and landing the new one
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        done.append(e.name)
    return done


_MARKERS = ("manifest.json", "edgellm.json", "results.json")     # content manifest, artifact sidecar, optimize's


def written_by_edgellm(path: str | os.PathLike) -> bool:
    """Whether *path* is empty or something edgellm wrote: a folder with an edgellm manifest, artifact sidecar
    or results file; a GGUF with edgellm's ``edgellm.export`` key; a JSON file with an edgellm ``format``.

    >>> written_by_edgellm("out/model")       # a folder edgellm saved     # doctest: +SKIP
    True
    """
    path = Path(path)
    if path.is_dir():
        if not any(path.iterdir()):
            return True
        return any(_edgellm_json(path / m) for m in _MARKERS)
    if not path.is_file():
        return False
    if path.stat().st_size == 0:
        return True
    if path.suffix == ".json":
        return _edgellm_json(path)
    if path.suffix == ".gguf":
        return _edgellm_gguf(path)
    return False


def _edgellm_json(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("edgellm-")


def _edgellm_gguf(path: Path) -> bool:
    try:
        from gguf import GGUFReader

        return "edgellm.export" in GGUFReader(path).fields
    except Exception:  # noqa: BLE001 — not a readable GGUF, or no gguf package: not provably ours
        return False


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, is_dir: bool) -> None:
    """Give a finished temporary file or folder the permissions a plain ``open``/``mkdir`` would have:
    ``mkstemp``/``mkdtemp`` create them private (0600/0700), which would hide outputs from other users."""
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, *, inputs=(), own: bool = False):
    """Yield a temporary folder next to *path*; on success it replaces *path* (``check_output`` guards it first).

    >>> with atomic_dir("out/model") as tmp:   # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    path = check_output(path, force, inputs=inputs, own=own)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        yield tmp
        _publish(tmp, is_dir=True)
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
def atomic_file(path: str | os.PathLike, force: bool = True, mode: str = "w", *, inputs=(), own: bool = True):
    """Yield an open temporary file next to *path*; renamed onto *path* when the block succeeds.

    By default it overwrites (``own``: files edgellm names itself, such as a cache entry or a manifest);
    a file the user named passes ``own=False`` so ``check_output`` keeps what edgellm did not write.
    """
    path = check_output(path, force, inputs=inputs, own=own)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        _publish(Path(tmp), is_dir=False)
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
