"""The resumable measurement cache: one entry per (model fingerprint, recipe hash), read before any work.

Entries live in ``<cache>/<model fingerprint>/<recipe hash>/`` (``entry.json`` plus the built and
exported artifacts), so an interrupted search resumes where it stopped and a second run of the
same search only does what the first one did not finish. The fingerprint hashes the weight files'
contents; the recipe hash covers the recipe's steps and the evaluation protocol (not its name).
Deliberately absent: eviction (delete the folder to start over).
"""

from __future__ import annotations

import hashlib
import json
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
    """The search's view of the cache: entries by (model spec, recipe) under one evaluation *protocol*.

    An entry is read once and kept in memory; ``save`` writes it back atomically after each step.

    >>> e = Entries(ResultCache(tmp), {"task": "text-generation"})            # doctest: +SKIP
    >>> e.fingerprints["m"] = "abc"; e.get("m", recipe)["nlls"] = [1.0]; e.save("m", recipe)   # doctest: +SKIP
    """

    def __init__(self, cache: ResultCache, protocol: dict):
        self.cache = cache
        self.protocol = protocol
        self.fingerprints: dict[str, str] = {}
        self._mem: dict[tuple[str, str], dict] = {}

    def key(self, spec: str, recipe) -> tuple[str, str]:
        return self.fingerprints[spec], recipe_hash(recipe, self.protocol)

    def folder(self, spec: str, recipe) -> Path:
        return self.cache.folder(*self.key(spec, recipe))

    def get(self, spec: str, recipe) -> dict:
        k = self.key(spec, recipe)
        if k not in self._mem:
            self._mem[k] = self.cache.get(*k)
        return self._mem[k]

    def save(self, spec: str, recipe) -> None:
        k = self.key(spec, recipe)
        self.cache.put(*k, self._mem[k])
