"""Composition: prune, then quantize, from the API and from the YAML recipes in recipes/."""

import dataclasses
from pathlib import Path

import pytest
import torch

from edgellm.calibconfig import CalibConfig
from edgellm.models import load
from edgellm.pruning import PruneConfig, prune
from edgellm.pruning.masks import is_nm
from edgellm.recipe import Recipe, apply_recipe, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
IDS = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", ["wanda-2of4", "sparsegpt-50", "width25", "width25-w4-rtn-g32"])
def test_prune_recipes_parse(name):
    rec = load_recipe(RECIPES / f"{name}.yaml")
    assert isinstance(rec.steps["prune"], PruneConfig)


def test_yaml_recipe_prunes_then_quantizes(tiny_llama, text_file, tmp_path):
    from edgellm.quantization import save_quantized

    rec = load_recipe(RECIPES / "width25-w4-rtn-g32.yaml")
    small_calib = dataclasses.replace(rec.steps["prune"], calib=CalibConfig(str(text_file), samples=4, seq_len=16))
    rec = Recipe(rec.name, {**rec.steps, "prune": small_calib})
    loaded = load(tiny_llama)
    res = apply_recipe(loaded, rec, progress=False)
    assert res["prune"].params_after < res["prune"].params_before
    assert loaded.model.config.intermediate_size == 144
    assert res["quantize"].bits == 4 and res["quantize"].n_linears == 21
    with torch.no_grad():
        want = loaded.model(input_ids=IDS).logits
    again = load(save_quantized(loaded, tmp_path / "pq"))
    assert again.model.config.intermediate_size == 144
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=IDS).logits, want)


def test_api_two_of_four_survives_symmetric_quantization(tiny_llama):
    """Zeros stay zero on a symmetric grid, so a 2:4 model stays 2:4 after 8-bit RTN."""
    from edgellm.quantization import QuantConfig, quantize

    loaded = load(tiny_llama)
    prune(loaded, PruneConfig(method="magnitude", pattern="2:4"), progress=False)
    quantize(loaded, QuantConfig(method="rtn", bits=8, symmetric=True), progress=False)
    q = loaded.model.model.layers[1].mlp.down_proj
    assert type(q).__name__ == "QuantizedLinear" and is_nm(q.weight, 2, 4)
