"""Runtimes: every measurement goes through one interface (docs/design.md §1).

``open_runtime(spec)`` picks the runtime from the artifact (explicit ``runtime=`` wins):
``.gguf`` → llama.cpp when installed, ``.onnx`` → ONNX Runtime, ``.pte`` → ExecuTorch, ``.tflite`` → LiteRT,
anything else (folders, built-in names, ``Loaded`` records) → PyTorch.
``constrain.py`` turns a JSON schema into a ``logits_processor`` every runtime's ``generate`` takes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import EdgeLLMError
from .base import Runtime

# name -> "module:class"; each class has ``open(spec, **kw) -> Runtime``
RUNTIMES = {
    "torch": "edgellm.runtimes.torch:TorchRuntime",
    "llama.cpp": "edgellm.runtimes.llamacpp:LlamaCppRuntime",
    "onnxruntime": "edgellm.runtimes.onnxrt:OnnxRuntime",
    "executorch": "edgellm.runtimes.executorch:ExecuTorchRuntime",
    "litert": "edgellm.runtimes.litert:LiteRTRuntime",
}
SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".pte": "executorch", ".tflite": "litert"}


def runtime_class(name: str):
    if name not in RUNTIMES:
        raise EdgeLLMError(f"unknown runtime '{name}'", "use one of: " + ", ".join(RUNTIMES))
    module, cls = RUNTIMES[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("edgellm"):
            raise EdgeLLMError(f"runtime '{name}' is not available in this version of edgellm", "use --runtime torch") from e
        raise


def pick_runtime(spec, runtime: str = "auto") -> str:
    """Name of the runtime for *spec* (a path, a built-in name or a Loaded record)."""
    if runtime != "auto":
        return runtime
    if isinstance(spec, (str, Path)):
        suffix = Path(str(spec)).suffix
        if suffix in SUFFIX_RUNTIME:
            return SUFFIX_RUNTIME[suffix]
        if suffix == ".gguf" and _importable("edgellm.runtimes.llamacpp") and _importable("llama_cpp"):
            return "llama.cpp"
    return "torch"


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def open_runtime(spec, runtime: str = "auto", **kwargs) -> Runtime:
    """Open *spec* on a runtime.

    >>> rt = open_runtime("smollm2-135m", threads=2)      # doctest: +SKIP
    >>> rt.name
    'torch'
    """
    return runtime_class(pick_runtime(spec, runtime)).open(spec, **kwargs)


__all__ = ["Runtime", "RUNTIMES", "open_runtime", "pick_runtime", "runtime_class"]
