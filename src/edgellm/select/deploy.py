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


def _exported(search, row: Row, key: str, suffix: str, what: str, make) -> Path:
    """The row's artifact for a deployment runtime: exported once into the cache (``make(path)``), reused after."""
    e = search.entry(row)
    info = e.setdefault(key, {})
    path = Path(search.cache.folder(*search.key(row))) / f"model-{row.kind}{suffix}"
    if not info.get("path") or not path.exists():
        search.step(what)
        info.update(make(path))
        search.save(row)
    row.build = dict(row.build, **{key: info})
    row.artifact = str(path)
    return path


def _scored(search, row: Row, path: Path, runtime: str, key: str, what: str) -> dict:
    """The full protocol on *runtime* (resumed from the cached per-window/row results under *key*)."""
    from ..runtimes import open_runtime

    base, e = search.bases[row.model], search.entry(row)
    score, field = (lm_quality, "nlls") if search.lm else (cls_quality, "flags")
    if len(e.get(key, [])) < len(base.data):
        search.step(what)
        rt = open_runtime(str(path), runtime=runtime, threads=search.cfg.threads)
        try:
            res = score(rt, base.data, base.reference, None, base.screen, done=e.get(key), full=True)
        finally:
            if hasattr(rt, "close"):
                rt.close()
        e[key] = res[field]
        search.save(row)
    return score(None, base.data, base.reference, None, base.screen, done=e[key], full=True)


def llamacpp_quality(search, row: Row, recipe) -> dict:
    """Export the built candidate to its GGUF block type (verified on llama.cpp), then the full protocol there."""
    src = Path(row.model if recipe.is_identity else row.artifact)
    path = _exported(search, row, "gguf", ".gguf", f"export {recipe.name} to GGUF",
                     lambda out: export_gguf_candidate(src, recipe, out, search.cfg.threads, search.cfg.verify_tokens,
                                                       search.cfg.eval_text))
    key = "gguf_nlls" if search.lm else "gguf_flags"
    return _scored(search, row, path, "llama.cpp", key, f"full {recipe.name} (llama.cpp)")


def onnx_quality(search, row: Row, recipe) -> dict:
    """A classifier on ONNX Runtime: export (fp32 of the built model, or dynamic int8 of the base), then accuracy."""
    src = row.model if recipe.is_identity or row.kind == "int8" else row.artifact
    path = _exported(search, row, "onnx", ".onnx", f"export {recipe.name} to ONNX ({row.kind})",
                     lambda out: export_onnx_candidate(src, row.kind, out, search.cfg.threads))
    return _scored(search, row, path, "onnxruntime", "onnx_flags", f"full {recipe.name} (onnxruntime)")


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
    """The candidate's speed on its runtime: classifiers in-process on 32 rows, LMs by ``edgellm.measure``."""
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
