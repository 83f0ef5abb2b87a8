"""A measurement is never silently reused: the optimize cache is keyed by the host and the code versions,
every figure carries measured_at and from_cache, and --fresh measures again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from edgellm.optimization import cache as cache_mod
from edgellm.optimization.cache import Entries, ResultCache, code_versions, host_fingerprint
from edgellm.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def _run(tiny_llama, text_file, base: Path, out: str, *extra) -> dict:
    code, stdout, err = run_cli(
        "optimize", "--model", tiny_llama, "--eval-text", text_file, "--ctx", "64", "--screen-tokens", "128",
        "--full-tokens", "256", "--speed-runs", "2", "--speed-in-process", "--prompt-len", "16", "--new-tokens", "8",
        "--runtimes", "torch", "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn-g32.yaml",
        "--max-quality-loss", "3%", "--cache", base / "cache", "--out", base / out, "--no-progress", *extra)
    assert code == 0, err
    r = json.loads((base / out / "results.json").read_text())
    r["stdout"], r["dir"] = stdout, base / out
    return r


def _measured(r: dict) -> dict:
    return {x["recipe"]: x for x in r["rows"] if x["status"] == "measured"}


@pytest.fixture(scope="module")
def runs(tiny_llama, text_file, tmp_path_factory):
    """Cold run, warm re-run, re-run on a 'different host' (fingerprint patched), and --fresh."""
    base = tmp_path_factory.mktemp("fresh")
    cold = _run(tiny_llama, text_file, base, "cold")
    warm = _run(tiny_llama, text_file, base, "warm")
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(cache_mod, "host_fingerprint", lambda: dict(host_fingerprint(), cpu_model="Another CPU 9000"))
        other = _run(tiny_llama, text_file, base, "other")
    finally:
        mp.undo()
    fresh = _run(tiny_llama, text_file, base, "fresh", "--fresh")
    return {"cold": cold, "warm": warm, "other": other, "fresh": fresh}


def test_cold_run_measures_everything_and_stamps_it(runs):
    rows = _measured(runs["cold"])
    assert set(rows) == {"fp32", "w8-rtn-g32"}
    for x in rows.values():
        assert x["from_cache"] is False
        assert set(x["provenance"]) == {"quality", "speed"}
        assert all(p["measured_at"].endswith("Z") and not p["from_cache"] for p in x["provenance"].values())
    assert runs["cold"]["cache"]["from_cache"] == 0 and runs["cold"]["cache"]["host"] == host_fingerprint()
    assert runs["cold"]["cache"]["code"] == code_versions()
    assert "from the cache" not in runs["cold"]["stdout"]


def test_unchanged_warm_run_reuses_and_says_so(runs):
    cold, warm = _measured(runs["cold"]), _measured(runs["warm"])
    for name, x in warm.items():
        assert x["from_cache"] is True
        assert x["provenance"] == {k: dict(p, from_cache=True) for k, p in cold[name]["provenance"].items()}
        assert x["measured_at"] == cold[name]["measured_at"]
        assert x["decode_tok_s"] == cold[name]["decode_tok_s"]          # the same figure, not a new one
    assert "come from the cache" in runs["warm"]["stdout"] and "--fresh" in runs["warm"]["stdout"]
    assert "cached" in " ".join(runs["warm"]["stdout"].splitlines()[:8])  # the table's figures column
    html = (runs["warm"]["dir"] / "report.html").read_text()
    assert "come from the cache" in html and "cached" in html


def test_another_host_measures_speed_again_but_keeps_quality(runs):
    cold, other = _measured(runs["cold"]), _measured(runs["other"])
    for name, x in other.items():
        assert x["provenance"]["speed"]["from_cache"] is False
        assert x["provenance"]["speed"]["measured_at"] >= cold[name]["provenance"]["speed"]["measured_at"]
        assert x["provenance"]["quality"] == dict(cold[name]["provenance"]["quality"], from_cache=True)
    assert runs["other"]["cache"]["host"]["cpu_model"] == "Another CPU 9000"


def test_fresh_measures_every_figure_again(runs):
    for x in _measured(runs["fresh"]).values():
        assert x["from_cache"] is False
        assert all(not p["from_cache"] for p in x["provenance"].values())
    assert runs["fresh"]["config"]["fresh"] is True and runs["fresh"]["cache"]["from_cache"] == 0


def test_other_code_versions_get_another_entry(tmp_path):
    cache = ResultCache(tmp_path)
    recipe = Recipe(name="r")
    first = Entries(cache, {"task": "text-generation"}, code={"torch": "2.13"}, host={"cpu_model": "a"})
    first.fingerprints["m"] = "abc"
    first.get("m", recipe)["nlls"] = [1.0]
    first.save("m", recipe)
    again = Entries(cache, {"task": "text-generation"}, code={"torch": "2.13"}, host={"cpu_model": "a"})
    again.fingerprints["m"] = "abc"
    assert again.get("m", recipe)["nlls"] == [1.0]
    assert again.provenance("m", recipe, "nlls") == {"measured_at": first.provenance("m", recipe, "nlls")["measured_at"],
                                                     "from_cache": True}
    upgraded = Entries(cache, {"task": "text-generation"}, code={"torch": "2.14"}, host={"cpu_model": "a"})
    upgraded.fingerprints["m"] = "abc"
    assert upgraded.get("m", recipe) == {} and upgraded.provenance("m", recipe, "nlls") is None
    assert upgraded.key("m", recipe) != again.key("m", recipe)
    assert first.host_key != Entries(cache, {}, code={}, host={"cpu_model": "b"}).host_key
    fresh = Entries(cache, {"task": "text-generation"}, code={"torch": "2.13"}, host={"cpu_model": "a"}, fresh=True)
    fresh.fingerprints["m"] = "abc"
    assert "nlls" not in fresh.get("m", recipe)
