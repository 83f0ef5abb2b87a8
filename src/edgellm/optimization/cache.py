"""The resumable measurement cache: one entry per (model fingerprint, recipe hash), read before any work.

Entries live in ``<cache>/<model fingerprint>/<recipe hash>/`` (``entry.json`` plus the built and
exported artifacts), so an interrupted search resumes where it stopped and a second run of the
same search only does what the first one did not finish. The fingerprint hashes the weight files'
contents; the recipe hash covers the recipe's steps, the evaluation protocol (not its name) and
the code versions (``code_versions``: torch, llama.cpp, onnxruntime, executorch, edgellm and its
git commit), so an upgrade never reuses old figures. Speed and RAM records also carry the host
fingerprint (``host_fingerprint``: CPU model, cores, ISA flags, RAM) and are measured again on
another host. Every figure is stamped ``measured_at`` (UTC) when this run measures it;
``Entries.provenance`` says when a figure was measured and whether it came from the cache, and
``fresh`` ignores every cached figure (built artifacts are still reused).
Deliberately absent: eviction (delete the folder to start over).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from ..errors import EdgeLLMError
from ..fileio import sha256_file, write_json
from ..models import BUILTINS, builtin_path
from ..recipe import recipe_to_dict


def model_fingerprint(spec: str) -> str:
    """A short content hash of a model's weight files (built-ins: the shipped file).

    >>> len(model_fingerprint("smollm2-135m"))    # doctest: +SKIP
    16
    """
    path = builtin_path(spec) if spec in BUILTINS else Path(spec)
    if not path.exists():
        return hashlib.sha256(spec.encode()).hexdigest()[:16]   # a hub id: its name is all there is
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                 p.suffix in (".safetensors", ".gguf", ".json"))
    h = hashlib.sha256()
    if spec in BUILTINS and BUILTINS[spec].rotate_seed is not None:    # same shipped file, another model
        h.update(f"rotated seed {BUILTINS[spec].rotate_seed}".encode())
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def recipe_hash(recipe, extra: dict | None = None) -> str:
    """Hash of a recipe's steps (name excluded: the same steps under two names share results).

    >>> from edgellm.recipe import Recipe
    >>> recipe_hash(Recipe(name="a")) == recipe_hash(Recipe(name="b"))
    True
    """
    d = recipe_to_dict(recipe)
    d.pop("name", None)
    d.pop("description", None)
    blob = json.dumps({"recipe": d, **(extra or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# entry fields that are built artifacts, not measurements: ``fresh`` keeps them
ARTIFACT_FIELDS = ("build", "gguf", "onnx")


def digest(obj) -> str:
    """A short hash of a JSON-able object (keys sorted).

    >>> digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-11-30T09:41:11Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=1)
def host_fingerprint() -> dict:
    """What makes this host's speed and RAM figures its own: CPU model, architecture, cores, ISA flags, RAM.

    >>> sorted(host_fingerprint())
    ['cpu_model', 'isa_flags', 'logical_cores', 'machine', 'physical_cores', 'ram_bytes']
    """
    from ..measure.machine import cpu_model, isa_flags, physical_cores, ram_bytes

    return {"cpu_model": cpu_model(), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(), "isa_flags": isa_flags(), "ram_bytes": ram_bytes()}


@lru_cache(maxsize=1)
def code_versions() -> dict:
    """The versions of the code behind a figure: torch, llama-cpp-python, onnxruntime, executorch, edgellm, and
    edgellm's git commit when it runs from a checkout (None otherwise; a missing package is None).

    >>> sorted(code_versions())
    ['edgellm', 'edgellm_commit', 'executorch', 'llama_cpp', 'onnxruntime', 'torch']
    """
    from importlib import metadata

    def version(dist: str):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from .. import __version__

    return {"torch": version("torch"), "llama_cpp": version("llama_cpp_python"), "onnxruntime": version("onnxruntime"),
            "executorch": version("executorch"), "edgellm": __version__, "edgellm_commit": _git_commit()}


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]          # src/edgellm/optimization/cache.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class ResultCache:
    """One JSON entry (and an artifact folder) per (model fingerprint, recipe hash)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeLLMError(f"cannot create the cache folder '{self.root}': {e.strerror}",
                               "pass a writable --cache DIR") from e

    def folder(self, model_fp: str, rhash: str) -> Path:
        return self.root / model_fp / rhash

    def get(self, model_fp: str, rhash: str) -> dict:
        p = self.folder(model_fp, rhash) / "entry.json"
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return {}     # torn by a crash before atomic writes existed: recompute
        return {}

    def put(self, model_fp: str, rhash: str, entry: dict) -> None:
        folder = self.folder(model_fp, rhash)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "entry.json", entry)


class Entries:
    """The search's view of the cache: entries by (model spec, recipe) under one evaluation *protocol* and code version.

    An entry is read once and kept in memory; ``save`` writes it back atomically after each step and
    stamps ``measured_at`` on every field this run changed. *fresh* starts each entry from its built
    artifacts only, so every figure is measured again. ``host_key`` is the host fingerprint's hash,
    which speed and RAM records are keyed by.

    >>> e = Entries(ResultCache(tmp), {"task": "text-generation"})            # doctest: +SKIP
    >>> e.fingerprints["m"] = "abc"; e.get("m", recipe)["nlls"] = [1.0]; e.save("m", recipe)   # doctest: +SKIP
    >>> e.provenance("m", recipe, "nlls")["from_cache"]                      # doctest: +SKIP
    False
    """

    def __init__(self, cache: ResultCache, protocol: dict, *, fresh: bool = False, code: dict | None = None,
                 host: dict | None = None):
        self.cache = cache
        self.code = code_versions() if code is None else code
        self.host = host_fingerprint() if host is None else host
        self.host_key = digest(self.host)
        self.protocol = {**protocol, "code": digest(self.code)}
        self.fresh = fresh
        self.fingerprints: dict[str, str] = {}
        self._mem: dict[tuple[str, str], dict] = {}
        self._read: dict[tuple[str, str], dict[str, str]] = {}     # field -> its value as read from disk
        self._new: set[tuple[tuple[str, str], str]] = set()        # (key, field) measured by this run

    def key(self, spec: str, recipe) -> tuple[str, str]:
        return self.fingerprints[spec], recipe_hash(recipe, self.protocol)

    def folder(self, spec: str, recipe) -> Path:
        return self.cache.folder(*self.key(spec, recipe))

    def get(self, spec: str, recipe) -> dict:
        k = self.key(spec, recipe)
        if k not in self._mem:
            e = self.cache.get(*k)
            if self.fresh:
                e = {f: v for f, v in e.items() if f in ARTIFACT_FIELDS or f == "measured_at"}
            self._mem[k] = e
            self._read[k] = {f: digest(v) for f, v in e.items()}
        return self._mem[k]

    def save(self, spec: str, recipe) -> None:
        k = self.key(spec, recipe)
        e, read = self._mem[k], self._read[k]
        stamp = now_utc()
        for f, v in list(e.items()):
            if f != "measured_at" and digest(v) != read.get(f):
                e.setdefault("measured_at", {})[f] = stamp
                self._new.add((k, f))
                read[f] = digest(v)
        self.cache.put(*k, e)

    def provenance(self, spec: str, recipe, field: str) -> dict | None:
        """``{"measured_at": UTC time, "from_cache": bool}`` of one field of the entry; None when it holds no such field."""
        k = self.key(spec, recipe)
        e = self.get(spec, recipe)
        if field not in e:
            return None
        return {"measured_at": (e.get("measured_at") or {}).get(field), "from_cache": (k, field) not in self._new}
