"""The search space: candidates are base models × recipes × runtimes, each one a ``Row`` that records its fate.

The recipes are the files given (or the task's default ones in ``recipes/``, plus the identity
recipe as the reference); the runtimes are those the task can be measured on, the device has
and this host can run. ``gguf_type_for`` / ``onnx_variant_for`` say which exact artifact form a
recipe takes on llama.cpp / ONNX Runtime / LiteRT (a recipe without one is dropped for that runtime), and
``plan_rows`` predicts every candidate on the device with the cost model, dropping those that
cannot fit even at the best case. A recipe with a ``gguf`` section (``GGUFExportConfig``: a GGUF
type written round-to-nearest or by GPTQ onto its own grid, or a budgeted per-tensor mix) is a llama.cpp-only
candidate: its weights exist only in the GGUF file, so its bytes are predicted per tensor from the
type's block size (``gguf_estimate``) and it is screened on llama.cpp (``deploy.llamacpp_screen``).
The default LM space holds fp32, 8- and 4-bit RTN, Q5_0 written by GPTQ onto its grid, 2:4 sparsity and
depth pruning; ``--ladder`` adds the GGUF types q5_k, q5_0, q4_k and iq4_nl written RTN, and the budgeted
mix (``reference.mix_recipes``).
Deliberately absent: runtimes this host cannot run (their quality and speed could not be measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..devices.stats import estimate_stats, recipe_kind
from ..errors import EdgeLLMError
from ..recipe import Recipe, load_recipe
from .config import PROFILE_RUNTIMES, SEARCH_RUNTIMES, OptimizeConfig
from .pick import Constraints, shortfalls

RECIPE_DIR = Path(__file__).resolve().parents[3] / "recipes"
# recipes tried by default, per task (files in recipes/); all exist in this repository
DEFAULT_RECIPES = {
    # q4_k-gptq: GPTQ after AWQ's prescale onto Q4_K's own grid, Q5_0's where rows do not tile 256
    # (exporters/gguf_gptq.py), the calibrated GGUF that stands against llama.cpp's Q4_K_M + imatrix (the
    # default reference rows, reference.py); on SmolLM2 it was smaller, faster and lower in perplexity than the
    # all-Q5_0 GPTQ file (bench/results/ladder.json)
    "text-generation": ("fp32.yaml", "w8-rtn-g32.yaml", "q4_k-gptq.yaml", "w4-rtn-g32-sym.yaml", "magnitude-2of4.yaml",
                        "depth25.yaml"),
    "classification": ("fp32.yaml", "w8-rtn.yaml", "w8a8.yaml", "w4-rtn-g32-sym.yaml"),
}


# with --ladder (OptimizeConfig.ladder): llama.cpp's types, written RTN onto their own grids, join the
# default space beside the budgeted mix (reference.mix_recipes). Not on by default: on SmolLM2 the whole
# RTN ladder did not fit the 15-minute demo on 2 cores (13.8 min, no speed measured, fp32 picked).
LADDER_RECIPES = ("q5_k-rtn.yaml", "q5_0-rtn.yaml", "q4_k-rtn.yaml", "iq4_nl-rtn.yaml")


def default_recipes(task: str, ladder: bool = False) -> list[Path]:
    """The default search space's recipe files (``recipes/`` in the source tree); *ladder* adds ``LADDER_RECIPES``."""
    if not RECIPE_DIR.is_dir():
        raise EdgeLLMError(f"no default recipes: '{RECIPE_DIR}' is missing (installed without the source tree?)",
                           "pass --recipes FILE.yaml ...")
    names = DEFAULT_RECIPES[task] + (LADDER_RECIPES if ladder and task == "text-generation" else ())
    return [RECIPE_DIR / n for n in names if (RECIPE_DIR / n).is_file()]


@dataclass
class Row:
    """One candidate's record: what was predicted, measured and decided."""

    model: str
    recipe: str
    runtime: str
    kind: str
    status: str = "planned"        # planned, dropped, rejected, screened, evaluated, measured, skipped, failed
    reason: str = ""
    quality_loss: float | None = None
    quality: dict = field(default_factory=dict)
    size_bytes: int | None = None
    peak_ram_bytes: int | None = None
    decode_tok_s: float | None = None
    examples_per_s: float | None = None
    prefill_tok_s: float | None = None
    ttft_ms: float | None = None
    measured: bool = False         # speed/RAM figures measured on the host (else predicted)
    predicted: dict = field(default_factory=dict)          # prediction on the device
    host_check: dict = field(default_factory=dict)         # host prediction vs measurement
    artifact: str | None = None
    build: dict = field(default_factory=dict)
    pareto: bool = False
    chosen: bool = False
    reference: bool = False        # llama.cpp's own quantizer (reference.py): shown, never picked

    @property
    def label(self) -> str:
        return f"{Path(self.model).name} · {self.recipe} · {self.runtime}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def search_runtimes(config: OptimizeConfig, device, host) -> list[str]:
    """The runtimes searched: the task's, that the device has and this host runs, restricted by ``config.runtimes``
    (a ``PROFILE_RUNTIMES`` runtime on the measured host only when ``config.runtimes`` names it)."""
    usable = [r for r in SEARCH_RUNTIMES[config.task] if r in device.runtimes and r in host.runtimes
              and (r not in PROFILE_RUNTIMES or not device.measured or r in config.runtimes)]
    if config.runtimes:
        unknown = [r for r in config.runtimes if r not in SEARCH_RUNTIMES[config.task]]
        if unknown:
            raise EdgeLLMError(f"runtime(s) {', '.join(unknown)} cannot be searched for {config.task}",
                               f"use some of: {', '.join(SEARCH_RUNTIMES[config.task])}")
        usable = [r for r in usable if r in config.runtimes]
    if not usable:
        raise EdgeLLMError(f"device '{device.name}' runs {', '.join(device.runtimes)}, and none of them "
                           f"can be measured for {config.task} on this host ({', '.join(host.runtimes)})",
                           "install the runtime's extra (e.g. edgellm[llamacpp]) or pick another --device")
    return usable


def search_recipes(config: OptimizeConfig) -> list:
    """The recipes searched (files given, else the defaults), with the identity recipe first when none is given."""
    paths = [Path(p) for p in config.recipes] or default_recipes(config.task, ladder=config.ladder)
    recipes = [load_recipe(p) for p in paths]
    if not any(r.is_identity for r in recipes):
        recipes.insert(0, Recipe(name="fp32", description="the base model, uncompressed (reference)"))
    names = [r.name for r in recipes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EdgeLLMError(f"recipe name(s) {', '.join(dup)} given twice", "give each recipe a distinct name")
    return recipes


def constraints_for(config: OptimizeConfig, device) -> Constraints:
    """The pick's limits: the flags where given, else the device profile's (quality loss: 10% when neither says)."""
    mql = config.max_quality_loss if config.max_quality_loss is not None else device.max_quality_loss
    return Constraints(
        max_quality_loss=0.10 if mql is None else mql,
        min_speed=config.min_decode_tok_s if config.min_decode_tok_s is not None else device.min_decode_tok_s,
        max_ram_bytes=config.max_ram if config.max_ram is not None else device.ram_bytes_for_model,
        max_size_bytes=device.storage_bytes,
        max_ttft_ms=config.max_ttft_ms if config.max_ttft_ms is not None else device.max_ttft_ms)


def plan_rows(search) -> list[Row]:
    """One row per model × recipe × runtime, predicted on the device; rows that cannot fit are dropped (with why)."""
    rows = []
    for spec in search.cfg.models:
        base = search.bases[spec].loaded
        for recipe in search.recipes:
            for rt in search.runtimes:
                row = Row(model=spec, recipe=recipe.name, runtime=rt, kind=recipe_kind(recipe))
                rows.append(row)
                try:
                    if rt == "llama.cpp":
                        row.kind = gguf_type_for(recipe)
                    elif rt == "onnxruntime":
                        row.kind = onnx_variant_for(recipe)
                    elif rt == "litert":
                        row.kind = litert_variant_for(recipe)
                    elif "gguf" in recipe.steps:
                        raise EdgeLLMError(f"recipe '{recipe.name}' is a GGUF file type: it runs on llama.cpp only",
                                           "search it with --runtimes llama.cpp")
                    est = estimate_stats(base.model, recipe, rt)
                    if "gguf" in recipe.steps and rt == "llama.cpp":
                        est = gguf_estimate(base.model, recipe.steps["gguf"], est)
                except EdgeLLMError as e:
                    row.status, row.reason = "dropped", str(e)
                    continue
                search.stats[id(row)] = est
                search.apply_prediction(row, est, exact=False)
                fails = shortfalls(dict(row.to_dict(), quality_loss=0.0), search.constraints)
                if fails:
                    row.status = "dropped"
                    row.reason = "predicted to miss " + ", ".join(sorted(fails)) + (
                        "" if row.predicted["calibrated"] else " even at the best case (uncalibrated bound)")
    return rows


def base_weights(recipe) -> bool:
    """Whether the recipe leaves the base model's weights as they are (identity, a ``gguf`` section alone, a reference)."""
    return not set(recipe.steps) & {"prune", "distill", "quantize"}


def gguf_estimate(model, g, est):
    """*est* (the recipe's llama.cpp estimate at f16) with the bytes of GGUF config *g*: each 2-D weight at its
    type's bits per weight (llama.cpp's fallback where the rows do not tile), 1-D tensors f32; a budgeted mix
    at its budget. Bytes read per decoded token scale with the file (the token embedding read once per token).

    >>> gguf_estimate(model, GGUFExportConfig(gguf_type="q4_k"), est).file_bytes     # doctest: +SKIP
    """
    from ..exporters.gguf_types import TYPES, bits_per_weight, fallback

    def bpw(t: str, row: int) -> float:
        if t in TYPES:
            t = fallback(t, row)
        return {"f32": 32.0, "f16": 16.0}.get(t) or bits_per_weight(t)

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    total = per_token = 0.0
    for name, p in model.named_parameters():
        if p.dim() != 2:
            b = 4.0 * p.numel()
        else:
            b = p.numel() * bpw(g.embedding if "embed" in name or name.startswith("lm_head") else g.gguf_type,
                                p.shape[1]) / 8
        total += b
        per_token += 0 if "embed_tokens" in name and not tied else b
    budget = getattr(g, "max_bytes", None) or (getattr(g, "target_bpw", None) or 0) * \
        sum(p.numel() for p in model.parameters()) / 8
    if budget:
        per_token, total = per_token * budget / total, budget
    return replace(est, kind=gguf_type_of(g), file_bytes=int(total), memory_bytes=int(total),
                   weight_bytes_per_token=int(per_token))


def gguf_type_of(g) -> str:
    """The row kind of GGUF config *g*: its type, or ``mix`` for a budgeted per-tensor mix."""
    return "mix" if getattr(g, "max_bytes", None) or getattr(g, "target_bpw", None) else g.gguf_type


def gguf_type_for(recipe) -> str:
    """The GGUF block type that holds a recipe's weights exactly (f16 when nothing is quantized); a recipe's
    ``gguf`` section names it outright (``mix`` for a budgeted mix)."""
    if "gguf" in recipe.steps:
        return gguf_type_of(recipe.steps["gguf"])
    q = recipe.steps.get("quantize")
    if q is None:
        return "f16"
    if q.group_size == 32 and q.act_bits is None:
        if q.bits == 8 and q.symmetric:
            return "q8_0"
        if q.bits == 4:
            return "q4_0" if q.symmetric else "q4_1"
    raise EdgeLLMError(f"recipe '{recipe.name}' ({q.bits}-bit, group {q.group_size}, "
                       f"{'symmetric' if q.symmetric else 'asymmetric'}) has no exact GGUF block type",
                       "GGUF holds 8-bit symmetric, 4-bit symmetric or asymmetric weights in groups of 32")


def onnx_variant_for(recipe) -> str:
    """The ONNX Runtime form of a classifier recipe: the built model as fp32, or dynamic int8 for a w8a8 recipe.

    ONNX Runtime's CPU int8 path quantizes the fp32 graph itself (int8 weights, activations quantized per
    call), so a w8a8 recipe maps to that variant of the *base* model; its quality is measured on ONNX
    Runtime, not borrowed from the PyTorch w8a8 build.
    """
    q = recipe.steps.get("quantize")
    if q is None:
        return "fp32"
    if set(recipe.steps) == {"quantize"} and q.bits == 8 and q.act_bits == 8:
        return "int8"
    raise EdgeLLMError(f"recipe '{recipe.name}' ({q.bits}-bit weights"
                       f"{', int8 activations' if q.act_bits else ', weight-only'}) has no ONNX Runtime classifier form",
                       "ONNX Runtime candidates are unquantized recipes (fp32) and w8a8 alone (dynamic int8)")


def litert_variant_for(recipe) -> str:
    """The LiteRT form of an LM recipe: fp32 of the built model when nothing is quantized, else LiteRT's own
    dynamic-range int8 (8-bit recipes) or int4 (4-bit, blocks of the recipe's group) of the base model.

    LiteRT's converter quantizes the fp32 graph itself (symmetric, per channel or per block, activations
    quantized per call), so a quantize-only recipe maps to that variant of the *base* by bit width; its
    quality is measured on LiteRT, not borrowed from the PyTorch build (``optimization.litert``).
    """
    if "gguf" in recipe.steps:
        raise EdgeLLMError(f"recipe '{recipe.name}' is a GGUF file type: it runs on llama.cpp only",
                           "search it with --runtimes llama.cpp")
    q = recipe.steps.get("quantize")
    if q is None:
        return "fp32"
    if set(recipe.steps) != {"quantize"}:
        raise EdgeLLMError(f"recipe '{recipe.name}' quantizes after {', '.join(sorted(set(recipe.steps) - {'quantize'}))}: "
                           "LiteRT re-quantizes with its own rules, so it has no LiteRT form",
                           "search the recipe without its quantize step on LiteRT")
    if q.bits == 8:
        return "int8"
    g = q.group_size
    if q.bits == 4 and g and 16 <= g <= 256 and not g & (g - 1):
        return f"int4-g{g}"
    raise EdgeLLMError(f"recipe '{recipe.name}' ({q.bits}-bit, group {g}) has no LiteRT form",
                       "LiteRT holds 8-bit weights per channel or 4-bit weights in power-of-two blocks of 16-256")
