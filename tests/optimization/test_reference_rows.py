"""``edgellm optimize`` on llama.cpp shows llama.cpp's own Q4_K_M and Q4_0 (+ importance matrix) as reference rows,
measured in the same run by the same protocol, never picked, on by default; ``--no-reference`` drops them; the
default space holds Q5_0 written by GPTQ onto its grid, and ``--ladder`` adds the 4- and 5-bit GGUF types (written
onto their own grids at export, screened on llama.cpp) and the budgeted mix.

A tiny Llama with hidden 256 and MLP 512, so the K-quants tile its rows; the protocol is shrunk (64-token windows).
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # noqa: F401  (the llamacpp extra: a missing one fails here, it is never skipped)
import pytest

from conftest import make_tiny_llama, run_cli

ROOT = Path(__file__).resolve().parents[2]
Q4KM, Q40 = "llama.cpp Q4_K_M + imatrix (reference)", "llama.cpp Q4_0 + imatrix (reference)"


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("wide") / "llama", hidden_size=256, intermediate_size=512,
                           num_hidden_layers=2)


def optimize(model, text, base: Path, out: str, *extra):
    return run_cli("optimize", "--model", model, "--eval-text", text, "--runtimes", "llama.cpp",
                   "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/q4_k-rtn.yaml",
                   "--ctx", "64", "--screen-tokens", "128", "--full-tokens", "256", "--speed-runs", "2",
                   "--prompt-len", "16", "--new-tokens", "8", "--paired-rounds", "2", "--max-quality-loss", "50%",
                   "--cache", base / "cache", "--out", base / out, "--no-progress", *extra)


@pytest.fixture(scope="module")
def runs(wide_llama, text_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("opt-reference")
    with_ref = optimize(wide_llama, text_file, base, "ref")
    without = optimize(wide_llama, text_file, base, "noref", "--no-reference")
    return base, with_ref, without


def test_reference_rows_are_built_measured_and_never_picked(runs):
    base, (code, out, err), _ = runs
    assert code == 0, err
    r = json.loads((base / "ref" / "results.json").read_text())
    refs = {x["recipe"]: x for x in r["references"]}
    assert set(refs) == {Q4KM, Q40}
    for ref in refs.values():
        assert ref["reference"] and ref["runtime"] == "llama.cpp" and not ref["chosen"] and not ref["pareto"]
        assert ref["status"] == "measured" and ref["measured"] and ref["decode_tok_s"] > 0, ref["reason"]
        # the candidates' protocol, on llama.cpp: every window of the full protocol
        assert ref["quality"]["protocol"] == "full" and ref["quality"]["n_tokens"] == 4 * 63
        gguf = ref["build"]["gguf"]
        assert Path(gguf["path"]).is_file() and ref["size_bytes"] == Path(gguf["path"]).stat().st_size
        assert gguf["imatrix"]["data"] == "wiki.valid.tokens" and gguf["imatrix_tensors"] == 2 * 7
    assert refs[Q4KM]["build"]["gguf"]["tensor_types"].get("Q4_K")          # 256-wide rows: a real K-quant
    assert refs[Q40]["build"]["gguf"]["tensor_types"].get("Q4_0")
    assert all(not x.get("reference") for x in r["rows"]) and r["chosen"]["recipe"] not in refs
    assert "reference|llama.cpp" in r["timings"]                            # the budget knows what they cost
    # the pick against each reference: size, quality-loss and (paired) speed ratios
    vs = {c["reference"]: c for c in r["vs_reference"]}
    assert set(vs) == {f"{Path(r['chosen']['model']).name} · {q} · llama.cpp" for q in (Q4KM, Q40)}
    for c in vs.values():
        ref = refs[c["reference"].split(" · ")[1]]
        assert c["size_ratio"] == pytest.approx(r["chosen"]["size_bytes"] / ref["size_bytes"])
        assert c["reference_quality_loss"] == ref["quality_loss"] and c["speed_ratio"] > 0
        assert c["speed_paired"] and c["speed_rounds"] == 2
    # the CLI table and the report show them, labelled, and say how the pick compares
    assert out.count("(reference)") >= 4 and "reference" in out and f"vs {Path(r['chosen']['model']).name}" in out
    page = (base / "ref" / "report.html").read_text()
    assert Q4KM in page and Q40 in page and "Against llama.cpp's own quantizer" in page
    assert "<tr class=\"reference\">" in page


def test_a_gguf_type_recipe_is_written_at_export_and_screened_on_llamacpp(runs):
    base = runs[0]
    r = json.loads((base / "ref" / "results.json").read_text())
    (row,) = [x for x in r["rows"] if x["recipe"] == "q4_k-rtn"]
    assert row["kind"] == "q4_k" and row["artifact"].endswith("model-q4_k.gguf")
    rep = row["build"]["gguf"]["report"]
    assert rep["tensor_types"].get("q4_k") and rep["verification"]["passed"]
    assert row["status"] in ("measured", "evaluated") and row["quality"]["protocol"] == "full"
    assert "screen|llama.cpp" in r["timings"]


def test_no_reference_drops_them(runs):
    base, _, (code, out, err) = runs
    assert code == 0, err
    r = json.loads((base / "noref" / "results.json").read_text())
    assert r["references"] == [] and r["vs_reference"] == [] and not r["config"]["reference"]
    assert "(reference)" not in out and "(reference)" not in (base / "noref" / "report.html").read_text()


def test_the_default_space_holds_a_calibrated_gguf_and_the_ladder_the_4_and_5_bit_types():
    from edgellm.optimization.space import default_recipes, gguf_type_for
    from edgellm.recipe import load_recipe

    default = [load_recipe(p) for p in default_recipes("text-generation")]
    gptq = [r for r in default if "gguf" in r.steps and r.steps["gguf"].quantizer == "gptq"]
    assert [gguf_type_for(r) for r in gptq] == ["q4_k"] and gptq[0].steps["gguf"].awq_prescale
    kinds = {gguf_type_for(load_recipe(p)) for p in default_recipes("text-generation", ladder=True)}
    assert {"q5_0", "q5_k", "q4_k", "iq4_nl", "q4_0", "q8_0"} <= kinds


def test_references_are_on_by_default_for_perplexity_searches_only():
    from edgellm.errors import EdgeLLMError
    from edgellm.optimization import OptimizeConfig

    assert OptimizeConfig().references and not OptimizeConfig(reference=False).references
    assert not OptimizeConfig(task_data="t.jsonl").references          # scored on a task: no perplexity rows
    with pytest.raises(EdgeLLMError, match="no-reference"):
        OptimizeConfig(task_data="t.jsonl", reference=True)


def test_gguf_estimates_follow_the_types_bits(wide_llama):
    from edgellm.devices.stats import estimate_stats
    from edgellm.models import load
    from edgellm.optimization.space import gguf_estimate
    from edgellm.recipe import load_recipe

    model = load(str(wide_llama)).model
    est = {}
    for t in ("q4_k", "q5_k", "q5_0"):
        recipe = load_recipe(ROOT / f"recipes/{t}-rtn.yaml")
        est[t] = gguf_estimate(model, recipe.steps["gguf"], estimate_stats(model, recipe, "llama.cpp"))
        assert est[t].kind == t
    assert est["q4_k"].file_bytes < est["q5_k"].file_bytes
    assert est["q5_0"].file_bytes == pytest.approx(est["q5_k"].file_bytes, rel=0.05)   # 5.5 vs 5.5 bpw


def test_the_ladder_adds_the_mix_at_the_q4_k_m_reference_size():
    from types import SimpleNamespace

    from edgellm.optimization import OptimizeConfig
    from edgellm.optimization.reference import mix_recipes
    from edgellm.optimization.space import Row, gguf_type_for

    ref = Row(model="m", recipe=Q4KM, runtime="llama.cpp", kind="q4_k_m", size_bytes=105_000_000, reference=True)
    search = SimpleNamespace(cfg=OptimizeConfig(models=("m",), ladder=True), references=[ref])
    (mix,) = mix_recipes(search)
    assert mix_recipes(SimpleNamespace(cfg=OptimizeConfig(models=("m",)), references=[ref])) == []   # no --ladder
    assert mix.steps["gguf"].max_bytes == 105_000_000 and gguf_type_for(mix) == "mix"
    assert mix_recipes(SimpleNamespace(cfg=OptimizeConfig(models=("m",)), references=[])) == []     # --no-reference
    given = SimpleNamespace(cfg=OptimizeConfig(models=("m",), recipes=("a.yaml",)), references=[ref])
    assert mix_recipes(given) == []                                                              # --recipes given
