"""The Runtime interface every backend implements (DESIGN.md §1), plus shared sampling.

A runtime is measured, never trusted: ``logits`` feeds perplexity/KL, ``generate`` feeds
latency, ``weight_bytes`` feeds bandwidth utilisation, ``file_bytes`` the size column.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch


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
