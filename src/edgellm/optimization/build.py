"""Building candidates: apply a recipe to a fresh copy of the base model and save it; export it for its runtime.

``build_candidate`` saves the compressed model with the storage its compression needs (packed
quantized, sparse or plain folder); ``export_gguf_candidate`` writes the recipe's exact GGUF block
type and verifies it on llama.cpp against the built weights; ``export_onnx_candidate`` writes a
classifier as fp32 or dynamic int8 ONNX, verified on ONNX Runtime. Results are plain JSON-able
dicts for the cache. Deliberately absent: parallel builds (the CPU is the bottleneck).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch

from ..exporters import export
from ..exporters.gguf import export_gguf_report
from ..exporters.verify import make_verifier
from ..models import load, save
from ..pruning.storage import save_sparse
from ..quantization import save_quantized
from ..recipe import apply_recipe
from .space import gguf_type_for


def build_candidate(base_spec: str, recipe, out: Path, task: str, threads: int, load_kwargs: dict | None = None,
                    distill_data=None) -> dict:
    """Apply *recipe* to a fresh load of *base_spec* and save it to *out* (replaced if present)."""
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    loaded = load(base_spec, **task_kwargs(task), **(load_kwargs or {}))
    results = apply_recipe(loaded, recipe, progress=False, distill_data=distill_data)
    seconds = time.perf_counter() - t0
    save_model(loaded, recipe, out)
    return {"seconds": seconds, "results": jsonable(results), "path": str(out)}


def save_model(loaded, recipe, out: Path) -> Path:
    """Save a compressed model with the storage its compression needs (packed, sparse or plain)."""
    if out.exists():
        shutil.rmtree(out)
    if "quantize" in recipe.steps:
        return save_quantized(loaded, out, force=True)
    prune = recipe.steps.get("prune")
    if prune is not None and getattr(prune, "structure", None) is None:
        return save_sparse(loaded, out, force=True)
    return save(loaded, out, force=True)


def export_onnx_candidate(src, variant: str, out: Path, threads: int) -> dict:
    """Export a classifier (a spec or built folder) to ONNX *variant*, verified on ONNX Runtime against it."""
    t0 = time.perf_counter()
    r = export(load(str(src), task="classification"), "onnx", out, variant=variant, force=True, threads=threads)
    return {"path": str(r.path), "variant": variant, "seconds": time.perf_counter() - t0,
            "verification": jsonable(r.verification)}


def export_gguf_candidate(folder: Path, recipe, out: Path, threads: int, ppl_tokens: int = 1024,
                          text: str | None = None) -> dict:
    """Export a built candidate folder to GGUF, verified on llama.cpp against the exact weights.

    A recipe's ``gguf`` section (``GGUFExportConfig``) gives every export option (a type written onto its own
    grid, or a budgeted mix); otherwise the type is the one that holds the recipe's codes exactly.
    """
    gtype = gguf_type_for(recipe)
    g = recipe.steps.get("gguf")
    options = {f.name: getattr(g, f.name) for f in dataclasses.fields(g)} if g is not None else {"gguf_type": gtype}
    tolerance = "f16" if gtype in ("f16", "f32") else "int8-act"
    verify = make_verifier("llama.cpp", tolerance, threads=threads, ppl_tokens=ppl_tokens, text=text)
    path, report = export_gguf_report(str(folder), out, force=True, verify=verify, **options)
    return {"path": str(path), "gguf_type": gtype, "report": report.to_dict()}


def task_kwargs(task: str) -> dict:
    """``load`` keywords for the search's task."""
    return {"task": "classification"} if task == "classification" else {}


def jsonable(obj):
    """*obj* as plain JSON types (dataclasses, results with ``to_dict``, tensors' ``item``), for the cache."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
