"""ONNX Runtime: edgellm's ONNX exports (``edgellm export --format onnx``) on the CPU execution provider.

Opens the artifact folder ``X.onnx/`` (or its ``model.onnx`` file) written by
``edgellm.exporters.onnx`` through ``edgellm.artifacts`` (manifest checked, ``edgellm.json`` read for
the IO names and cache shapes), loads the tokenizer shipped next to the graph. Causal LMs decode
token by token in ``base.decode_loop``, feeding each step's ``present.*`` tensors back as
``past.*``; classifiers get ``classify``.
Threads are pinned with ``intra_op_num_threads`` (one inter-op thread, sequential execution).
Deliberately absent: GPU providers and batched decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..artifacts import ONNX
from ..errors import EdgeLLMError
from .base import ArtifactRuntime, decode_loop


class OnnxRuntime(ArtifactRuntime):
    """Runtime over an ONNX export.

    >>> rt = OnnxRuntime.open("out/smollm2-int8.onnx", threads=2)      # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                       # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "onnxruntime"
    artifact = ONNX

    def __init__(self, folder: Path, threads: int | None = None):
        self._open_folder(folder)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(folder / ONNX.main), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise EdgeLLMError(f"onnxruntime cannot load '{folder / ONNX.main}': {str(e).splitlines()[0][:300]}",
                               "re-export the model") from e
        self.threads = threads or opts.intra_op_num_threads or None
        self.max_positions = self.info.get("max_positions")
        self._inputs = {i.name for i in self.session.get_inputs()}
        if self.task == "causal-lm":
            self._past = [n for n in self.info["inputs"] if n.startswith("past.")]
            self._empty = np.zeros((1, self.info["num_kv_heads"], 0, self.info["head_dim"]), np.float32)

    # -- causal LM -------------------------------------------------------------------------
    def _lm(self):
        if self.task != "causal-lm":
            raise EdgeLLMError(f"'{self.folder}' is a {self.task} export, not a causal LM", "use eval --tsv for classifiers")

    def _step(self, ids: np.ndarray, start: int, past: list[np.ndarray] | None):
        T = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, start + T), np.int64),
                 "position_ids": np.arange(start, start + T, dtype=np.int64)[None]}
        for i, name in enumerate(self._past):
            feeds[name] = self._empty if past is None else past[i]
        out = self.session.run(None, feeds)
        return out[0][0], out[1:]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        self._lm()
        logits, _ = self._step(ids.view(1, -1).numpy().astype(np.int64), 0, None)
        return torch.from_numpy(logits).float()

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None) -> Iterator[int]:
        """Yield up to *max_new_tokens* ids with the KV cache; stops early only on *stop_ids*."""
        self._lm()
        prompt = ids.view(1, -1).numpy().astype(np.int64)
        state = {"pos": 0, "past": None}

        def forward(x: np.ndarray) -> torch.Tensor:       # prefill from an empty past, else one step
            logits, state["past"] = self._step(x, state["pos"], state["past"])
            state["pos"] += x.shape[1]
            return torch.from_numpy(logits[-1])

        yield from decode_loop(lambda: forward(prompt), lambda tok: forward(np.array([[tok]], np.int64)),
                               max_new_tokens, temperature, top_p, seed, stop_ids, logits_processor)

    # -- classifiers -----------------------------------------------------------------------
    def classify(self, texts: list[str], max_length: int = 128) -> torch.Tensor:
        """[B] texts -> [B, num_labels] logits."""
        if self.task != "classification":
            raise EdgeLLMError(f"'{self.folder}' is a {self.task} export, not a sequence classifier",
                               "export a classifier (load it with --task classification)")
        if self.tokenizer is None:
            raise EdgeLLMError(f"'{self.folder}' has no tokenizer", "re-export the model")
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self._inputs}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0]).float()
