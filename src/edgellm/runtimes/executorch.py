"""ExecuTorch runtime: edgellm's ``.pte`` exports (XNNPACK delegate) through ``executorch.runtime``.

Opens the artifact folder ``X.pte/`` (or its ``model.pte``) written by ``edgellm.exporters.executorch``
through ``edgellm.artifacts`` (manifest checked, ``edgellm.json`` read), loads the tokenizer shipped
with it and the program's ``forward`` method. The program keeps a static KV cache of
``max_positions`` slots in its mutable buffers: ``logits`` and ``generate`` start at position 0
(overwriting any earlier sequence); ``generate`` runs the prompt in one call and then one token
per call, both fed to ``base.decode_loop``. Threads: XNNPACK's thread pool is resized to
*threads* (it is process-wide).
Deliberately absent: sequences longer than the exported cache, classifiers, batch > 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..artifacts import EXECUTORCH, read_artifact, require, resolve_artifact
from ..errors import EdgeLLMError
from ..fileio import dir_bytes
from .base import decode_loop, folder_tokenizer


class ExecuTorchRuntime:
    """Runtime over an ExecuTorch export.

    >>> rt = ExecuTorchRuntime.open("out/smollm2-int4.pte", threads=2)   # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                        # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "executorch"

    def __init__(self, folder: Path, threads: int | None = None):
        require(EXECUTORCH)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.folder = folder
        self.info = read_artifact(folder, EXECUTORCH)
        if threads:
            portable_lib._unsafe_reset_threadpool(int(threads))
        self.threads = portable_lib._threadpool_get_thread_count()
        try:
            program = Runtime.get().load_program(folder / EXECUTORCH.main)
            self._forward = program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the pybindings raise RuntimeError/ValueError
            raise EdgeLLMError(f"ExecuTorch cannot load '{folder / EXECUTORCH.main}': {str(e).splitlines()[0][:300]}",
                               "re-export the model") from e
        if self._forward is None:
            raise EdgeLLMError(f"'{folder / EXECUTORCH.main}' has no forward method", "re-export the model")
        self._program = program
        self.task = "causal-lm"
        self.vocab_size = int(self.info["vocab_size"])
        self.max_positions = int(self.info["max_positions"])
        self._file_bytes = dir_bytes(folder)
        self.tokenizer = folder_tokenizer(folder)

    @classmethod
    def open(cls, spec, threads: int | None = None, device: str | None = None, task: str | None = None,
             **_ignored) -> "ExecuTorchRuntime":
        if device not in (None, "cpu"):
            raise EdgeLLMError(f"the executorch runtime runs on the CPU (XNNPACK), not '{device}'", "drop --device")
        if task not in (None, "causal-lm"):
            raise EdgeLLMError(f"ExecuTorch exports are causal LMs, not {task}", "use --format onnx for classifiers")
        return cls(resolve_artifact(spec, EXECUTORCH), threads=threads)

    def _run(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        T = ids.numel()
        if start + T > self.max_positions:
            raise EdgeLLMError(f"{start + T} positions exceed the exported KV cache ({self.max_positions})",
                               f"use a shorter --ctx / prompt, or re-export with a larger max_len")
        out = self._forward.execute([ids.view(1, -1).long(), torch.arange(start, start + T, dtype=torch.long)])
        return out[0][0]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self._run(ids, 0).float().clone()

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None) -> Iterator[int]:
        """Yield up to *max_new_tokens* ids with the static KV cache; stops early only on *stop_ids*."""
        pos = [ids.numel()]                       # where the next token goes in the static cache

        def step(tok: int) -> torch.Tensor:
            pos[0] += 1
            return self._run(torch.tensor([tok]), pos[0] - 1)[-1]

        yield from decode_loop(lambda: self._run(ids, 0)[-1], step, max_new_tokens, temperature, top_p, seed,
                               stop_ids, logits_processor)

    def weight_bytes(self) -> int:
        return int(self.info["weight_bytes"])

    def file_bytes(self) -> int:
        return self._file_bytes
