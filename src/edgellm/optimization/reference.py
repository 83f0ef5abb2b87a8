"""llama.cpp's own quantizer as reference rows: Q4_K_M and Q4_0, each with an importance matrix, measured in the run.

For a causal LM searched on llama.cpp by perplexity (``OptimizeConfig.references``: on unless
``--no-reference`` or ``--task-data``), ``build``
writes the base model's F32 GGUF once, computes llama.cpp's importance matrix from the search's
calibration text (``IMATRIX_SAMPLES`` windows of ``ctx`` tokens of wiki.valid,
``exporters.llamacpp_quant.importance_matrix``) and quantizes with ``llama_model_quantize``
(``REFERENCE_TYPES``). ``evaluate`` scores each file on llama.cpp with the candidates' full
protocol; ``measure`` times it like a finalist (``stages.measure_row``). Each reference is cached
as an entry of its own (a pseudo-recipe whose one step, ``LlamaCppReference``, names the type and
the importance matrix's data), so the code versions and the host key it like every other row.

Reference rows live in ``search.references``, never in ``search.rows``: the Pareto front and the
pick never see them. ``compare`` says how the pick stands against each (size, quality-loss and
speed ratios; the speed ratio from paired rounds, ``measure_paired``, when both were measured).
``mix_recipes`` adds (with ``--ladder``) the budgeted per-tensor mix (``exporters.gguf_mix``) with the Q4_K_M
reference's file size as its byte budget, when the exporter has mixes. Deliberately absent: other
llama.cpp presets (pass them through ``bench/gguf_vs_llamacpp.py``) and references on other runtimes.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..recipe import Recipe
from .budget import SKIPPED
from .space import Row

REFERENCE_TYPES = ("q4_k_m", "q4_0")
IMATRIX_SAMPLES = 32
STEP = "llamacpp_reference"


@dataclass(frozen=True)
class LlamaCppReference:
    """One reference: llama.cpp's *qtype* of the base's F32 GGUF, imatrix from *samples* × *seq_len* tokens of *data*.

    >>> LlamaCppReference("q4_k_m").samples
    32
    """

    qtype: str
    samples: int = IMATRIX_SAMPLES
    seq_len: int = 512
    data: str = "wiki.valid.tokens"


def label(qtype: str) -> str:
    """The reference row's recipe name.

    >>> label("q4_k_m")
    'llama.cpp Q4_K_M + imatrix (reference)'
    """
    return f"llama.cpp {qtype.upper()} + imatrix (reference)"


def reference_recipe(qtype: str, seq_len: int) -> Recipe:
    return Recipe(name=label(qtype), steps={STEP: LlamaCppReference(qtype, seq_len=seq_len)},
                  description=f"llama.cpp's own {qtype.upper()} with an importance matrix (reference, never picked)")


def is_reference(recipe) -> bool:
    return STEP in recipe.steps


def wanted(search) -> bool:
    """Whether this search has reference rows: a causal LM, llama.cpp among its runtimes, references on."""
    return search.lm and search.cfg.references and "llama.cpp" in search.runtimes


def build(search) -> None:
    """Make (or reuse from the cache) every reference GGUF of every model; the rows go to ``search.references``."""
    from .stages import why

    if not wanted(search):
        return
    for spec in search.cfg.models:
        todo = []
        for qtype in REFERENCE_TYPES:
            recipe = reference_recipe(qtype, search.cfg.ctx)
            search.reference_recipes[recipe.name] = recipe
            row = Row(model=spec, recipe=recipe.name, runtime="llama.cpp", kind=qtype, reference=True)
            search.references.append(row)
            e = search.entries.get(spec, recipe)
            path = search.entries.folder(spec, recipe) / f"llamacpp-{qtype}-imatrix.gguf"
            if (e.get("gguf") or {}).get("path") and path.exists():
                _built(row, path, e)
            else:
                todo.append((row, recipe, path))
        if not todo:
            continue
        if not search.budget.fits(search.budget.estimate("reference", "llama.cpp")):
            search.budget.skip_rows([r for r, _, _ in todo], "time budget: reference not built")
            continue
        t0 = time.monotonic()
        try:
            _quantize_all(search, spec, todo)
        except Exception as ex:  # noqa: BLE001 — the search goes on without its references
            for row, _, _ in todo:
                row.status, row.reason = "failed", why(ex)
        search.budget.record("reference", "llama.cpp", time.monotonic() - t0)


def _quantize_all(search, spec: str, todo: list) -> None:
    """The F32 GGUF and the importance matrix once, then ``llama_model_quantize`` per reference type."""
    from ..data import WIKI_VALID, calibration_windows, data_file
    from ..exporters.gguf import export_gguf
    from ..exporters.llamacpp_quant import importance_matrix, llama_quantize, tensor_types

    base, cfg = search.bases[spec], search.cfg
    folder = search.entries.folder(spec, todo[0][1])
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="f32-", dir=folder) as tmp:
        search.step(f"llama.cpp reference: F32 GGUF of {Path(spec).name}")
        t0 = time.perf_counter()
        f32 = export_gguf(base.loaded, Path(tmp) / "f32.gguf", gguf_type="f32", force=True)
        search.step("llama.cpp reference: importance matrix")
        ids = calibration_windows(base.loaded.tokenizer, data_file(WIKI_VALID), IMATRIX_SAMPLES, cfg.ctx)
        imatrix = importance_matrix(base.loaded.model, ids)
        prep = time.perf_counter() - t0
        for row, recipe, path in todo:
            search.step(f"llama.cpp {row.kind.upper()} + imatrix")
            t1 = time.perf_counter()
            path.parent.mkdir(parents=True, exist_ok=True)
            llama_quantize(f32, path, row.kind, imatrix=imatrix, threads=cfg.threads, force=True)
            e = search.entries.get(spec, recipe)
            e["gguf"] = {"path": str(path), "gguf_type": row.kind, "tensor_types": tensor_types(path),
                         "imatrix": dataclasses.asdict(recipe.steps[STEP]), "imatrix_tensors": len(imatrix),
                         "seconds": prep + time.perf_counter() - t1}
            search.entries.save(spec, recipe)
            _built(row, path, e)


def _built(row: Row, path: Path, entry: dict) -> None:
    row.artifact, row.status = str(path), "built"
    row.build = {"gguf": entry["gguf"]}
    row.size_bytes = path.stat().st_size


def evaluate(search) -> None:
    """The full protocol on llama.cpp for every built reference (cached like the candidates' ``gguf_nlls``)."""
    from .deploy import _scored
    from .stages import why

    for row in [r for r in search.references if r.status == "built"]:
        try:
            res = search.budget.timed(row, "full", "llama.cpp", "time budget: no time for the reference's full protocol",
                                      lambda: _scored(search, row, Path(row.artifact), "llama.cpp", "gguf_nlls",
                                                      f"full {row.recipe}"))
        except Exception as e:  # noqa: BLE001
            row.status, row.reason = "failed", why(e)
            continue
        if res is SKIPPED:
            continue
        row.quality = {k: v for k, v in res.items() if k != "nlls"} | {"protocol": "full"}
        row.quality_loss, row.status = res["quality_loss"], "evaluated"


def measure(search) -> None:
    """Speed and peak RAM of every evaluated reference, like a finalist (also calibrates the cost model)."""
    from .stages import measure_row, why

    for row in [r for r in search.references if r.status == "evaluated"]:
        try:
            search.budget.timed(row, "speed", "llama.cpp", "time budget: reference speed not measured",
                                lambda: measure_row(search, row))
        except Exception as e:  # noqa: BLE001
            row.reason = f"speed measurement: {why(e)}"


def mix_recipes(search) -> list[Recipe]:
    """With ``--ladder``: the budgeted mix, no larger than the first model's Q4_K_M reference file (needs ``gguf_mix``)."""
    from ..calibconfig import CalibConfig
    from ..exporters.gguf import GGUFExportConfig

    if search.cfg.recipes or not search.cfg.ladder or "max_bytes" not in {f.name for f in dataclasses.fields(GGUFExportConfig)}:
        return []
    ref = next((r for r in search.references if r.model == search.cfg.models[0] and r.kind == "q4_k_m"
                and r.size_bytes), None)
    if ref is None:
        return []
    g = GGUFExportConfig(max_bytes=int(ref.size_bytes), calib=CalibConfig(samples=IMATRIX_SAMPLES,
                                                                          seq_len=search.cfg.ctx))
    return [Recipe(name="mix-q4_k_m-size", steps={"gguf": g},
                   description="per-tensor GGUF types chosen under the byte budget of llama.cpp's Q4_K_M + imatrix")]


def compare(search, chosen, open_row) -> list[dict]:
    """How the pick stands against each evaluated reference: size, quality-loss and speed ratios (pick / reference).

    The speed ratio comes from paired rounds (``measure_paired``) when both rows were measured on this host
    and the budget allows, else from the two medians (``speed_paired`` says which).
    """
    out = []
    if chosen is None:
        return out
    for ref in search.references:
        if ref.quality_loss is None:
            continue
        d = {"reference": ref.label, "model": ref.model, "size_ratio": _ratio(chosen.size_bytes, ref.size_bytes),
             "quality_loss": chosen.quality_loss, "reference_quality_loss": ref.quality_loss,
             "loss_ratio": _ratio(chosen.quality_loss, ref.quality_loss) if ref.quality_loss > 0 else None,
             "speed_ratio": _ratio(chosen.decode_tok_s, ref.decode_tok_s), "speed_paired": False}
        if chosen.status == "measured" and ref.status == "measured" and search.device.measured and \
                search.budget.fits(search.budget.estimate("speed", "llama.cpp"), final=True):
            try:
                d.update(_paired(search, chosen, ref, open_row))
            except Exception as e:  # noqa: BLE001 — the medians' ratio stays
                from .stages import why

                d["speed_paired_error"] = why(e)
        out.append(d)
    return out


def _paired(search, chosen, ref, open_row) -> dict:
    from ..measure import measure_paired

    rts = {}
    try:
        rts = {chosen.label: open_row(chosen), ref.label: open_row(ref)}
        res = measure_paired(rts, rounds=search.cfg.paired_rounds, prompt_len=search.cfg.prompt_len,
                             new_tokens=search.cfg.new_tokens)
    finally:
        for rt in rts.values():
            if hasattr(rt, "close"):
                rt.close()
    per_round = [1 / r for r in res["ratios"][ref.label]["decode"]["per_round"]]     # pick / reference
    return {"speed_ratio": statistics.median(per_round), "speed_paired": True, "speed_rounds": len(per_round),
            "speed_won": sum(r > 1 for r in per_round) / len(per_round)}


def _ratio(a, b):
    return a / b if a is not None and b else None
