"""llama.cpp's own quantizer, driven from Python: the peer edgellm's GGUF writer is compared with.

``llama_quantize(src, dst, "q4_0", imatrix=...)`` calls ``llama_model_quantize`` (exposed by
llama-cpp-python) on an F32/F16 GGUF, with llama.cpp's default per-tensor type choices.
``importance_matrix(model, calib_ids)`` computes what llama.cpp's ``llama-imatrix`` tool
computes, the mean squared input activation per input column of every linear, through
edgellm's layer-by-layer calibration runner, keyed by GGUF tensor name, and hands it to the
quantizer as ``llama_model_imatrix_data``. Deliberately absent: llama.cpp's imatrix file
formats (the data goes straight from memory to the quantizer).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..calibrate import InputNormStats, find_blocks, run_blockwise
from ..errors import EdgeLLMError
from ..fileio import check_writable_target, temp_prefix
from ..runtimes.llamacpp import import_llama_cpp
from .gguf_names import gguf_arch

FTYPES = {"f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
          "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
          "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
          "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K", "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
          "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
          "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


class _ImatrixMethod:
    """A ``calibrate.run_blockwise`` method that only observes: Σx² and counts per linear input."""

    def __init__(self, prefix: str):
        self._stats_cls = InputNormStats
        self.prefix = prefix
        self.values: dict[str, torch.Tensor] = {}

    def new_stats(self, name, linear):
        return self._stats_cls(linear.in_features)

    def apply_block(self, index, block, stats, block_inputs):
        for name, (_, acc) in stats.items():
            self.values[f"{self.prefix}.{index}.{name}"] = (acc.sq / max(acc.n, 1)).float()
        return None


def importance_matrix(model, calib_ids: torch.Tensor, progress: bool = False) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 [in_features] mean of x² over the calibration tokens.

    >>> imat = importance_matrix(loaded.model, calibration_windows(tok, WIKI_VALID, 32, 512))  # doctest: +SKIP
    >>> imat["blk.0.attn_q.weight"].shape                                                    # doctest: +SKIP
    (576,)
    """
    import gguf

    arch = gguf_arch(model)
    path, _ = find_blocks(model)
    method = _ImatrixMethod(path)
    run_blockwise(model, calib_ids, method, progress=progress, desc="imatrix")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], model.config.num_hidden_layers)
    out = {}
    for hf_name, v in method.values.items():
        name = tmap.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if name is not None:
            out[name] = v.numpy().astype(np.float32)
    return out


def llama_quantize(src, dst, qtype: str, *, imatrix: dict[str, np.ndarray] | None = None, threads: int = 2,
                   force: bool = False) -> Path:
    """Quantize the GGUF *src* to *qtype* with llama.cpp's ``llama_model_quantize`` (atomic write).

    >>> llama_quantize("out/f32.gguf", "out/llama-q4_0.gguf", "q4_0")   # doctest: +SKIP
    """
    llama_cpp = import_llama_cpp()
    if qtype not in FTYPES:
        raise EdgeLLMError(f"unknown llama.cpp quantization type '{qtype}'", f"use one of: {', '.join(FTYPES)}")
    src, dst = Path(src), check_writable_target(dst, force, inputs=(src,))
    if not src.exists():
        raise EdgeLLMError(f"GGUF file '{src}' does not exist", "export an F32 or F16 GGUF first")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(llama_cpp, FTYPES[qtype])
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()   # NULL-terminated
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append((name.encode(), arr))
            entries[i].name = keep[-1][0]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        params.imatrix = entries
        keep.append(entries)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dst), suffix=".gguf", dir=dst.parent)
    os.close(fd)
    try:
        with _captured_stderr() as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise EdgeLLMError(f"llama.cpp could not quantize '{src}' to {qtype} (code {rc}): {tail}",
                               "check the input GGUF")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dst


@contextlib.contextmanager
def _captured_stderr():
    """Send the C library's per-tensor log (file descriptor 2) to a temporary file for the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.NamedTemporaryFile(prefix="edgellm-quantize-", suffix=".log") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield Path(f.name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tensor_types(path) -> dict[str, int]:
    """GGML type name -> number of tensors in a GGUF file (to compare files' compositions)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
