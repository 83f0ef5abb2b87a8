"""bench/ladder.py end to end on a tiny Llama (hidden 256, so the K-quants tile its rows) with the protocol shrunk,
a resumed run that reads every figure from the cache, the held-out selection slice, and the verdict's logic."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # noqa: F401  (the llamacpp extra: a missing one fails here, it is never skipped)
import pytest

from bench.ladder import Model, calib_windows, heldout_windows, main, parse_args
from bench.ladder_report import verdict
from conftest import make_tiny_llama

# every kind of file the build step writes, once: base, references, RTN, GPTQ on the grid (the default six types
# through the exporter are tested in tests/exporters/test_gguf_gptq.py; here only Q4_0, the type --gptq 4 adds),
# the former QuantizedLinear path (one width), RTN and GPTQ mixes for each ladder and reference, and GPTQ onto each
# reference's own layout; the GPTQ files and mixes with the default (Q8_0) head and the head pinned to Q4_0
SMALL = ["--ctx", "64", "--max-tokens", "256", "--calib-samples", "4", "--calib-len", "64", "--select-windows", "3",
         "--rounds", "2", "--prompt-len", "8", "--new-tokens", "4", "--refs", "q4_0,q4_k_m", "--rtn", "q4_0",
         "--gptq-types", "", "--gptq", "4", "--gptq-linear", "4", "--ladders", "sym=q4_0,q5_0,q8_0;asym=q2_k,q4_1,q5_1",
         "--head-types", ",q4_0", "--mix-refs", "q4_0,q4_k_m"]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    base = tmp_path_factory.mktemp("ladder")
    model = str(make_tiny_llama(base / "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2))
    args = ["--model", model, "--work", str(base / "work"), "--out", str(base / "ladder.json"),
            "--img-dir", str(base / "img"), "--privileged", model, *SMALL]
    main(args)
    first = json.loads((base / "ladder.json").read_text())
    main(args + ["--step", "eval"])          # everything cached: nothing is measured again
    return base, model, args, first, json.loads((base / "ladder.json").read_text())


def test_ladder_json_has_every_field(dry):
    base, model, _, r, _ = dry
    (label, m), = r["models"].items()
    assert set(m["ladder"]) == {"q4_0", "q4_k_m"} and m["privileged_grid"]
    assert {"f32", "ref-q4_0", "ref-q4_k_m", "rtn-q4_0", "gptq-q4_0", "gptqlin-q4_0", "mix-sym@q4_0", "mix-sym@q4_k_m",
            "mix-asym@q4_k_m", "gptqmix-sym@q4_0", "gptqlay-q4_k_m"} <= set(m["files"])
    for q, entry in m["ladder"].items():
        ref, ours = entry["reference"], entry["edgellm"]
        assert ref["types"] and set(ref["rise"]) == {"wikitext", "sst2"} and ref["tokens"]["sst2"] == 256
        assert ours is not None and ours["bytes"] <= ref["bytes"], (q, entry["candidates_by_heldout_ppl"])
        # chosen on the held-out slice: the lowest held-out perplexity among the candidates no larger, passing the
        # speed gate (each skipped one measured below 0.97 of the reference), else the held-out best
        cands, checked = entry["candidates_by_heldout_ppl"], entry["speed_checked"]
        assert all(m["files"][c]["bytes"] <= ref["bytes"] for c in cands) and checked
        assert [c for c, _ in checked] == cands[: len(checked)] and all(r < 0.97 for _, r in checked[:-1])
        passed = [c for c, r in checked if r >= 0.97]
        assert ours["file"] == (passed[0] if passed else cands[0])
        assert (entry["decode_ratio"] >= 0.97) == bool(passed)
        # a privileged grid: no file holding Q4_1/Q5_1 may be picked, though the asymmetric mix fits the budget
        assert not set(ours["types"]) & {"Q4_1", "Q5_1"} and not any(c.startswith("mix-asym") for c in cands)
        assert entry["decode_ratio"] > 0 and entry["verdict"]["conditions_met"] is not None
        assert entry["verdict"]["size_ok"] and entry["verdict"]["evidence"]
    head, plain = (m["files"][n]["tensor_types"] for n in ("gptq-q4_0+hq4_0", "gptq-q4_0"))
    moved = {**plain, "Q8_0": plain["Q8_0"] - 1, "Q4_0": plain["Q4_0"] + 1}
    assert head == {t: n for t, n in moved.items() if n}                               # the tied head moved off Q8_0
    assert {"gptqmix-sym@q4_0+hq4_0", "gptqmix-sym@q4_k_m+hq4_0"} <= set(m["files"])
    asym = m["files"]["mix-asym@q4_k_m"]
    assert set(asym["tensor_types"]) & {"Q4_1", "Q5_1"} and asym["bytes"] <= m["ladder"]["q4_k_m"]["reference"]["bytes"]
    assert "mix-asym@q4_k_m" in m["heldout_ppl"]
    assert r["selection"]["evaluation_texts_used"] is False
    assert len(m["build_commands"]) == 1                                # one invocation (here pytest's) built the pool
    cands = {c["file"]: c for c in r["tables"][1]["rows"]}           # every candidate, picks or not
    assert set(cands) == set(m["heldout_ppl"]) - {"f32"}
    assert all(c["held-out rise %"] is not None for c in cands.values())
    for q, entry in m["ladder"].items():                             # a pick's row holds its evaluation figures
        pick = entry["edgellm"]["file"]
        assert cands[pick]["wikitext rise %"] == round(entry["edgellm"]["rise"]["wikitext"], 2)
    assert r["target"]["pairs"] == 2 and r["format"] == "edgellm-bench/2"
    rows = r["tables"][0]["rows"]
    assert len(rows) == 2 and all(set(r["tables"][0]["columns"]) <= set(row) for row in rows)
    assert [Path(p).name for p in r["plots"]] == [f"ladder_{label}.png"] and Path(r["plots"][0]).stat().st_size > 0


def test_layout_files_hold_their_references_types_made_symmetric(dry):
    """gptqlay-<ref> holds the reference's type tensor by tensor (on the privileged grid Q4_1/Q5_1 become Q4_0/Q5_0),
    unless a gptq-<type> file holds exactly those types already."""
    from edgellm.exporters.gguf_names import file_types

    base, _, _, r, _ = dry
    (folder,) = (base / "work").iterdir()
    sym = {"q4_1": "q4_0", "q5_1": "q5_0"}
    (m,) = r["models"].values()
    for q in ("q4_0", "q4_k_m"):
        theirs = {n: sym.get(t, t) for n, (t, _) in file_types(folder / f"ref-{q}.gguf").items()}
        # a uniform preset's layout is a gptq-<type> file already built: it is not built twice
        name = f"gptqlay-{q}" if f"gptqlay-{q}" in m["files"] else \
            next(n for n in m["files"] if n.startswith("gptq-") and q == "q4_0")
        assert {n: t for n, (t, _) in file_types(folder / f"{name}.gguf").items()} == theirs
    assert m["files"]["gptqlay-q4_k_m"]["layout_of"] == "q4_k_m" and m["files"]["gptqlay-q4_k_m"]["kind"] == "gptq"


def test_rerun_reads_the_cache(dry):
    _, _, _, first, again = dry
    (m1,), (m2,) = first["models"].values(), again["models"].values()
    assert m1["ladder"] == m2["ladder"] and m1["files"] == m2["files"]
    assert again["tables"][0]["rows"] == first["tables"][0]["rows"]


def test_heldout_slice_is_not_calibration(dry):
    _, _, args, _, _ = dry
    m = Model(parse_args(args).models[0], parse_args(args))
    held, calib = heldout_windows(m), calib_windows(m)
    assert len(held) == 3 and all(h.numel() == 64 for h in held)
    assert not any(h.equal(c[:64]) for h in held for c in calib)


REF = {"bytes": 100, "rise": {"wikitext": 6.0, "sst2": 8.0}, "types": {"Q4_0": 9, "Q8_0": 1}}


@pytest.mark.parametrize("ours, ratio, privileged, expect", [
    ({"bytes": 100, "rise": {"wikitext": 3.0, "sst2": 4.0}, "types": {"Q4_K": 9}}, 0.97, False, True),   # at the edges
    ({"bytes": 101, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q4_K": 9}}, 1.2, False, False),   # one byte over
    ({"bytes": 90, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q4_K": 9}}, 0.969, False, False),  # too slow
    ({"bytes": 90, "rise": {"wikitext": 2.0, "sst2": 4.1}, "types": {"Q4_K": 9}}, 1.0, False, False),    # loses on SST-2
    ({"bytes": 90, "rise": {"wikitext": 3.1, "sst2": 1.0}, "types": {"Q4_K": 9}}, 1.0, False, False),    # on wikitext
    ({"bytes": 90, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q5_1": 2, "Q4_K": 7}}, 1.0, False, True),
    ({"bytes": 90, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q5_1": 2, "Q4_K": 7}}, 1.0, True, False),
    ({"bytes": 90, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q4_1": 2, "Q4_K": 7}}, 1.0, True, False),
    ({"bytes": 90, "rise": {"wikitext": 1.0, "sst2": 1.0}, "types": {"Q4_K": 9, "Q5_0": 2}}, 1.0, True, True),
])
def test_verdict(ours, ratio, privileged, expect):
    v = verdict(REF, ours, ratio, privileged)
    assert v["met"] is expect
    asym = sorted(set(ours["types"]) & {"Q4_1", "Q5_1"})
    assert v["asymmetric_types"] == asym and v["evidence"] is not (privileged and bool(asym))
    if privileged and asym:
        assert v["conditions_met"] is True          # it would win, but the win is not evidence


def test_verdict_missing_figures_is_undecided():
    ours = {"bytes": 90, "rise": {"wikitext": 1.0}, "types": {"Q4_K": 9}}
    v = verdict(REF, ours, None, False)
    assert v["speed_ok"] is None and v["quality_ok"]["sst2"] is None and v["conditions_met"] is None and not v["met"]


def test_head_types_and_mix_refs_parse_or_fail_in_one_line(capsys):
    a = parse_args(["--head-types", ",q5_0", "--mix-refs", "Q4_K_S, q5_0"])
    assert a.head_types == ["", "q5_0"] and a.mix_refs == ["q4_k_s", "q5_0"] and parse_args([]).mix_refs is None
    assert parse_args([]).head_types == [""]
    assert parse_args([]).sensitivities == ["hessian"]
    assert parse_args(["--sensitivities", "hessian, Fisher"]).sensitivities == ["hessian", "fisher"]
    for bad in (["--head-types", "q9_9"], ["--mix-refs", "q7_0"], ["--sensitivities", "magic"]):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        err = capsys.readouterr().err
        assert e.value.code == 2 and ("q9_9" in err or "hessian, fisher" in err or bad[1] == "q7_0")
