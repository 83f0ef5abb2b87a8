"""Training data for distillation: what a micro-batch is, and where each one comes from.

* Causal LM: the text is tokenized once; the last ``val_tokens`` are held out for validation
  and the rest is tiled into non-overlapping windows of ``seq_len`` tokens. Epoch *e* visits
  the windows in the order ``randperm(seed + e)``; micro-batch *k* is a pure function of
  (seed, k), so the data position of a resumed run is just the micro-batch counter.
* Classifier: ``sentence<TAB>label`` rows, shuffled the same way, tokenized per batch.

Several processes (``accelerate launch``) take interleaved micro-batches: process *r* of *n*
reads global micro-batch ``k·n + r``. Deliberately absent: packing across documents, and
streaming corpora larger than memory.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import LabeledText, read_tsv, resolve_data_path, tokenize_file
from ..errors import EdgeLLMError


@functools.lru_cache(maxsize=4)
def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@dataclass
class LMData:
    train: torch.Tensor        # [n_windows, seq_len]
    val: torch.Tensor          # [n_val_windows, seq_len]
    fingerprint: str
    source: str

    kind = "causal-lm"

    def batch_indices(self, k: int, batch_size: int, seed: int) -> list[int]:
        """Window indices of global micro-batch *k*."""
        n = self.train.shape[0]
        out = []
        for j in range(k * batch_size, (k + 1) * batch_size):
            epoch, pos = divmod(j, n)
            out.append(int(_seeded_perm(n, seed * 100_003 + epoch)[pos]))
        return out

    def tokens_per_batch(self, batch_size: int) -> int:
        return batch_size * self.train.shape[1]


@dataclass
class ClassData:
    train: list[LabeledText]
    val: list[LabeledText]
    fingerprint: str
    source: str
    num_labels: int

    kind = "classification"

    def batch_indices(self, k: int, batch_size: int, seed: int) -> list[int]:
        n = len(self.train)
        out = []
        for j in range(k * batch_size, (k + 1) * batch_size):
            epoch, pos = divmod(j, n)
            out.append(int(_seeded_perm(n, seed * 100_003 + epoch)[pos]))
        return out


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def lm_data(tokenizer, data, seq_len: int, val_tokens: int) -> LMData:
    """Windows from a text file (path) or a 1-D tensor of token ids; errors when too short."""
    if isinstance(data, torch.Tensor):
        ids, source = data.reshape(-1).long(), "tensor"
    else:
        path = resolve_data_path(data)
        if path.name == "wiki.test.raw":
            raise EdgeLLMError(f"'{path}' is the evaluation split", "train on wikitext-2/wiki.valid.tokens, never the test file")
        ids, source = tokenize_file(tokenizer, path), str(path)
    need = seq_len + val_tokens
    if ids.numel() < need:
        raise EdgeLLMError(f"the training text has {ids.numel()} tokens, fewer than one window of {seq_len} plus "
                           f"{val_tokens} held-out validation tokens", "use a longer text, or lower seq_len / val_tokens")
    cut = ids.numel() - val_tokens
    train_ids, val_ids = ids[:cut], ids[cut:]
    n = train_ids.numel() // seq_len
    train = train_ids[: n * seq_len].view(n, seq_len)
    nv = val_ids.numel() // seq_len
    val = val_ids[: nv * seq_len].view(nv, seq_len) if nv else val_ids.view(1, -1)[:, :0]
    return LMData(train, val, _hash("lm", seq_len, val_tokens, ids.numpy().tobytes()), source)


def class_data(data, eval_data=None, val_rows: int = 500) -> ClassData:
    """Labelled rows from a TSV path or a list of ``LabeledText``; validation = *eval_data* or a held-out tail."""
    rows, source = (list(data), "rows") if isinstance(data, (list, tuple)) else (read_tsv(data), str(data))
    if eval_data is not None:
        val = list(eval_data) if isinstance(eval_data, (list, tuple)) else read_tsv(eval_data)
        train = rows
    else:
        if len(rows) <= val_rows:
            raise EdgeLLMError(f"{len(rows)} labelled rows leave nothing to train on after holding out {val_rows}",
                               "pass more rows, a separate eval set, or a smaller val_rows")
        train, val = rows[:-val_rows] if val_rows else rows, rows[-val_rows:] if val_rows else []
    if not train:
        raise EdgeLLMError("the training data has no labelled rows", "pass a 'sentence<TAB>label' file")
    labels = {r.label for r in train}
    if min(labels) < 0:
        raise EdgeLLMError(f"labels must be ≥ 0 (found {min(labels)})", "use labels 0..C-1")
    body = "\n".join(f"{r.text}\t{r.label}" for r in train).encode()
    return ClassData(train, val, _hash("cls", body), source, max(labels) + 1)


class TopKCache:
    """The teacher's top-k logits per training window, in memory and optionally on disk.

    On disk each window is one safetensors file under ``folder/<key>/``, where the key covers
    the teacher, the data and k, so a cache is only ever reused for the same inputs.
    """

    def __init__(self, k: int, key: str, folder: str | Path | None = None):
        self.k, self.mem = k, {}
        self.folder = Path(folder) / key if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, idx: int, compute):
        if idx in self.mem:
            return self.mem[idx]
        path = self.folder / f"w{idx}.safetensors" if self.folder else None
        if path is not None and path.exists():
            from safetensors.torch import load_file

            t = load_file(str(path))
            item = (t["values"], t["indices"])
        else:
            values, indices = compute(idx).float().topk(self.k, dim=-1)
            item = (values.half(), indices.int())
            if path is not None:
                from safetensors.torch import save_file

                tmp = path.with_suffix(".tmp")
                save_file({"values": item[0].contiguous(), "indices": item[1].contiguous()}, str(tmp))
                tmp.replace(path)
        self.mem[idx] = item
        return item
