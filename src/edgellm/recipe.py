"""Recipes: named, YAML-backed compression pipelines (prune → distill → quantize, each optional).

A recipe file maps onto the very config dataclasses the API and CLI use; there is one
source of defaults::

    name: w4-gptq-g32
    quantize: {method: gptq, bits: 4, group_size: 32, symmetric: true, calib: {samples: 32}}

Calibrated sections hold a nested ``calib:`` mapping (``CalibConfig``: data, samples, seq_len,
seed); the older flat keys (``calib: FILE``, ``calib_samples``, ``calib_len``, ``seed``) map
onto it. An unknown key raises ``EdgeLLMError``.

A ``gguf:`` section (``GGUFExportConfig``) is no step: it names the GGUF type (or budgeted mix)
``edgellm optimize`` writes the candidate as on llama.cpp, from the weights the steps leave.

``apply_recipe(loaded, recipe)`` runs the steps in order on a copy-free, in-place model
(load a fresh model per recipe). Distillation needs a teacher and data, so ``apply_recipe``
runs it only when given ``distill_data``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calibconfig import nest_calib
from .errors import EdgeLLMError

# section -> "module:ConfigClass"; explicit, in pipeline order
SECTIONS = {
    "prune": "edgellm.pruning.config:PruneConfig",
    "distill": "edgellm.distillation.config:DistillConfig",
    "quantize": "edgellm.quantization.config:QuantConfig",
    "gguf": "edgellm.exporters.gguf:GGUFExportConfig",     # the GGUF file a llama.cpp candidate is written as
}


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: dict[str, Any] = field(default_factory=dict)   # section -> config dataclass instance
    description: str = ""

    @property
    def is_identity(self) -> bool:
        return not self.steps


def config_class(section: str):
    module, cls = SECTIONS[section].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise EdgeLLMError(f"recipe section '{section}' is not available in this version", "remove it") from e


def build_config(section: str, values: dict, where: str = "recipe"):
    """Config dataclass for *section* from a dict, naming any unknown or invalid field."""
    cls = config_class(section)
    names = {f.name for f in dataclasses.fields(cls)}
    if "calib" in names:     # nested calib: {samples, seq_len, data, seed}; the old flat keys still map onto it
        values = nest_calib(values, f"{where}: '{section}'")
    unknown = sorted(set(values) - names)
    if unknown:
        raise EdgeLLMError(f"{where}: unknown field(s) {', '.join(unknown)} in '{section}'",
                           f"valid fields: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as e:
        raise EdgeLLMError(f"{where}: invalid '{section}' section: {e}", "check the field types") from e


def recipe_from_dict(d: dict, where: str = "recipe") -> Recipe:
    if not isinstance(d, dict) or "name" not in d:
        raise EdgeLLMError(f"{where}: a recipe needs a 'name' field", "add name: my-recipe")
    unknown = sorted(set(d) - set(SECTIONS) - {"name", "description"})
    if unknown:
        raise EdgeLLMError(f"{where}: unknown section(s) {', '.join(unknown)}",
                           f"sections are: {', '.join(SECTIONS)}")
    steps = {s: build_config(s, d[s] or {}, where) for s in SECTIONS if s in d}
    return Recipe(name=str(d["name"]), steps=steps, description=str(d.get("description", "")))


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML file.

    >>> load_recipe("recipes/w4-gptq-g32.yaml").steps["quantize"].bits   # doctest: +SKIP
    4
    """
    from .fileio import read_yaml

    d = read_yaml(path, "recipe", "check the path (see recipes/)")
    return recipe_from_dict(d, where=str(path))


def recipe_to_dict(recipe: Recipe) -> dict:
    out: dict[str, Any] = {"name": recipe.name}
    if recipe.description:
        out["description"] = recipe.description
    for section, cfg in recipe.steps.items():
        out[section] = dataclasses.asdict(cfg)     # nested dataclasses (calib) become nested mappings
    return out


def apply_recipe(loaded, recipe: Recipe, progress: bool = True, distill_data=None) -> dict:
    """Run the recipe's steps on ``loaded.model`` in place; returns each step's result record."""
    results: dict[str, Any] = {}
    if "prune" in recipe.steps:
        from .pruning import prune

        _, results["prune"] = prune(loaded, recipe.steps["prune"], progress=progress)
    if "distill" in recipe.steps and distill_data is not None:
        from .distillation import distill

        results["distill"] = distill(loaded, loaded, distill_data, recipe.steps["distill"])
    if "quantize" in recipe.steps:
        from .quantization import quantize

        _, results["quantize"] = quantize(loaded, recipe.steps["quantize"], progress=progress)
    return results
