"""bench/ray_scaling.py end to end on a tiny Llama with the protocol shrunk: every setting (local, ray-1x2, ray-2x1)
in its own ``edgellm optimize`` process, then ``--report``: the measured table, the projection table (the block that
docs/optimize.md quotes) and its plot, all written outside the repository."""

from __future__ import annotations

import json

import matplotlib  # noqa: F401  (the plot extra: a missing one fails here, it is never skipped)
import pytest
import ray  # noqa: F401  (the ray extra)

from bench.ray_scaling import MEASURED_TITLE, NODES, PROJECTION_TITLE, SETTINGS, main
from bench.render import render_block

GPTQ_TINY = """name: w4-gptq-tiny
description: GPTQ W4 g32 with a calibration small enough for a tiny model
quantize: {method: gptq, bits: 4, group_size: 32, symmetric: true, calib: {samples: 4, seq_len: 64}}
"""


@pytest.fixture(scope="module")
def dry(tiny_llama, text_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("ray-scaling")
    (base / "w4-gptq-tiny.yaml").write_text(GPTQ_TINY)
    raw, out, img = base / "raw", base / "results" / "ray_scaling.json", base / "img"
    small = ["--eval-text", str(text_file), "--ctx", "64", "--screen-tokens", "128", "--full-tokens", "256",
             "--speed-runs", "2", "--speed-in-process", "--prompt-len", "16", "--new-tokens", "8",
             "--runtimes", "torch", "llama.cpp", "--max-quality-loss", "3%", "--objective", "size"]
    for name in SETTINGS:
        main(["--setting", name, "--model", str(tiny_llama), "--raw-dir", str(raw), "--recipes", "fp32",
              "w8-rtn-g32", str(base / "w4-gptq-tiny.yaml"), "--", *small])
    main(["--report", "--raw-dir", str(raw), "--out", str(out), "--img-dir", str(img)])
    runs = {n: json.loads((raw / f"ray_scaling.{n}.json").read_text()) for n in SETTINGS}
    return runs, json.loads(out.read_text()), out, img


def test_every_setting_ran_its_executor_with_the_same_answers(dry):
    runs, _, _, _ = dry
    assert runs["local"]["executor"] == {"executor": "local"}
    for name in ("ray-1x2", "ray-2x1"):
        ex = runs[name]["executor"]
        assert ex["executor"] == "ray" and ex["threads_per_task"] == SETTINGS[name][1] and ex["retries"] == 0
        assert {t["kind"] for t in ex["tasks"]} == {"screen", "full", "speed"}
        assert any(t["task"].startswith("screen w4-gptq-tiny") for t in ex["tasks"])
    rows = {n: {r["label"]: (r["status"], r["quality_loss"]) for r in r_["rows"]} for n, r_ in runs.items()}
    assert rows["local"] == rows["ray-1x2"] == rows["ray-2x1"] and len(rows["local"]) >= 6
    assert len({r["chosen"]["label"] for r in runs.values()}) == 1
    # tasks of 1 thread run side by side on 2 CPUs or more; tasks of 2 threads never do on fewer than 4
    def overlaps(ex):
        work = sorted((t for t in ex["tasks"] if t["kind"] != "speed"), key=lambda t: t["start"])
        return any(b["start"] < a["end"] - 0.05 for a, b in zip(work, work[1:]))
    cpus = runs["ray-2x1"]["executor"]["cluster"]["cpus"]
    assert cpus >= 2 and overlaps(runs["ray-2x1"]["executor"])
    assert overlaps(runs["ray-1x2"]["executor"]) is (cpus >= 4)


def test_report_tables_projection_and_plot(dry):
    runs, result, out, img = dry
    measured, proj = result["tables"]
    assert measured["title"] == MEASURED_TITLE and proj["title"] == PROJECTION_TITLE
    by = {r["setting"]: r for r in measured["rows"]}
    assert set(by) == set(SETTINGS)
    for name, row in by.items():
        assert row["wall (min)"] == round(runs[name]["wall_s"] / 60, 2) and runs[name]["wall_s"] > 0
        assert row["speed (s)"] >= 0 and row["build+screen (s)"] > 0 and row["export+full (s)"] > 0
        share = float(row["speed share of wall"].rstrip("%"))
        assert share == pytest.approx(100 * row["speed (s)"] / runs[name]["wall_s"], abs=0.06)
        assert 0 < share < 100
    cpus = runs["ray-2x1"]["executor"]["cluster"]["cpus"]
    assert by["ray-2x1"]["workers"] == cpus and by["ray-1x2"]["workers"] == cpus // 2 and by["local"]["workers"] == 1
    assert all(row["skipped"] == 0 for row in by.values())
    assert [r["nodes"] for r in proj["rows"]] == list(NODES)
    walls = [r["projected wall (min)"] for r in proj["rows"]]
    assert walls == sorted(walls, reverse=True)
    assert "ray-2x1" in proj["notes"][0] and '"units_measured": 3' in proj["notes"][0]
    # the plot, and the generated block docs/optimize.md carries once the real run is in bench/results/
    assert result["plots"] and (img / "ray_scaling.png").stat().st_size > 0
    table = render_block(f"{out.name} | {PROJECTION_TITLE} | ", results_dir=out.parent)
    assert len([x for x in table.splitlines() if x.startswith("| ")]) == 1 + len(NODES) and "\n| 64 | " in table
    assert result["format"] == "edgellm-bench/2"
