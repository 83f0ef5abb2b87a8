"""ExecuTorch runtime: edgellm's ``.pte`` exports (XNNPACK delegate) through ``executorch.runtime``.

Opens the artifact folder ``X.pte/`` (or its ``model.pte``) written by
``edgellm.exporters.executorch``: checks the manifest, reads ``edgellm.json``, loads the tokenizer
shipped with it and the program's ``forward`` method. The program keeps a static KV cache of
``max_positions`` slots in its mutable buffers: ``logits`` and ``generate`` start at position 0
(overwriting any earlier sequence), prefill runs the prompt in one call, decode one token per
call. Threads: XNNPACK's thread pool is resized to *threads* (it is process-wide).
Deliberately absent: sequences longer than the exported cache, classifiers, batch > 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..errors import EdgeLLMError
from .base import sample_next


class ExecuTorchRuntime:
    """Runtime over an ExecuTorch export.

    >>> rt = ExecuTorchRuntime.open("out/smollm2-int4.pte", threads=2)   # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                        # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "executorch"

    def __init__(self, folder: Path, threads: int | None = None):
        from ..exporters.executorch import PROGRAM, require_executorch
        from ..exporters.onnx import read_sidecar
        from ..fileio import dir_bytes, verify_manifest

        require_executorch()
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.folder = folder
        verify_manifest(folder)
        self.info = read_sidecar(folder)
        if self.info.get("format") != "edgellm-executorch/1":
            raise EdgeLLMError(f"'{folder}' is not an edgellm ExecuTorch export", "re-export with --format executorch")
        if threads:
            portable_lib._unsafe_reset_threadpool(int(threads))
        self.threads = portable_lib._threadpool_get_thread_count()
        try:
            program = Runtime.get().load_program(folder / PROGRAM)
            self._forward = program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the pybindings raise RuntimeError/ValueError
            raise EdgeLLMError(f"ExecuTorch cannot load '{folder / PROGRAM}': {str(e).splitlines()[0][:300]}",
                               "re-export the model") from e
        if self._forward is None:
            raise EdgeLLMError(f"'{folder / PROGRAM}' has no forward method", "re-export the model")
        self._program = program
        self.task = "causal-lm"
        self.vocab_size = int(self.info["vocab_size"])
        self.max_positions = int(self.info["max_positions"])
        self._file_bytes = dir_bytes(folder)
        self.tokenizer = self._tokenizer()

    @classmethod
    def open(cls, spec, threads: int | None = None, device: str | None = None, task: str | None = None,
             **_ignored) -> "ExecuTorchRuntime":
        from ..exporters.executorch import PROGRAM
        from .onnxrt import resolve_artifact

        if device not in (None, "cpu"):
            raise EdgeLLMError(f"the executorch runtime runs on the CPU (XNNPACK), not '{device}'", "drop --device")
        if task not in (None, "causal-lm"):
            raise EdgeLLMError(f"ExecuTorch exports are causal LMs, not {task}", "use --format onnx for classifiers")
        return cls(resolve_artifact(spec, PROGRAM), threads=threads)

    def _tokenizer(self):
        from transformers import AutoTokenizer

        from ..models import _has_tokenizer, _quiet_transformers

        if not _has_tokenizer(self.folder):
            return None
        _quiet_transformers()
        return AutoTokenizer.from_pretrained(self.folder)

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
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        logits = self._run(ids, 0)
        pos, generated = ids.numel(), []
        for _ in range(max_new_tokens):
            row = logits[-1].float()
            if logits_processor is not None:
                row = logits_processor(generated, row)
            tok = sample_next(row, temperature, top_p, gen)
            generated.append(tok)
            yield tok
            if tok in stop_ids or len(generated) == max_new_tokens:
                return
            logits = self._run(torch.tensor([tok]), pos)
            pos += 1

    def weight_bytes(self) -> int:
        return int(self.info["weight_bytes"])

    def file_bytes(self) -> int:
        return self._file_bytes
