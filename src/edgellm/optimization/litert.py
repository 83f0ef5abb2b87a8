"""LiteRT candidates in the search: export to ``.tflite`` (verified on the interpreter), score there, copy the pick out.

A LiteRT row's artifact is the LiteRT export (``exporters.litert``) of the recipe's model in the form
``space.litert_variant_for`` names: ``fp32`` of the built folder (the base for the identity recipe,
the pruned model for a pruning recipe), or LiteRT's own dynamic-range ``int8`` / ``int4-g<G>`` of
the base for a quantize-only recipe. The export is verified inside the search exactly as
``edgellm export --format litert`` verifies it (the same reference, ``litert_verify.reference_for``,
and tolerance, ``exporters.litert.verify_tolerance``), on the search's eval text and
``verify_tokens``; its static cache holds the search's ``ctx`` windows and the speed protocol's
prompt + new tokens, and its short prefill signature is ``prompt_len`` long. Quality is the full
protocol on the interpreter (``deploy._scored``); bytes and speed come from the artifact on its
runtime like every other row. ``export_chosen_litert`` copies the picked folder out and verifies the
copy again with the export's standard check. Deliberately absent: classifiers (searched on ONNX
Runtime) and ExecuTorch rows.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..exporters.litert import LiteRTExportConfig, export_litert_report, verify_tolerance
from ..exporters.litert_verify import reference_for
from ..exporters.verify import make_verifier, verify_artifact
from ..models import load
from .build import jsonable
from .deploy import _exported, _scored
from .space import Row, base_weights


def litert_config(kind: str, cfg) -> LiteRTExportConfig:
    """The LiteRT export config of row kind *kind* (``fp32``, ``int8``, ``int4-g32``) under the search's protocol.

    >>> litert_config("int4-g64", OptimizeConfig(ctx=512, prompt_len=128, new_tokens=128)).group_size
    64
    """
    variant, _, group = kind.partition("-g")
    max_len = max(cfg.ctx, cfg.prompt_len + cfg.new_tokens)
    return LiteRTExportConfig(variant=variant, group_size=int(group or 32), max_len=max_len,
                              prefill_len=min(cfg.prompt_len, max_len))


def export_litert_candidate(src, kind: str, out: Path, cfg) -> dict:
    """Export *src* (the base spec or a built folder) as LiteRT row kind *kind*, verified on the interpreter.

    >>> export_litert_candidate("smollm2-135m", "int8", Path("cache/x/model-int8.tflite"), cfg)["variant"]  # doctest: +SKIP
    'int8'
    """
    t0 = time.perf_counter()
    config = litert_config(kind, cfg)
    verify = make_verifier("litert", verify_tolerance(config.variant), threads=cfg.threads,
                           ppl_tokens=cfg.verify_tokens, text=cfg.eval_text)
    path, report = export_litert_report(load(str(src)), out, force=True, verify=verify, threads=cfg.threads,
                                        **asdict(config))
    return {"path": str(path), "variant": config.variant, "config": asdict(config),
            "seconds": time.perf_counter() - t0, "report": jsonable(report)}


def _source(search, row: Row, recipe) -> str:
    """The model a LiteRT row is converted from: the base for its quantized variants and base-weight recipes,
    else the recipe's built folder."""
    if base_weights(recipe) or row.kind != "fp32":
        return row.model
    return search.entry(row)["build"]["path"]


def litert_quality(search, row: Row, recipe) -> dict:
    """Export the row to LiteRT (once, into the cache; verified there), then the full protocol on the interpreter."""
    src = _source(search, row, recipe)
    path = _exported(search, row, "litert", ".tflite", f"export {recipe.name} to LiteRT ({row.kind})",
                     lambda out: export_litert_candidate(src, row.kind, out, search.cfg))
    key = "litert_nlls" if search.task is None else "litert_flags"
    return _scored(search, row, path, "litert", key, f"full {recipe.name} (litert)")


def export_chosen_litert(search, row: Row, dest: Path) -> dict:
    """Copy the chosen LiteRT folder to *dest* and verify the copy against the model holding the file's weights,
    with ``deploy.export_chosen``'s check: up to 4,096 tokens of the search's text, in its ``ctx`` windows."""
    recipe = search.recipe(row.recipe)
    vkw = {"ppl_tokens": min(4096, search.cfg.full_tokens), "text": search.cfg.eval_text, "ctx": search.cfg.ctx}
    shutil.copytree(row.artifact, dest)
    src = _source(search, row, recipe)
    source = search.bases[row.model].loaded if src == row.model else load(src)
    config = litert_config(row.kind, search.cfg)
    reference = reference_for(source, config)
    check = verify_artifact(str(dest), reference, "litert", verify_tolerance(config.variant),
                            source=None if reference is source else source, threads=search.cfg.threads, **vkw)
    return {"path": str(dest), "runtime": "litert", "verification": check}


__all__ = ["export_chosen_litert", "export_litert_candidate", "litert_config", "litert_quality"]
