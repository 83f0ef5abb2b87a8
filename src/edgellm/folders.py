"""edgellm's own model folder formats: which module reads each one and which writes it, and ``save``.

``load`` (``models.py``) reads a folder's ``config.json["edgellm"]["format"]`` and calls the reader
in ``FOLDER_FORMATS``; ``save`` picks the writer in ``FOLDER_WRITERS`` from what the model is
(packed quantized layers) or from ``format=``, else writes a plain HF folder. The
two tables name the same formats (a test checks it). Deliberately left out: artifact formats for
other runtimes (GGUF, ONNX, ExecuTorch are ``exporters``).
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

from .errors import EdgeLLMError
from .fileio import atomic_dir, write_manifest

# edgellm's own folder formats, keyed by config.json["edgellm"]["format"]: "module:function".
# Each loader takes (folder, config_dict, task, dtype) and returns (model, extra_meta).
FOLDER_FORMATS: dict[str, str] = {
    "quantized": "edgellm.quantization.storage:load_quantized_model",
    "sparse": "edgellm.pruning.storage:load_sparse_model",
}
# ... and the writer of each, called as fn(loaded, out, force=..., [edgellm_section=...]); ``save`` dispatches here
FOLDER_WRITERS: dict[str, str] = {
    "quantized": "edgellm.quantization.storage:save_quantized",
    "sparse": "edgellm.pruning.storage:save_sparse",
}


def folder_format(loaded) -> str | None:
    """The folder format *loaded* must be saved in: ``quantized`` when it holds packed layers (a plain
    folder cannot hold them), else ``None``. Sparsity is a choice, not a property: a model with zeros
    (even one loaded from a sparse folder) saves dense unless ``save(..., format="sparse")``."""
    packed = any(callable(getattr(m, "unpack", None)) or type(m).__name__ == "QuantizedEmbedding"
                 for m in loaded.model.modules())
    return "quantized" if packed else None


def save(loaded, out: str | os.PathLike, *, force: bool = False, edgellm_section: dict | None = None,
         format: str | None = None) -> Path:
    """Save *loaded* atomically in a folder format ``load`` reads back: packed ``quantized`` layers when the
    model holds them, a ``sparse`` folder with ``format="sparse"``, else a plain HF folder (safetensors +
    tokenizer + manifest) that loads with ``from_pretrained``.

    >>> save(edgellm.load("smollm2-135m"), "out/copy")                   # doctest: +SKIP
    PosixPath('out/copy')
    """
    fmt = format if format is not None else folder_format(loaded)
    if fmt is not None:
        if fmt not in FOLDER_WRITERS:
            raise EdgeLLMError(f"unknown folder format '{fmt}'", f"use one of: {', '.join(FOLDER_WRITERS)} (or none)")
        module, func = FOLDER_WRITERS[fmt].split(":")
        writer = getattr(importlib.import_module(module), func)
        kw = {"edgellm_section": edgellm_section} if "edgellm_section" in inspect.signature(writer).parameters else {}
        return Path(writer(loaded, out, force=force, **kw))
    with atomic_dir(out, force=force, inputs=(getattr(getattr(loaded, "meta", None), "source", None),)) as tmp:
        if edgellm_section:
            loaded.model.config.edgellm = edgellm_section
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
    return Path(out)
