"""``edgellm optimize`` end to end on a tiny model: outputs, resume from the cache, infeasible budgets,
bad output folders; and (slow) the report in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


RECIPES = ("fp32", "w8-rtn-g32", "magnitude-2of4")


def _args(tiny_llama, text_file, cache, out, *extra, models=(), recipes=RECIPES):
    models = [a for m in (tiny_llama, *models) for a in ("--model", m)]
    return ["optimize", *models, "--eval-text", text_file, "--ctx", "64", "--screen-tokens", "128",
            "--full-tokens", "384", "--speed-runs", "2", "--speed-in-process", "--prompt-len", "16", "--new-tokens", "8",
            "--runtimes", "torch", "--recipes", *[ROOT / f"recipes/{r}.yaml" for r in recipes],
            "--max-quality-loss", "3%", "--cache", cache, "--out", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, text_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("opt")
    t0, c0 = time.monotonic(), _cpu_seconds()
    code, out, err = run_cli(*_args(tiny_llama, text_file, base / "cache", base / "out"))
    return {"code": code, "out": out, "err": err, "seconds": time.monotonic() - t0, "cpu": _cpu_seconds() - c0,
            "base": base}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its children: the work done, whatever else shares the machine."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def test_tiny_end_to_end_under_a_minute(tiny_run):
    assert tiny_run["code"] == 0, tiny_run["err"]
    # under a minute of work; judged on CPU seconds, since a shared machine can stretch the wall clock arbitrarily
    assert tiny_run["cpu"] < 60, f"{tiny_run['cpu']:.0f} CPU s ({tiny_run['seconds']:.0f} s wall)"
    out = tiny_run["base"] / "out"
    r = json.loads((out / "results.json").read_text())
    by = {row["recipe"]: row for row in r["rows"]}
    assert by["fp32"]["status"] == "measured" and by["fp32"]["quality_loss"] == pytest.approx(0.0, abs=1e-9)
    assert by["w8-rtn-g32"]["status"] == "measured" and abs(by["w8-rtn-g32"]["quality_loss"]) < 0.03
    assert by["w8-rtn-g32"]["size_bytes"] < by["fp32"]["size_bytes"] / 2
    sparse = by["magnitude-2of4"]                      # 2:4 magnitude on a random model: over a 3% budget
    assert sparse["status"] in ("rejected", "evaluated") and sparse["quality_loss"] > 0.03 and not sparse["chosen"]
    chosen = r["chosen"]
    assert chosen is not None and chosen["pareto"] and chosen["measured"]
    assert chosen["quality_loss"] <= 0.03
    # the pick is the fastest candidate within the budget, among measured ones
    measured = [x for x in r["rows"] if x["status"] == "measured" and x["quality_loss"] <= 0.03]
    assert chosen["decode_tok_s"] == max(x["decode_tok_s"] for x in measured)
    assert all(c["decode_measured"] > 0 and "decode_loo_error" in c for c in r["host_checks"])
    assert (out / "report.html").is_file() and (out / "pareto.png").is_file() and (out / "pareto.svg").is_file()
    model = Path(r["export"]["path"])
    assert model.exists() and str(model).startswith(str(out)) and r["export"]["verification"]["passed"]
    assert (out / "model" / "manifest.json").is_file()
    assert "CHOSEN" in tiny_run["out"] and "quality loss" in tiny_run["out"]
    html = (out / "report.html").read_text()
    assert "<table" in html and "pareto.svg" in html and "prediction" in html


def test_resume_reuses_the_cache(tiny_run, tiny_llama, text_file):
    base = tiny_run["base"]
    entries = sorted(base.glob("cache/*/*/entry.json"))
    assert entries
    before = {p: p.stat().st_mtime_ns for p in entries}
    t0 = time.monotonic()
    code, out, err = run_cli(*_args(tiny_llama, text_file, base / "cache", base / "out2"))
    assert code == 0, err
    assert time.monotonic() - t0 < tiny_run["seconds"]
    assert {p: p.stat().st_mtime_ns for p in entries} == before          # nothing recomputed or rewritten
    a = json.loads((base / "out" / "results.json").read_text())
    b = json.loads((base / "out2" / "results.json").read_text())
    assert [(x["label"], x["quality_loss"], x["decode_tok_s"]) for x in a["rows"]] == \
           [(x["label"], x["quality_loss"], x["decode_tok_s"]) for x in b["rows"]]
    # the first run's measurements calibrate the second run's predictions (never a row's own measurement)
    assert (base / "cache" / "host-calibration-text-generation.json").is_file()
    first = [c["calibration"] for c in a["host_checks"]]
    second = [c["calibration"] for c in b["host_checks"]]
    assert len(first) >= 2 and first[0] == "none" and "none" not in second
    assert all(c["decode_predicted"] != c["decode_measured"] for c in b["host_checks"])


def test_budget_nothing_can_meet_names_the_binding_constraint(tiny_run, tiny_llama, text_file):
    base = tiny_run["base"]
    code, out, err = run_cli(*_args(tiny_llama, text_file, base / "cache", base / "out3", "--min-decode-tok-s", "1e7"))
    assert code == 2
    assert "no candidate meets the constraints" in err and "binding constraint: min-speed" in err
    assert "misses min-speed" in err and "max-quality-loss by inf" not in err
    r = json.loads((base / "out3" / "results.json").read_text())
    assert r["chosen"] is None and r["infeasible"]["binding"] == "min-speed" and r["infeasible"]["closest"]
    assert not (base / "out3" / "model").exists()


def test_existing_or_unwritable_output_is_a_clean_error(tiny_run, tiny_llama, text_file, tmp_path):
    base = tiny_run["base"]
    code, _, err = run_cli(*_args(tiny_llama, text_file, base / "cache", base / "out"))
    assert code == 2 and "already exists" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(*_args(tiny_llama, text_file, base / "cache", blocker / "sub" / "out"))
    assert code == 2 and "error:" in err and "writable" in err and "Traceback" not in err


def test_unknown_device_and_bad_flags(tiny_llama, text_file, tmp_path):
    code, _, err = run_cli(*_args(tiny_llama, text_file, tmp_path / "c", tmp_path / "o", "--device", "raspbery-pi-5-8gb"))
    assert code == 2 and "did you mean 'raspberry-pi-5-8gb'" in err
    code, _, err = run_cli(*_args(tiny_llama, text_file, tmp_path / "c", tmp_path / "o", "--max-quality-loss", "lots"))
    assert code == 2 and "--max-quality-loss" in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (make test installs it)")
    report = tiny_run["base"] / "out" / "report.html"
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, HOME=str(tmp_path)))
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") >= 3 and "CHOSEN" in html and 'id="pareto"' in html and "pareto.svg" in html
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()], capture_output=True,
                   timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert shot.is_file() and shot.stat().st_size > 10_000
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1280, 2000)
    colours = img.convert("RGB").resize((64, 100)).getcolors(64 * 100)
    assert colours is not None and len(colours) > 8            # not a blank page: tables and the plot drew


def test_model_selection_judges_every_model_against_the_first(tiny_run, tiny_llama, text_file, tmp_path):
    from conftest import make_tiny_llama

    student = make_tiny_llama(tmp_path / "student", seed=1, num_hidden_layers=2)   # same tokenizer, fewer layers
    base = tiny_run["base"]
    code, out, err = run_cli(*_args(tiny_llama, text_file, base / "cache", tmp_path / "out", "--max-quality-loss", "500%",
                                    models=(student,), recipes=("fp32", "w8-rtn-g32")))
    assert code == 0, err
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(Path(x["model"]).name, x["recipe"]): x for x in r["rows"]}
    assert rows[("llama", "fp32")]["quality_loss"] == pytest.approx(0.0, abs=1e-9)
    s = rows[("student", "fp32")]
    # the student's fp32 loss is measured against the first model's perplexity on the same tokens
    teacher_ppl = rows[("llama", "fp32")]["quality"]["perplexity"]
    assert s["status"] == "measured" and s["quality"]["perplexity"] != pytest.approx(teacher_ppl, rel=1e-6)
    assert s["quality"]["base_perplexity"] == pytest.approx(teacher_ppl, rel=1e-6)
    assert s["quality_loss"] == pytest.approx(s["quality"]["perplexity"] / teacher_ppl - 1, rel=1e-6)
    assert ("student", "w8-rtn-g32") in rows and r["chosen"] is not None


def test_classification_scores_accuracy(tiny_bert_cls, tsv_file, tmp_path):
    code, out, err = run_cli("optimize", "--task", "classification", "--model", tiny_bert_cls, "--tsv", tsv_file,
                             "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn.yaml", ROOT / "recipes/w8a8.yaml",
                             "--screen-rows", "32", "--speed-runs", "2", "--max-quality-loss", "5%",
                             "--cache", tmp_path / "c", "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = {(x["recipe"], x["runtime"]): x for x in r["rows"]}
    assert set(rows) == {(n, rt) for n in ("fp32", "w8-rtn", "w8a8") for rt in ("torch", "onnxruntime")}
    fp, w8 = rows[("fp32", "torch")], rows[("w8-rtn", "torch")]
    assert fp["quality"]["n_rows"] == 64 and 0 <= fp["quality"]["accuracy"] <= 1
    assert w8["quality_loss"] == pytest.approx(1 - w8["quality"]["accuracy"] / fp["quality"]["accuracy"], abs=1e-9)
    assert fp["examples_per_s"] > 0 and w8["size_bytes"] < fp["size_bytes"]
    # ONNX Runtime: weight-only w8 has no ORT form; fp32 and w8a8 (dynamic int8) are exported and scored there
    assert rows[("w8-rtn", "onnxruntime")]["status"] == "dropped"
    assert "no ONNX Runtime" in rows[("w8-rtn", "onnxruntime")]["reason"]
    ofp, oq = rows[("fp32", "onnxruntime")], rows[("w8a8", "onnxruntime")]
    assert ofp["kind"] == "fp32" and oq["kind"] == "int8"
    assert ofp["quality"]["protocol"] == "full" and ofp["quality"]["n_rows"] == 64
    # the same fp32 weights: at most one near-tie flips
    assert abs(ofp["quality"]["accuracy"] - fp["quality"]["accuracy"]) <= 1 / 64 + 1e-9
    assert oq["quality"]["protocol"] == "full" and oq["quality"]["n_rows"] == 64
    assert ofp["artifact"].endswith(".onnx") and oq["size_bytes"] < ofp["size_bytes"]
    assert ofp["status"] == "measured" and ofp["examples_per_s"] > 0
    assert "accuracy" in out and "examples/s" in out and r["export"]["verification"]["passed"]
