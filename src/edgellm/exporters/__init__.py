"""``export(model, format, out)``: write a model as an artifact for an on-device runtime, then verify it.

Formats (explicit dispatch below): ``gguf`` → llama.cpp, ``onnx`` → ONNX Runtime, ``executorch``
→ ExecuTorch, ``litert`` → the LiteRT (TFLite) interpreter. Each exporter writes into a temporary path next to *out* and calls the verifier
(``exporters.verify``) on it with the runtime that will run it; only a verified artifact is renamed into place. Deliberately absent: conversion between
artifact formats (always export from the model).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeLLMError
from ..results import Result

# format -> (exporter "module:function", runtime that runs the artifact, "module:function" naming the
# default tolerance from the exporter's options). An exporter is called as
# ``fn(loaded, out, force=..., verify=verifier_or_None, **options)`` and returns a Path or (Path, report).
EXPORTERS = {
    "gguf": ("edgellm.exporters.gguf:export_gguf_report", "llama.cpp", "edgellm.exporters.gguf:verify_tolerance"),
    "onnx": ("edgellm.exporters.onnx:export_onnx_report", "onnxruntime", "edgellm.exporters.onnx:verify_tolerance"),
    "executorch": ("edgellm.exporters.executorch:export_executorch_report", "executorch",
                   "edgellm.exporters.executorch:verify_tolerance"),
    "litert": ("edgellm.exporters.litert:export_litert_report", "litert", "edgellm.exporters.litert:verify_tolerance"),
}
# format -> "module:ConfigClass" of its options
CONFIGS = {"gguf": "edgellm.exporters.gguf:GGUFExportConfig", "onnx": "edgellm.exporters.onnx:OnnxExportConfig",
           "executorch": "edgellm.exporters.executorch:ExecuTorchExportConfig",
           "litert": "edgellm.exporters.litert:LiteRTExportConfig"}
RUNTIME_EXTRAS = {"llama.cpp": ("llama_cpp", "llamacpp"), "onnxruntime": ("onnxruntime", "onnx"),
                  "executorch": ("executorch", "executorch"), "litert": ("ai_edge_litert", "litert")}


@dataclass
class ExportResult(Result):
    path: Path
    format: str
    runtime: str
    file_bytes: int
    seconds: float
    verification: dict | None = None
    details: dict = field(default_factory=dict)


def _resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def require_runtime(runtime: str) -> None:
    """Raise an EdgeLLMError naming the extra when the runtime's package is not installed."""
    module, extra = RUNTIME_EXTRAS.get(runtime, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise EdgeLLMError(f"verifying this export needs the '{runtime}' runtime, which is not installed",
                           f"pip install 'edgellm[{extra}]' (or pass --no-verify to skip verification)")


def export_config(format: str, **options):
    """The export config for *format* built from keyword *options* (unknown ones raise ``EdgeLLMError``).

    >>> export_config("gguf", gguf_type="q8_0").gguf_type
    'q8_0'
    """
    if format not in EXPORTERS:
        raise EdgeLLMError(f"unknown export format '{format}'", f"use one of: {', '.join(EXPORTERS)}")
    cls = _resolve(CONFIGS[format])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise EdgeLLMError(f"unknown {format} export option(s) {', '.join(unknown)}", f"valid: {', '.join(sorted(names))}")
    return cls(**options)


def format_of(config) -> str:
    """The format name (``gguf``, ``onnx``, ``executorch``) whose config class *config* is."""
    for fmt, ref in CONFIGS.items():
        if type(config) is _resolve(ref):
            return fmt
    raise EdgeLLMError(f"export needs an export config, not {type(config).__name__}",
                       "pass GGUFExportConfig(...), OnnxExportConfig(...) or ExecuTorchExportConfig(...)")


def export(model, config, out, *, force: bool = False, verify: bool = True, tolerance=None,
           threads: int | None = None, ppl_tokens: int = 4096, **options) -> ExportResult:
    """Export *model* (a spec or ``Loaded``) as *config* says at *out*; verified on its runtime unless ``verify=False``.

    *config* is a ``GGUFExportConfig``, ``OnnxExportConfig`` or ``ExecuTorchExportConfig`` (or a format
    name, with the config's fields as keyword *options*).

    >>> from edgellm.exporters.gguf import GGUFExportConfig
    >>> r = export("smollm2-135m", GGUFExportConfig(gguf_type="q8_0"), "out/smollm2-q8_0.gguf")   # doctest: +SKIP
    >>> r.verification["ppl"]["relative_diff"] < 0.02                                              # doctest: +SKIP
    True
    """
    from ..fileio import check_output
    from ..models import Loaded, load
    from .verify import make_verifier

    if isinstance(config, str):
        config = export_config(config, **options)
    elif options:
        config = dataclasses.replace(config, **options)
    format = format_of(config)
    options = dataclasses.asdict(config)
    fn_ref, runtime, tol_ref = EXPORTERS[format]
    t0 = time.perf_counter()
    verifier = None
    if verify:
        require_runtime(runtime)
        tol = tolerance if tolerance is not None else _resolve(tol_ref)(**options)
        verifier = make_verifier(runtime, tol, threads=threads, ppl_tokens=ppl_tokens)
    loaded = model if isinstance(model, Loaded) else load(model)
    check_output(out, force, inputs=(loaded.meta.source,))     # before the (slow) export, not after
    out_obj = _resolve(fn_ref)(loaded, out, force=force, verify=verifier, **options)
    path, report = out_obj if isinstance(out_obj, tuple) else (out_obj, None)
    details = report.to_dict() if hasattr(report, "to_dict") else (report or {})
    verification = details.pop("verification", None) if isinstance(details, dict) else None
    from ..fileio import dir_bytes

    return ExportResult(path=Path(path), format=format, runtime=runtime, file_bytes=dir_bytes(path),
                        seconds=time.perf_counter() - t0, verification=verification, details=details)


__all__ = ["CONFIGS", "EXPORTERS", "ExportResult", "export", "export_config", "format_of"]
