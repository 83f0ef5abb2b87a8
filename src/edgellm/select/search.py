"""The pieces of the candidate search: candidates, fingerprints, the result cache, building and scoring.

A candidate is (base model, recipe, runtime). Building one applies the recipe to a fresh copy
of the base model and saves it (packed, sparse or plain folder) into the cache; a llama.cpp
candidate is additionally exported to GGUF and verified on llama.cpp. Quality is scored against
the base model on the *same* tokens: ``quality_loss`` is the relative perplexity increase
(LMs) or the relative accuracy drop (classifiers). The screen reads the first windows/rows and
stops early once the running loss is clearly beyond the budget; the full protocol continues on
the same data, so the screen's work is reused.

Cache entries live in ``<cache>/<model fingerprint>/<recipe hash>/`` (``entry.json`` plus the
built artifacts), so an interrupted search resumes where it stopped. Deliberately absent:
parallel candidate builds (the CPU is the bottleneck) and any heuristic that skips a recipe
because a similar one failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import EdgeLLMError
from ..fileio import sha256_file, write_json

RECIPE_DIR = Path(__file__).resolve().parents[3] / "recipes"
# recipes tried by default, per task (files in recipes/); all exist in this repository
DEFAULT_RECIPES = {
    # GPTQ (about 6 minutes on 2 cores for SmolLM2) is left out so the default search fits 15 minutes: add
    # recipes/w4-gptq-g32-sym-fast.yaml with --recipes and a larger --budget-minutes
    "text-generation": ("fp32.yaml", "w8-rtn-g32.yaml", "w4-rtn-g32-sym.yaml", "magnitude-2of4.yaml", "depth25.yaml"),
    "classification": ("fp32.yaml", "w8-rtn.yaml", "w8a8.yaml", "w4-rtn-g32-sym.yaml"),
}


def default_recipes(task: str) -> list[Path]:
    """The default search space's recipe files (``recipes/`` in the source tree)."""
    if not RECIPE_DIR.is_dir():
        raise EdgeLLMError(f"no default recipes: '{RECIPE_DIR}' is missing (installed without the source tree?)",
                           "pass --recipes FILE.yaml ...")
    return [RECIPE_DIR / n for n in DEFAULT_RECIPES[task] if (RECIPE_DIR / n).is_file()]


@dataclass(frozen=True)
class Candidate:
    model: str            # base model spec as given
    recipe: object        # edgellm.recipe.Recipe
    runtime: str

    @property
    def label(self) -> str:
        return f"{Path(self.model).name} · {self.recipe.name} · {self.runtime}"


def model_fingerprint(spec: str) -> str:
    """A short content hash of a model's weight files (built-ins: the shipped file).

    >>> len(model_fingerprint("smollm2-135m"))    # doctest: +SKIP
    16
    """
    from ..models import BUILTINS, builtin_path

    path = builtin_path(spec) if spec in BUILTINS else Path(spec)
    if not path.exists():
        return hashlib.sha256(spec.encode()).hexdigest()[:16]   # a hub id: its name is all there is
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                 p.suffix in (".safetensors", ".gguf", ".json"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def recipe_hash(recipe, extra: dict | None = None) -> str:
    """Hash of a recipe's steps (name excluded: the same steps under two names share results)."""
    from ..recipe import recipe_to_dict

    d = recipe_to_dict(recipe)
    d.pop("name", None)
    d.pop("description", None)
    blob = json.dumps({"recipe": d, **(extra or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultCache:
    """One JSON entry (and an artifact folder) per (model fingerprint, recipe hash)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeLLMError(f"cannot create the cache folder '{self.root}': {e.strerror}",
                               "pass a writable --cache DIR") from e

    def folder(self, model_fp: str, rhash: str) -> Path:
        return self.root / model_fp / rhash

    def get(self, model_fp: str, rhash: str) -> dict:
        p = self.folder(model_fp, rhash) / "entry.json"
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return {}     # torn by a crash before atomic writes existed: recompute
        return {}

    def put(self, model_fp: str, rhash: str, entry: dict) -> None:
        folder = self.folder(model_fp, rhash)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "entry.json", entry)


# -- building -----------------------------------------------------------------------------------

def build_candidate(base_spec: str, recipe, out: Path, task: str, threads: int, load_kwargs: dict | None = None,
                    distill_data=None) -> dict:
    """Apply *recipe* to a fresh load of *base_spec* and save it to *out* (replaced if present)."""
    from ..models import load
    from ..recipe import apply_recipe

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    loaded = load(base_spec, **_task_kwargs(task), **(load_kwargs or {}))
    results = apply_recipe(loaded, recipe, progress=False, distill_data=distill_data)
    seconds = time.perf_counter() - t0
    save_model(loaded, recipe, out)
    return {"seconds": seconds, "results": _jsonable(results), "path": str(out)}


def save_model(loaded, recipe, out: Path) -> Path:
    """Save a compressed model with the storage its compression needs (packed, sparse or plain)."""
    if out.exists():
        shutil.rmtree(out)
    if "quantize" in recipe.steps:
        from ..quantization import save_quantized

        return save_quantized(loaded, out, force=True)
    prune = recipe.steps.get("prune")
    if prune is not None and getattr(prune, "structure", None) is None:
        from ..pruning.storage import save_sparse

        return save_sparse(loaded, out, force=True)
    from ..models import save

    return save(loaded, out, force=True)


def gguf_type_for(recipe) -> str:
    """The GGUF block type that holds a recipe's weights exactly (f16 when nothing is quantized)."""
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


def export_onnx_candidate(src, variant: str, out: Path, threads: int) -> dict:
    """Export a classifier (a spec or built folder) to ONNX *variant*, verified on ONNX Runtime against it."""
    from ..exporters import export
    from ..models import load

    t0 = time.perf_counter()
    r = export(load(str(src), task="classification"), "onnx", out, variant=variant, force=True, threads=threads)
    return {"path": str(r.path), "variant": variant, "seconds": time.perf_counter() - t0,
            "verification": _jsonable(r.verification)}


def export_gguf_candidate(folder: Path, recipe, out: Path, threads: int, ppl_tokens: int = 1024,
                          text: str | None = None) -> dict:
    """Export a built candidate folder to GGUF, verified on llama.cpp against the exact weights."""
    try:
        from ..exporters.gguf import export_gguf_report
        from ..exporters.verify import make_verifier
    except ImportError as e:
        raise EdgeLLMError("GGUF export is not available in this version", "leave llama.cpp out of --runtimes") from e
    gtype = gguf_type_for(recipe)
    tolerance = "f16" if gtype in ("f16", "f32") else "int8-act"
    verify = make_verifier("llama.cpp", tolerance, threads=threads, ppl_tokens=ppl_tokens, text=text)
    path, report = export_gguf_report(str(folder), out, gguf_type=gtype, force=True, verify=verify)
    return {"path": str(path), "gguf_type": gtype, "report": report.to_dict()}


def _task_kwargs(task: str) -> dict:
    return {"task": "classification"} if task == "classification" else {}


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


# -- quality ------------------------------------------------------------------------------------

def window_nlls(runtime, windows: list[torch.Tensor]) -> list[float]:
    """Summed next-token NLL of each window (ctx − 1 predictions each)."""
    out = []
    for w in windows:
        logits = runtime.logits(w)[:-1].float()
        out.append(F.cross_entropy(logits, w[1:], reduction="sum").item())
    return out


def lm_quality(runtime, windows: list[torch.Tensor], base_nlls: list[float], max_loss: float | None,
               screen_windows: int, reject_factor: float = 2.0, done: list[float] | None = None, full: bool = True,
               progress=None) -> dict:
    """Relative perplexity increase over the base on the same windows, with early rejection.

    Windows are scored in order; after each screen window, a running loss above
    ``reject_factor × max_loss`` rejects the candidate. ``done`` holds NLLs already measured (the
    screen, when continuing to the full protocol). Returns the loss, the perplexities and the
    number of tokens scored.
    """
    nlls = list(done or [])
    n_pred = windows[0].numel() - 1
    limit = len(windows) if full else min(screen_windows, len(windows))
    rejected = False
    for i in range(len(nlls), limit):
        nlls.append(window_nlls(runtime, [windows[i]])[0])
        if progress is not None:
            progress()
        if max_loss is not None and i < screen_windows and _loss(nlls, base_nlls, n_pred) > reject_factor * max_loss:
            rejected = True
            break
    n_tok = n_pred * len(nlls)
    base = sum(base_nlls[: len(nlls)])
    return {"quality_loss": _loss(nlls, base_nlls, n_pred), "perplexity": math.exp(sum(nlls) / n_tok),
            "base_perplexity": math.exp(base / n_tok), "n_tokens": n_tok, "n_windows": len(nlls),
            "early_rejected": rejected, "nlls": nlls}


def _loss(nlls: list[float], base_nlls: list[float], n_pred: int) -> float:
    """exp(mean NLL − mean base NLL) − 1 over the windows scored so far (all *n_pred* predictions long)."""
    k = len(nlls)
    return math.exp((sum(nlls) - sum(base_nlls[:k])) / (k * n_pred)) - 1 if k else 0.0


def correct_flags(runtime, rows, batch_size: int = 32) -> list[bool]:
    """Whether the classifier gets each row right."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        pred = runtime.classify([r.text for r in batch]).argmax(-1).tolist()
        out.extend(p == r.label for p, r in zip(pred, batch))
    return out


def cls_quality(runtime, rows, base_flags: list[bool], max_loss: float | None, screen_rows: int,
                reject_factor: float = 2.0, done: list[bool] | None = None, full: bool = True, batch_size: int = 32,
                progress=None) -> dict:
    """Relative accuracy drop against the base on the same rows, with early rejection in the screen."""
    flags = list(done or [])
    limit = len(rows) if full else min(screen_rows, len(rows))
    rejected = False
    while len(flags) < limit:
        start = len(flags)
        flags.extend(correct_flags(runtime, rows[start : min(start + batch_size, limit)], batch_size))
        if progress is not None:
            progress()
        if max_loss is not None and len(flags) <= screen_rows and _acc_loss(flags, base_flags) > reject_factor * max_loss:
            rejected = True
            break
    n = len(flags)
    return {"quality_loss": _acc_loss(flags, base_flags), "accuracy": sum(flags) / n,
            "base_accuracy": sum(base_flags[:n]) / n, "n_rows": n, "early_rejected": rejected, "flags": flags}


def _acc_loss(flags: list[bool], base_flags: list[bool]) -> float:
    base = sum(base_flags[: len(flags)])
    return (base - sum(flags)) / base if base else 0.0
