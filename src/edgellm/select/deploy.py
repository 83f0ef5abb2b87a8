"""Candidates on the deployment runtimes: export, score, size and time (the runtime-specific part of the search).

A llama.cpp candidate is its built folder exported to the recipe's exact GGUF block type and
scored through llama.cpp; an ONNX Runtime classifier is exported as fp32 or dynamic int8 and scored
through ONNX Runtime. Exact stats (bytes read per token, file size) and speed come from the
artifact on its own runtime. The functions take the running ``Search``.
"""

from __future__ import annotations

from pathlib import Path

from ..devices.costmodel import ModelStats
from ..devices.stats import stats_from_model
from ..optimize import Row
from .search import cls_quality, export_gguf_candidate, export_onnx_candidate, lm_quality


def llamacpp_quality(search, row: Row, recipe) -> dict:
    """Export the built candidate to its GGUF block type (verified on llama.cpp), then the full protocol there."""
    from ..runtimes import open_runtime

    base, e = search.bases[row.model], search.entry(row)
    g = e.setdefault("gguf", {})
    path = Path(search.cache.folder(*search.key(row))) / f"model-{row.kind}.gguf"
    if not g.get("path") or not path.exists():
        search.step(f"export {recipe.name} to GGUF")
        src = row.model if recipe.is_identity else row.artifact
        g.update(export_gguf_candidate(Path(src), recipe, path, search.cfg.threads, search.cfg.verify_tokens,
                                       search.cfg.eval_text))
        search.save(row)
    row.build = dict(row.build, gguf=g)
    row.artifact = str(path)
    key = "gguf_nlls" if search.lm else "gguf_flags"
    if len(e.get(key, [])) < len(base.data):
        search.step(f"full {recipe.name} (llama.cpp)")
        rt = open_runtime(str(path), runtime="llama.cpp", threads=search.cfg.threads)
        try:
            res = lm_quality(rt, base.data, base.reference, None, base.screen, done=e.get(key), full=True)
        finally:
            if hasattr(rt, "close"):
                rt.close()
        e[key] = res["nlls"]
        search.save(row)
    return lm_quality(None, base.data, base.reference, None, base.screen, done=e[key], full=True)


def onnx_quality(search, row: Row, recipe) -> dict:
    """A classifier on ONNX Runtime: export (fp32 of the built model, or dynamic int8 of the base), then accuracy."""
    from ..runtimes import open_runtime

    base, e = search.bases[row.model], search.entry(row)
    o = e.setdefault("onnx", {})
    path = Path(search.cache.folder(*search.key(row))) / f"model-{row.kind}.onnx"
    if not o.get("path") or not path.exists():
        search.step(f"export {recipe.name} to ONNX ({row.kind})")
        src = row.model if recipe.is_identity or row.kind == "int8" else row.artifact
        o.update(export_onnx_candidate(src, row.kind, path, search.cfg.threads))
        search.save(row)
    row.build = dict(row.build, onnx=o)
    row.artifact = str(path)
    if len(e.get("onnx_flags", [])) < len(base.data):
        search.step(f"full {recipe.name} (onnxruntime)")
        rt = open_runtime(str(path), runtime="onnxruntime", threads=search.cfg.threads)
        res = cls_quality(rt, base.data, base.reference, None, base.screen, done=e.get("onnx_flags"), full=True)
        e["onnx_flags"] = res["flags"]
        search.save(row)
    return cls_quality(None, base.data, base.reference, None, base.screen, done=e["onnx_flags"], full=True)


def exact_stats(search, row: Row) -> ModelStats:
    """The cost model's inputs read off the artifact itself on its runtime (bytes per token, file size)."""
    from ..models import load, model_bytes
    from ..runtimes import open_runtime

    recipe = search._recipe(row.recipe)
    task = {"task": "classification"} if not search.lm else {}
    loaded = search.bases[row.model].loaded if recipe.is_identity else load(search.entry(row)["build"]["path"], **task)
    if row.runtime == "torch":
        from ..runtimes.torch import TorchRuntime

        rt = TorchRuntime(loaded, device="cpu", threads=search.cfg.threads)
        return stats_from_model(loaded.model, row.kind, rt.weight_bytes(), model_bytes(loaded.model), rt.file_bytes())
    rt = open_runtime(row.artifact, runtime=row.runtime, threads=search.cfg.threads)
    try:
        wb, fb = rt.weight_bytes(), rt.file_bytes()
    finally:
        if hasattr(rt, "close"):
            rt.close()
    return stats_from_model(loaded.model, row.kind, wb, fb, fb, kv_elem_bytes=2 if row.runtime == "llama.cpp" else 4)


def row_speed(search, row: Row) -> dict:
    """The candidate's speed on its runtime: classifiers in-process on 32 rows, LMs by ``edgellm.bench``."""
    from .speed import bench_subprocess, classifier_speed, speed_in_process

    identity = search._recipe(row.recipe).is_identity
    if not search.lm:
        from ..models import load
        from ..runtimes import open_runtime
        from ..runtimes.torch import TorchRuntime

        if row.runtime == "onnxruntime":
            rt = open_runtime(row.artifact, runtime="onnxruntime", threads=search.cfg.threads)
        else:
            loaded = search.bases[row.model].loaded if identity else load(row.artifact, task="classification")
            rt = TorchRuntime(loaded, device="cpu", threads=search.cfg.threads)
        return classifier_speed(rt, search.bases[row.model].data[:32], search.cfg)
    if search.cfg.speed_in_process:
        return speed_in_process(search.bases[row.model].loaded if identity and row.runtime == "torch" else row.artifact,
                                row.runtime, search.cfg)
    return bench_subprocess(row.model if identity and row.runtime == "torch" else row.artifact, row.runtime, search.cfg)
