"""Data readers and calibration sampling.

Readers for plain text, ``sentence<TAB>label`` TSV files and (when reachable) Hugging Face
``datasets`` names; seeded calibration windows; and the default data location:
explicit argument, then ``$EDGELLM_DATA``, then ``../shared/data`` beside the repository.
Deliberately absent: any download. Calibration must never read the test split
(``wiki.test.raw``); callers pass ``wiki.valid.tokens`` for that.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EdgeLLMError

WIKI_TEST = "wikitext-2/wiki.test.raw"
WIKI_VALID = "wikitext-2/wiki.valid.tokens"
SST2 = "sst-2/{split}.tsv"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where the data lives: *explicit*, then ``$EDGELLM_DATA``, then ``../shared/data`` beside the repo.

    >>> data_dir()          # doctest: +SKIP
    PosixPath('.../shared/data')
    """
    candidates = []
    if explicit:
        candidates.append(("the --data-dir argument", Path(explicit)))
    if os.environ.get("EDGELLM_DATA"):
        candidates.append(("EDGELLM_DATA", Path(os.environ["EDGELLM_DATA"])))
    repo = Path(__file__).resolve().parents[2]
    candidates.append(("the default", repo.parent / "shared" / "data"))
    candidates.append(("the default", Path.cwd().parent / "shared" / "data"))
    for origin, path in candidates:
        if path.is_dir():
            return path
        if origin != "the default":
            raise EdgeLLMError(f"data folder '{path}' (from {origin}) does not exist",
                               "point EDGELLM_DATA at the folder that holds wikitext-2/ and sst-2/")
    raise EdgeLLMError("no data folder found (looked for ../shared/data beside the repository)",
                       "set EDGELLM_DATA to the folder that holds wikitext-2/ and sst-2/")


def data_file(relative: str, explicit_dir: str | os.PathLike | None = None) -> Path:
    """A file under the data folder, e.g. ``data_file(WIKI_TEST)``; a clear error when missing."""
    path = data_dir(explicit_dir) / relative
    if not path.is_file():
        raise EdgeLLMError(f"data file '{path}' not found", "set EDGELLM_DATA to the folder that holds it")
    return path


def resolve_data_path(spec: str | os.PathLike) -> Path:
    """A user-given path, or a name relative to the data folder (``wikitext-2/wiki.test.raw``)."""
    path = Path(spec)
    if path.exists():
        return path
    if not path.is_absolute():
        try:
            candidate = data_dir() / path
        except EdgeLLMError:
            candidate = None
        if candidate is not None and candidate.exists():
            return candidate
    raise EdgeLLMError(f"data file '{spec}' not found", "check the path (relative names are looked up in EDGELLM_DATA)")


def read_text(path: str | os.PathLike) -> str:
    """The whole UTF-8 text of a file, with clear errors for a missing, empty or non-UTF-8 file."""
    path = resolve_data_path(path)
    if path.is_dir():
        raise EdgeLLMError(f"'{path}' is a folder, not a text file", "pass a text file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeLLMError(f"'{path}' is not UTF-8 text (byte {e.start})", "convert it to UTF-8 first") from e
    if not text.strip():
        raise EdgeLLMError(f"text file '{path}' is empty", "pass a file with text in it")
    return text


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: int


def read_tsv(path: str | os.PathLike, limit: int | None = None) -> list[LabeledText]:
    """Rows of ``sentence<TAB>label``; a header line (non-integer label) is skipped.

    >>> rows = read_tsv("sst-2/dev.tsv")  # doctest: +SKIP
    """
    text = read_text(path)
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("\t")
        if not sep:
            raise EdgeLLMError(f"{path}:{i + 1} has no tab", "each line must be 'sentence<TAB>label'")
        try:
            rows.append(LabeledText(sentence, int(label)))
        except ValueError:
            if i == 0:
                continue  # header
            raise EdgeLLMError(f"{path}:{i + 1}: label '{label}' is not an integer",
                               "each line must be 'sentence<TAB>label'") from None
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise EdgeLLMError(f"'{path}' has no labelled rows", "each line must be 'sentence<TAB>label'")
    return rows


def read_hf_dataset(name: str, split: str = "test", column: str = "text", config: str | None = None,
                    online: bool = False) -> str:
    """Text of a Hugging Face dataset split joined by blank lines (needs ``online=True`` and the hub)."""
    if not online:
        raise EdgeLLMError(f"'{name}' is a Hugging Face dataset name and edgellm is offline by default",
                           "pass --online (EDGELLM_ONLINE=1) or give a local file")
    try:
        import datasets
    except ImportError as e:
        raise EdgeLLMError("reading HF datasets needs the 'datasets' package", "pip install 'edgellm[datasets]'") from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, missing split, etc.
        raise EdgeLLMError(f"could not load dataset '{name}': {e}", "check the name and your network") from e
    return "\n\n".join(t for t in ds[column] if t)


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (1-D long tensor) of *text*, no special tokens; optionally only the first *max_tokens*.

    Long texts are tokenized in line-aligned chunks so that a capped read does not pay for the
    whole file, and so that fast tokenizers never see one gigantic string.
    """
    ids: list[int] = []
    chunk_chars = 200_000
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        ids.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
        if max_tokens is not None and len(ids) >= max_tokens + 1:
            break
    out = torch.tensor(ids if max_tokens is None else ids[:max_tokens], dtype=torch.long)
    if out.numel() < 2:
        raise EdgeLLMError("text has fewer than 2 tokens", "pass a longer text file")
    return out


def tokenize_file(tokenizer, path: str | os.PathLike, max_tokens: int | None = None) -> torch.Tensor:
    """``tokenize_text`` of a file's text."""
    return tokenize_text(tokenizer, read_text(path), max_tokens)


def calibration_windows(tokenizer, path: str | os.PathLike, n_samples: int = 128, seq_len: int = 512,
                        seed: int = 0) -> torch.Tensor:
    """*n_samples* random windows of *seq_len* tokens from a text file, seeded: ``[n, seq_len]``.

    Windows are drawn without replacement from the non-overlapping tiling of the file when it is
    long enough, else with overlap. Fewer tokens than one window is an error; fewer distinct
    windows than asked for is a warning and the run uses what there is.

    >>> x = calibration_windows(tok, "wikitext-2/wiki.valid.tokens", 8, 256)   # doctest: +SKIP
    """
    if n_samples <= 0 or seq_len <= 1:
        raise EdgeLLMError(f"calibration needs n_samples ≥ 1 and seq_len ≥ 2 (got {n_samples}, {seq_len})",
                           "raise --calib-samples / --calib-len")
    ids = tokenize_file(tokenizer, path)
    n_tokens = ids.numel()
    if n_tokens < seq_len:
        raise EdgeLLMError(f"calibration file '{path}' has {n_tokens} tokens, fewer than one window of {seq_len}",
                           "use a longer file or a smaller --calib-len")
    gen = torch.Generator().manual_seed(seed)
    n_tiles = n_tokens // seq_len
    if n_tiles >= n_samples:
        starts = torch.randperm(n_tiles, generator=gen)[:n_samples] * seq_len
    else:
        warnings.warn(f"calibration file '{path}' holds {n_tiles} windows of {seq_len} tokens; "
                      f"using {n_tiles} instead of {n_samples}", stacklevel=2)
        starts = torch.arange(n_tiles) * seq_len
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
