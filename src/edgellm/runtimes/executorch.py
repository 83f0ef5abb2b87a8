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

from ..artifacts import EXECUTORCH
from ..errors import EdgeLLMError
from .base import ArtifactRuntime, decode_loop


class ExecuTorchRuntime(ArtifactRuntime):
    """Runtime over an ExecuTorch export.

    >>> rt = ExecuTorchRuntime.open("out/smollm2-int4.pte", threads=2)   # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                        # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "executorch"
    artifact = EXECUTORCH

    def __init__(self, folder: Path, threads: int | None = None):
        self._open_folder(folder)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

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
        self.max_positions = int(self.info["max_positions"])

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
