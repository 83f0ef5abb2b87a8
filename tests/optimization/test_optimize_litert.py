"""``edgellm optimize`` on LiteRT: a phone profile (which lists litert) searches it, the measured host only when
``--runtimes`` names it; each candidate is exported to ``.tflite`` and verified on the interpreter inside the
search, scored there over the full protocol, its speed measured by the subprocess bench, and the chosen folder
copied out and verified again. Recipes map to LiteRT forms by bit width (``space.litert_variant_for``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import ai_edge_litert.interpreter  # noqa: F401  (the litert extra: a missing one fails here, it is never skipped)
import pytest

from conftest import make_tiny_llama, run_cli
from edgellm.devices.profiles import KNOWN_RUNTIMES, builtin_profiles
from edgellm.errors import EdgeLLMError
from edgellm.optimization.config import OptimizeConfig
from edgellm.optimization.litert import litert_config
from edgellm.optimization.space import litert_variant_for, search_runtimes
from edgellm.recipe import load_recipe
from edgellm.runtimes import open_runtime

ROOT = Path(__file__).resolve().parents[2]


def _recipe(name: str):
    return load_recipe(ROOT / "recipes" / f"{name}.yaml")


def test_phone_profiles_search_litert_and_the_host_only_on_request():
    phone = builtin_profiles()["midrange-phone-6gb"]
    host = replace(phone, name="host", measured=True, runtimes=KNOWN_RUNTIMES)     # a host with every runtime
    assert "litert" in phone.runtimes and "litert" in host.runtimes
    assert search_runtimes(OptimizeConfig(), phone, host) == ["llama.cpp", "litert"]
    assert search_runtimes(OptimizeConfig(), host, host) == ["torch", "llama.cpp"]       # make demo's space
    assert search_runtimes(OptimizeConfig(runtimes=("litert",)), host, host) == ["litert"]
    laptop = builtin_profiles()["laptop-cpu"]                                          # lists no litert
    assert "litert" not in search_runtimes(OptimizeConfig(), laptop, host)
    with pytest.raises(EdgeLLMError, match="cannot be searched"):
        search_runtimes(OptimizeConfig(task="classification", runtimes=("litert",)), phone, host)


def test_recipes_map_to_litert_forms_by_bit_width():
    assert litert_variant_for(_recipe("fp32")) == "fp32"
    assert litert_variant_for(_recipe("magnitude-2of4")) == "fp32"            # the pruned model, converted as is
    assert litert_variant_for(_recipe("w8-rtn-g32")) == "int8"
    assert litert_variant_for(_recipe("w4-rtn-g32-sym")) == "int4-g32"
    with pytest.raises(EdgeLLMError, match="llama.cpp only"):
        litert_variant_for(_recipe("q4_k-rtn"))
    cfg = litert_config("int4-g64", OptimizeConfig(ctx=64, prompt_len=16, new_tokens=8))
    assert (cfg.variant, cfg.group_size, cfg.max_len, cfg.prefill_len) == ("int4", 64, 64, 16)
    assert litert_config("int8", OptimizeConfig(ctx=64, prompt_len=100, new_tokens=28)).max_len == 128


@pytest.fixture(scope="module")
def litert_run(text_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("opt-litert")
    llama1 = make_tiny_llama(base / "llama1", num_hidden_layers=1)     # conversion time grows with the layers
    code, out, err = run_cli(
        "optimize", "--model", llama1, "--eval-text", text_file, "--device", "midrange-phone-6gb",
        "--runtimes", "litert", "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn-g32.yaml",
        "--ctx", "64", "--screen-tokens", "128", "--full-tokens", "256",
        "--speed-runs", "2", "--prompt-len", "16", "--new-tokens", "8", "--max-quality-loss", "5%",
        "--threads", "2", "--cache", base / "cache", "--out", base / "out", "--no-progress")
    return {"code": code, "out": out, "err": err, "base": base}


def test_phone_search_measures_tflite_candidates(litert_run):
    run = litert_run
    assert run["code"] == 0, run["err"]
    r = json.loads((run["base"] / "out" / "results.json").read_text())
    rows = {x["recipe"]: x for x in r["rows"]}
    assert set(rows) == {"fp32", "w8-rtn-g32"} and all(x["runtime"] == "litert" for x in rows.values())
    assert rows["fp32"]["kind"] == "fp32" and rows["w8-rtn-g32"]["kind"] == "int8"
    for row in rows.values():
        assert row["status"] == "measured", (row["status"], row["reason"])
        # scored on the interpreter over the full protocol, through the .tflite exported and verified in the search
        assert row["quality"]["protocol"] == "full" and row["artifact"].endswith(".tflite")
        exp = row["build"]["litert"]
        assert Path(exp["path"], "model.tflite").is_file() and exp["report"]["verification"]["passed"]
        assert exp["config"]["max_len"] == 64 and exp["config"]["prefill_len"] == 16
        hc = row["host_check"]             # measured on this host by the subprocess bench (peak RSS too)
        assert hc["decode_measured"] > 0 and hc["prefill_measured"] > 0 and hc["ram_measured"] > 0
    int8 = rows["w8-rtn-g32"]["build"]["litert"]["report"]["verification"]
    assert int8["tolerance"]["max_ppl_rel"] == 0.02 and int8["vs_source"]["kl"] >= int8["ppl"]["kl"]
    # int8 linears (the fp32 embedding table and the tokenizer files keep the folders' sizes closer)
    wb = {k: open_runtime(x["artifact"], runtime="litert").weight_bytes() for k, x in rows.items()}
    assert wb["w8-rtn-g32"] < 0.5 * wb["fp32"] and rows["w8-rtn-g32"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert abs(rows["w8-rtn-g32"]["quality_loss"]) < 0.05
    chosen = r["chosen"]
    assert chosen is not None and chosen["runtime"] == "litert"
    exported = Path(r["export"]["path"])
    assert exported == run["base"] / "out" / "model" and (exported / "model.tflite").is_file()
    assert r["export"]["runtime"] == "litert" and r["export"]["verification"]["passed"]
    assert "CHOSEN" in run["out"]
