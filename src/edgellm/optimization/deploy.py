"""Candidates on the deployment runtimes: export, score, size, time, and the chosen one's final export.

A llama.cpp candidate is its built folder exported to the recipe's exact GGUF block type (or, for
a recipe's ``gguf`` section, the base's weights written as that type or mix) and scored through
llama.cpp, screened there too when its weights exist only in the GGUF (``llamacpp_screen``); an ONNX Runtime classifier is exported as fp32 or dynamic int8 and scored
through ONNX Runtime. Exact stats (bytes read per token, file size) and speed come from the
artifact on its own runtime. ``export_chosen`` copies the picked artifact to ``DIR/model`` and
verifies it there. The functions take the running ``Search``.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from ..devices.costmodel import ModelStats
from ..devices.stats import stats_from_model
from ..errors import EdgeLLMError
from ..exporters.verify import verify_artifact
from ..fileio import write_manifest
from ..models import load, model_bytes, save
from ..runtimes import open_runtime
from ..runtimes.torch import TorchRuntime
from .build import export_gguf_candidate, export_onnx_candidate
from .quality import cls_quality, cls_summary, lm_quality, lm_summary, task_quality, task_summary
from .space import Row, base_weights
from .speed import bench_subprocess, classifier_speed, speed_in_process


def _exported(search, row: Row, key: str, suffix: str, what: str, make) -> Path:
    """The row's artifact for a deployment runtime: exported once into the cache (``make(path)``), reused after."""
    e = search.entry(row)
    info = e.setdefault(key, {})
    path = search.folder(row) / f"model-{row.kind}{suffix}"
    if not info.get("path") or not path.exists():
        search.step(what)
        info.update(make(path))
        search.save(row)
    row.build = dict(row.build, **{key: info})
    row.artifact = str(path)
    return path


def _scored(search, row: Row, path: Path, runtime: str, key: str, what: str) -> dict:
    """The full protocol on *runtime* (resumed from the cached per-window/row results under *key*)."""
    base, e = search.bases[row.model], search.entry(row)
    score, field = (lm_quality, "nlls") if search.lm else (cls_quality, "flags")
    if search.task is not None:          # exact-match answers, not perplexity
        score, field = partial(task_quality, max_new_tokens=search.cfg.task_new_tokens), "flags"
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
    if search.task is not None:
        return task_summary(e[key], base.reference)
    if search.lm:
        return lm_summary(e[key], base.reference, base.data[0].numel() - 1)
    return cls_summary(e[key], base.reference)


def _gguf(search, row: Row, recipe) -> Path:
    """The row's GGUF, exported once (verified on llama.cpp) from the base or the built folder."""
    src = Path(row.model if base_weights(recipe) else row.artifact)
    return _exported(search, row, "gguf", ".gguf", f"export {recipe.name} to GGUF",
                     lambda out: export_gguf_candidate(src, recipe, out, search.cfg.threads, search.cfg.verify_tokens,
                                                       search.cfg.eval_text))


def llamacpp_quality(search, row: Row, recipe) -> dict:
    """Export the built candidate to its GGUF block type (verified on llama.cpp), then the full protocol there."""
    path = _gguf(search, row, recipe)
    key = "gguf_nlls" if search.lm and search.task is None else "gguf_flags"
    return _scored(search, row, path, "llama.cpp", key, f"full {recipe.name} (llama.cpp)")


def llamacpp_screen(search, row: Row, recipe) -> dict:
    """The screen of a candidate whose weights exist only in its GGUF (a ``gguf`` recipe section): export it,
    then score the screen's windows on llama.cpp with early rejection; the full protocol resumes from them."""
    path = _gguf(search, row, recipe)
    base, e = search.bases[row.model], search.entry(row)
    key = "gguf_nlls" if search.task is None else "gguf_flags"
    if len(e.get(key, [])) < base.screen and not e.get("rejected_at"):
        search.step(f"screen {recipe.name} (llama.cpp)")
        rt = open_runtime(str(path), runtime="llama.cpp", threads=search.cfg.threads)
        score, field = lm_quality, "nlls"
        if search.task is not None:
            score, field = partial(task_quality, max_new_tokens=search.cfg.task_new_tokens), "flags"
        try:
            res = score(rt, base.data, base.reference, search.constraints.max_quality_loss, base.screen,
                        search.cfg.reject_factor, done=e.get(key), full=False)
        finally:
            if hasattr(rt, "close"):
                rt.close()
        e[key] = res[field]
        if res["early_rejected"]:
            e["rejected_at"] = len(res["nlls"])
        search.save(row)
    if search.task is not None:
        return task_summary(e[key][: base.screen], base.reference, rejected=bool(e.get("rejected_at")))
    return lm_summary(e[key][: base.screen], base.reference, base.data[0].numel() - 1,
                      rejected=bool(e.get("rejected_at")))


def onnx_quality(search, row: Row, recipe) -> dict:
    """A classifier on ONNX Runtime: export (fp32 of the built model, or dynamic int8 of the base), then accuracy."""
    src = row.model if recipe.is_identity or row.kind == "int8" else row.artifact
    path = _exported(search, row, "onnx", ".onnx", f"export {recipe.name} to ONNX ({row.kind})",
                     lambda out: export_onnx_candidate(src, row.kind, out, search.cfg.threads))
    return _scored(search, row, path, "onnxruntime", "onnx_flags", f"full {recipe.name} (onnxruntime)")


def exact_stats(search, row: Row) -> ModelStats:
    """The cost model's inputs read off the artifact itself on its runtime (bytes per token, file size)."""
    recipe = search.recipe(row.recipe)
    task = {"task": "classification"} if not search.lm else {}
    loaded = search.bases[row.model].loaded if base_weights(recipe) else load(search.entry(row)["build"]["path"], **task)
    if row.runtime == "torch":
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
    identity = search.recipe(row.recipe).is_identity
    if not search.lm:
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


def export_chosen(search, row, dest: Path) -> dict:
    """Copy the chosen artifact into *dest* and verify it there against the model holding its weights."""
    recipe = search.recipe(row.recipe)
    base = search.bases[row.model]
    task = {"task": "classification"} if not search.lm else {}
    # the export module's standard check: 4,096 tokens (fewer when the search's own protocol reads fewer)
    vkw = {"ppl_tokens": min(4096, search.cfg.full_tokens), "text": search.cfg.eval_text, "ctx": search.cfg.ctx}
    source = base.loaded if base_weights(recipe) else load(search.entry(row)["build"]["path"], **task)
    threads = search.cfg.threads
    if row.runtime == "llama.cpp":
        dest.mkdir(parents=True)
        target = dest / Path(row.artifact).name
        shutil.copy2(row.artifact, target)
        write_manifest(dest)
        tol = "f16" if row.kind in ("f16", "f32") else "int8-act"
        if "gguf" in recipe.steps:      # rounded at export: only the exporter's own reference holds these weights
            check = _same_file(target, Path(row.artifact), (row.build.get("gguf") or {}).get("report", {}))
        else:
            check = verify_artifact(str(target), source, "llama.cpp", tol, threads=threads, **vkw)
    elif row.runtime == "onnxruntime":
        from ..exporters.onnx import verify_classifier

        shutil.copytree(row.artifact, dest)
        target = dest
        # dynamic int8 is made from the base's fp32 graph, so that is what it is checked against
        ref = base.loaded if row.kind == "int8" else source
        check = verify_classifier(dest, ref, row.kind, threads=threads)
    else:
        if recipe.is_identity:
            save(base.loaded, dest)
        else:
            shutil.copytree(row.artifact, dest)
        target = dest
        if search.lm:
            check = verify_artifact(str(dest), source, "torch", "f32", threads=threads, **vkw)
        else:
            check = _verify_classifier(dest, source, base.data[:64], threads)
    return {"path": str(target), "runtime": row.runtime, "verification": check}


def _same_file(copy: Path, original: Path, report: dict) -> dict:
    """A GGUF rounded at export was verified inside the search against the exact weights it holds; its copy
    passes when it is byte-identical to that file."""
    from ..fileio import sha256_file

    same = sha256_file(copy) == sha256_file(original)
    if not same:
        raise EdgeLLMError(f"the copy '{copy}' differs from the verified GGUF '{original}'", "re-run with --force")
    return {"passed": True, "how": "byte-identical copy of the GGUF verified on llama.cpp inside the search",
            "search_verification": report.get("verification")}


def _verify_classifier(folder: Path, source, rows, threads: int) -> dict:
    """Logits of the copied classifier folder against its source on *rows* (same labels, |Δlogit| ≤ 1e-4)."""
    texts = [r.text for r in rows]
    a = TorchRuntime(load(str(folder), task="classification"), device="cpu", threads=threads).classify(texts)
    b = TorchRuntime(source, device="cpu", threads=threads).classify(texts)
    diff = float((a - b).abs().max())
    same = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    if diff > 1e-4 or same < 1.0:
        raise EdgeLLMError(f"the exported classifier differs from its source (max |Δlogit| {diff:.3g}, "
                           f"{100 * same:.1f}% same labels)", "re-run; report the model if it persists")
    return {"rows": len(texts), "max_abs_diff": diff, "same_label": same, "passed": True}
