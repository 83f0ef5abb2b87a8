"""The ladder benchmark's per-model state (``bench/ladder.py``): its work folder, its step cache and its lazily
loaded source model. The privileged models are the ones whose shipped grid is asymmetric block-32."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from bench._common import invocation, now_utc

PRIVILEGED = {"smollm2-135m"}                 # ships as Q4_1: its weights sit on the asymmetric block-32 grid


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Store:
    """cache.json in a model's work folder: one entry per finished (step, file), written after each one."""

    def __init__(self, folder: Path):
        from edgellm.fileio import write_json

        self.path, self._write = folder / "cache.json", write_json
        self.d = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.d.get(key)

    def put(self, key: str, value: dict) -> dict:
        self.d[key] = {**value, "command": shlex.join(invocation()), "measured_at": now_utc()}
        self._write(self.path, self.d)
        return self.d[key]


def fingerprint(path: Path) -> str:
    s = path.stat()
    return f"{s.st_size}:{s.st_mtime_ns}"


class Model:
    """One model's work folder, cache and lazily loaded source."""

    def __init__(self, spec: str, args):
        self.spec, self.args = spec, args
        name = Path(spec).name if Path(spec).exists() else spec
        self.name = name if not Path(spec).exists() else f"{name}-{hashlib.sha1(str(Path(spec).resolve()).encode()).hexdigest()[:8]}"
        self.label = name
        self.privileged = spec in PRIVILEGED or spec in args.privileged
        self.folder = Path(args.work) / f"{self.name}-c{args.calib_samples}x{args.calib_len}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.folder)
        self._src = self._tok = None

    def src(self):
        from edgellm.models import load

        if self._src is None:
            log(f"{self.label}: load")
            self._src = load(self.spec)
        return self._src

    def tokenizer(self):
        return self.src().tokenizer

    def built(self) -> dict:
        """file name -> build entry, for the files built and still on disk unchanged."""
        out = {}
        for k, e in self.store.d.items():
            if k.startswith("build:") and "file" in e and (self.folder / e["file"]).exists() \
                    and fingerprint(self.folder / e["file"]) == e["fingerprint"]:
                out[k[6:]] = e
        return out


def heldout_tiles(ids, calib, L: int, n: int) -> list:
    """The first *n* tiles of *ids*'s non-overlapping tiling into *L* tokens that no calibration window (rows of
    *calib*, drawn from that tiling) is; an error when a window is not a tile or no tile is left."""
    tiles = ids[: ids.numel() // L * L].view(-1, L)
    index = {tuple(t.tolist()): i for i, t in enumerate(tiles)}
    used = {index.get(tuple(w.tolist())) for w in calib}
    if None in used:
        raise RuntimeError("a calibration window is not a tile of wiki.valid: the held-out slice cannot be found")
    free = [tiles[i] for i in range(len(tiles)) if i not in used][:n]
    if not free:
        raise RuntimeError("wiki.valid has no tile left outside the calibration windows")
    return free
