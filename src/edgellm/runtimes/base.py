"""The Runtime interface every backend implements (docs/design.md §1), plus what the backends share.

A runtime is measured, never trusted: ``logits`` feeds perplexity/KL, ``generate`` feeds
latency, ``weight_bytes`` feeds bandwidth utilisation, ``file_bytes`` the size column.
Shared here: ``sample_next`` (greedy or temperature + nucleus sampling of one row),
``decode_loop`` (the one sampling-and-stop loop behind every runtime's ``generate``: each
backend feeds it its own prefill and one-token step), ``folder_tokenizer`` (the tokenizer
shipped inside an exported artifact folder) and ``ArtifactRuntime`` (opening such a folder
through ``edgellm.artifacts``, the CPU-only and task checks, the sizes from the sidecar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch

from ..artifacts import ArtifactFormat, read_artifact, require, resolve_artifact
from ..errors import EdgeLLMError
from ..fileio import dir_bytes
from ..modelfiles import has_tokenizer, quiet_transformers


@runtime_checkable
class Runtime(Protocol):
    name: str            # "torch", "llama.cpp", "onnxruntime", "executorch"
    max_positions: int | None
    threads: int | None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """[T] token ids -> [T, vocab] float32 next-token logits for one window (no cache)."""

    def generate(self, ids: torch.Tensor, max_new_tokens: int, **sampling) -> Iterator[int]:
        """Yield new token ids one at a time, with a KV cache. EOS is ignored unless ``stop_ids`` is given."""

    def weight_bytes(self) -> int:
        """Bytes of weights read per decoded token."""

    def file_bytes(self) -> int:
        """Size of the artifact on disk."""


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """Greedy when ``temperature == 0``, else temperature + nucleus sampling over a [vocab] row.

    >>> sample_next(torch.tensor([0.1, 2.0, -1.0]))
    1
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def decode_loop(prefill: Callable[[], torch.Tensor], step: Callable[[int], torch.Tensor], max_new_tokens: int,
                temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop_ids=(),
                logits_processor=None) -> Iterator[int]:
    """Yield up to *max_new_tokens* sampled ids: the one decode loop behind every runtime's ``generate``.

    ``prefill()`` runs the prompt and returns the [vocab] logits of its last position; ``step(tok)``
    feeds one sampled token through the runtime's KV cache and returns the next [vocab] row. Each
    row goes through ``logits_processor(generated_ids, row) -> row`` when given, then ``sample_next``
    (greedy at ``temperature == 0``; *seed* makes sampling reproducible). The loop stops after a token
    in *stop_ids* (EOS is not special otherwise) or after *max_new_tokens*; no step runs after the
    last token, and nothing runs at all for ``max_new_tokens <= 0``.

    >>> nxt = lambda tok: torch.nn.functional.one_hot(torch.tensor((tok + 1) % 5), 5).float()
    >>> list(decode_loop(lambda: nxt(0), nxt, 6, stop_ids={4}))
    [1, 2, 3, 4]
    """
    if max_new_tokens <= 0:
        return
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    row = prefill()
    generated: list[int] = []
    while True:
        row = row.float().cpu()
        if logits_processor is not None:
            row = logits_processor(generated, row)
        tok = sample_next(row, temperature, top_p, gen)
        generated.append(tok)
        yield tok
        if tok in stop_ids or len(generated) >= max_new_tokens:
            return
        row = step(tok)


def folder_tokenizer(folder: Path):
    """The Hugging Face tokenizer saved in *folder* (an exported artifact), or None when it holds none."""
    from transformers import AutoTokenizer

    if not has_tokenizer(folder):
        return None
    quiet_transformers()
    return AutoTokenizer.from_pretrained(folder)


class ArtifactRuntime:
    """What the CPU runtimes over exported artifact folders (ONNX, ExecuTorch) share.

    A subclass sets ``name`` and ``artifact`` (its ``edgellm.artifacts`` format), calls
    ``_open_folder`` first in ``__init__(folder, threads)``, and is opened with ``open``.

    >>> rt = OnnxRuntime.open("out/m.onnx", threads=2, task="causal-lm")     # doctest: +SKIP
    >>> rt.info["format"], rt.weight_bytes() <= rt.file_bytes()            # doctest: +SKIP
    ('edgellm-onnx/1', True)
    """

    name: str
    artifact: ArtifactFormat

    def _open_folder(self, folder: Path) -> None:
        """Check the runtime's packages, the manifest and the sidecar; load the shipped tokenizer."""
        require(self.artifact)
        self.folder = folder
        self.info = read_artifact(folder, self.artifact)
        self.task = self.info["task"]
        self.vocab_size = int(self.info["vocab_size"])
        self._file_bytes = dir_bytes(folder)
        self.tokenizer = folder_tokenizer(folder)

    @classmethod
    def open(cls, spec, threads: int | None = None, device: str | None = None, task: str | None = None,
             **_ignored):
        """Open the artifact folder *spec* (or its main file) on the CPU; *task*, when given, must match."""
        if device not in (None, "cpu"):
            raise EdgeLLMError(f"the {cls.name} runtime runs on the CPU here, not '{device}'", "drop --device")
        rt = cls(resolve_artifact(spec, cls.artifact), threads=threads)
        if task is not None and task != rt.task:
            raise EdgeLLMError(f"'{spec}' is a {rt.task} export, not {task}", f"use --task {rt.task} or another model")
        return rt

    def weight_bytes(self) -> int:
        return int(self.info["weight_bytes"])

    def file_bytes(self) -> int:
        return self._file_bytes
