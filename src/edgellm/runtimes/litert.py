"""LiteRT runtime: edgellm's ``.tflite`` exports on the ``ai-edge-litert`` interpreter (XNNPACK on the CPU).

Opens the artifact folder ``X.tflite/`` (or its ``model.tflite``) written by ``edgellm.exporters.litert``
through ``edgellm.artifacts`` (manifest checked, ``edgellm.json`` read) and loads the tokenizer
shipped with it. Causal LMs: the KV cache is held here, as numpy arrays ``[1, kv_heads, max_len,
head_dim]`` per layer fed to every call; a call returns only the new rows, written back at their
positions. A prompt runs through the shortest ``prefill_<L>`` signature that holds it (padded; the
padding's rows are masked and later overwritten), each generated token through ``decode``; both
feed ``base.decode_loop``. ``logits`` and ``generate`` start at position 0. Classifiers: the
sentences are padded to the exported ``seq_len`` and run in chunks through the ``classify_b<B>``
signatures. Threads: the interpreter's ``num_threads``.
Deliberately absent: sequences longer than the exported cache, GPU/NPU delegates, batched decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..artifacts import LITERT
from ..errors import EdgeLLMError
from .base import ArtifactRuntime, decode_loop


class LiteRTRuntime(ArtifactRuntime):
    """Runtime over a LiteRT export.

    >>> rt = LiteRTRuntime.open("out/smollm2-int8.tflite", threads=2)   # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                       # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "litert"
    artifact = LITERT

    def __init__(self, folder: Path, threads: int | None = None):
        self._open_folder(folder)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(folder / LITERT.main), num_threads=threads or None)
            self._runners = {name: self.interpreter.get_signature_runner(name) for name in self.info["signatures"]}
        except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
            raise EdgeLLMError(f"LiteRT cannot load '{folder / LITERT.main}': {str(e).splitlines()[0][:300]}",
                               "re-export the model") from e
        self.threads = threads
        self.max_positions = int(self.info["max_positions"])
        self._dtypes = {name: {k: v["dtype"] for k, v in r.get_input_details().items()} for name, r in self._runners.items()}
        if self.task == "causal-lm":
            shape = (1, int(self.info["num_kv_heads"]), self.max_positions, int(self.info["head_dim"]))
            self._cache = [np.zeros(shape, np.float32) for _ in range(2 * int(self.info["num_layers"]))]
            self._prefill = sorted(int(L) for L in self.info["prefill_lengths"])
        else:
            self.seq_len = int(self.info["seq_len"])
            self._batches = sorted(int(b) for b in self.info["batch_sizes"])

    def _call(self, name: str, arrays: list[np.ndarray]) -> dict:
        dt = self._dtypes[name]
        return self._runners[name](**{f"args_{i}": a.astype(dt[f"args_{i}"], copy=False) for i, a in enumerate(arrays)})

    # -- causal LM -------------------------------------------------------------------------
    def _run(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits [T, vocab] of *ids* placed at positions start … start+T-1; the cache gets their rows."""
        if self.task != "causal-lm":
            raise EdgeLLMError(f"'{self.folder}' is a {self.task} export, not a causal LM", "use eval --tsv for classifiers")
        T = ids.numel()
        if start + T > self.max_positions:
            raise EdgeLLMError(f"{start + T} positions exceed the exported KV cache ({self.max_positions})",
                               "use a shorter --ctx / prompt, or re-export with a larger --max-len")
        if T == 1 and start > 0:
            name, L = "decode", 1
        else:
            L = next((p for p in self._prefill if p >= T and start + p <= self.max_positions), None)
            if L is None:
                raise EdgeLLMError(f"no prefill signature holds {T} tokens at position {start}",
                                   "re-export with a larger --max-len")
            name = f"prefill_{L}"
        tokens = np.zeros((1, L), np.int64)
        tokens[0, :T] = ids.view(-1).numpy()
        out = self._call(name, [tokens, np.arange(start, start + L, dtype=np.int64), *self._cache])
        for i, cache in enumerate(self._cache):
            cache[:, :, start:start + T] = out[f"output_{i + 1}"][:, :, :T]
        return torch.from_numpy(np.array(out["output_0"][0, :T], np.float32))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self._run(ids, 0)

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None) -> Iterator[int]:
        """Yield up to *max_new_tokens* ids with the KV cache; stops early only on *stop_ids*."""
        pos = [ids.numel()]

        def step(tok: int) -> torch.Tensor:
            pos[0] += 1
            return self._run(torch.tensor([tok]), pos[0] - 1)[-1]

        yield from decode_loop(lambda: self._run(ids, 0)[-1], step, max_new_tokens, temperature, top_p, seed,
                               stop_ids, logits_processor)

    # -- classifiers -----------------------------------------------------------------------
    def classify(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """[B] texts -> [B, num_labels] logits (padded/truncated to the exported ``seq_len``)."""
        if self.task != "classification":
            raise EdgeLLMError(f"'{self.folder}' is a {self.task} export, not a sequence classifier",
                               "export a classifier (load it with --task classification)")
        if self.tokenizer is None:
            raise EdgeLLMError(f"'{self.folder}' has no tokenizer", "re-export the model")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.seq_len,
                             return_tensors="np")
        arrays = [enc[n].astype(np.int64) for n in self.info["inputs"]]
        out, i, n = [], 0, len(texts)
        while i < n:
            B = next((b for b in self._batches if b >= n - i), self._batches[-1])
            rows = min(B, n - i)
            chunk = [np.concatenate([a[i:i + rows]] + [a[i:i + 1]] * (B - rows)) for a in arrays]   # pad with row i
            out.append(self._call(f"classify_b{B}", chunk)["output_0"][:rows])
            i += rows
        return torch.from_numpy(np.concatenate(out).astype(np.float32))


__all__ = ["LiteRTRuntime"]
