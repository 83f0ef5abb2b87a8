"""``edgellm optimize --task-data``: candidates judged by task exact match (points of accuracy) against the best base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import make_tiny_llama, run_cli
from edgellm.evaluation.task import evaluate_task
from edgellm.evaluation.taskdata import read_task, wilson
from edgellm.models import load
from edgellm.optimization.quality import task_quality, task_summary
from edgellm.runtimes.torch import TorchRuntime

ROOT = Path(__file__).resolve().parents[2]
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")
SCHEMA = {"type": "object", "properties": {"device": {"type": "string", "enum": ["light", "fan", "tv"]},
                                           "on": {"type": "boolean"}},
          "required": ["device", "on"], "additionalProperties": False}
TEXTS = ["turn the light on", "fan off please", "the light off", "warm fan on", "tv on", "open the door",
         "music loud", "kitchen light"]


def chat_model(path: Path, seed: int) -> Path:
    make_tiny_llama(path, seed=seed)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return path


def write_task(path: Path, answers) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}], "expected": a}) + "\n"
                            for t, a in zip(TEXTS, answers)))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two chat models and a task whose expected answers are the first model's own constrained answers."""
    base = tmp_path_factory.mktemp("opt-task")
    a, b = chat_model(base / "a", seed=0), chat_model(base / "b", seed=5)
    (base / "schema.json").write_text(json.dumps(SCHEMA))
    probe = write_task(base / "probe.jsonl", [{"device": "light", "on": True}] * len(TEXTS))
    rt = TorchRuntime(load(a), device="cpu", threads=2)
    # optimize answers with task_new_tokens (64): the same budget, so the same constrained answers
    answers = [r["parsed"] for r in evaluate_task(rt, read_task(probe, SCHEMA), constrained=True, max_new_tokens=64).rows]
    return {"dir": base, "a": a, "b": b, "task": write_task(base / "task.jsonl", answers), "rt": rt}


def _optimize(setup, out, *extra, models=None):
    models = models or [setup["a"]]
    return run_cli("optimize", *[x for m in models for x in ("--model", m)], "--task-data", setup["task"],
                   "--schema", setup["dir"] / "schema.json", "--screen-examples", "3", "--runtimes", "torch",
                   "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn-g32.yaml",
                   ROOT / "recipes/magnitude-2of4.yaml", "--speed-runs", "2", "--speed-in-process",
                   "--prompt-len", "16", "--new-tokens", "8", "--max-quality-loss", "25%",
                   "--cache", setup["dir"] / "cache", "--out", out, "--no-progress", *extra)


def test_task_summary_and_interval_rejection():
    base = [True] * 10
    s = task_summary([True] * 8 + [False] * 2, base)
    assert s["quality_loss"] == pytest.approx(0.2) and s["accuracy"] == 0.8 and s["interval"] == wilson(8, 10)
    assert s["quality_loss_low"] == pytest.approx(1 - wilson(8, 10)[1])
    assert task_summary([False], [True])["quality_loss_low"] == pytest.approx(1 - wilson(0, 1)[1])


def test_screen_stops_early_only_when_the_interval_allows_no_pass(setup, tmp_path):
    flipped = [dict(r, on=not r["on"]) for r in
               (json.loads(x)["expected"] for x in setup["task"].read_text().splitlines())]
    wrong = read_task(write_task(tmp_path / "wrong.jsonl", flipped), SCHEMA)
    r = task_quality(setup["rt"], wrong, [True] * len(TEXTS), 0.05, screen=5, max_new_tokens=64, full=False)
    assert r["early_rejected"] and r["n_rows"] == 1 and r["accuracy"] == 0     # 0/1: at best 21 points below
    right = read_task(setup["task"], SCHEMA)
    r = task_quality(setup["rt"], right, [True] * len(TEXTS), 0.05, screen=5, max_new_tokens=64, full=False)
    assert not r["early_rejected"] and r["n_rows"] == 5 and r["accuracy"] == 1.0


def test_optimize_judges_candidates_by_task_accuracy(setup):
    out = setup["dir"] / "out"
    code, stdout, err = _optimize(setup, out)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    by = {row["recipe"]: row for row in r["rows"]}
    fp = by["fp32"]["quality"]
    assert fp["accuracy"] == 1.0 and fp["n_rows"] == len(TEXTS) and by["fp32"]["quality_loss"] == 0
    for row in r["rows"]:
        q = row["quality"]
        if row["status"] in ("evaluated", "measured"):
            assert q["protocol"] == "full" and q["n_rows"] == len(TEXTS)
            k = round(q["accuracy"] * len(TEXTS))
            assert row["quality_loss"] == pytest.approx(1.0 - k / len(TEXTS))
            assert list(q["interval"]) == pytest.approx(wilson(k, len(TEXTS)))
    assert r["chosen"]["quality_loss"] <= 0.25
    assert "task accuracy [95% CI]" in stdout and "100.0 [" in stdout and "pts" in stdout


def test_best_base_model_is_the_reference(setup):
    # model b answers the task (made from a's answers) worse; every candidate is judged against a, the best base
    out = setup["dir"] / "out2"
    code, stdout, err = _optimize(setup, out, models=[setup["b"], setup["a"]])
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    fp = {Path(row["model"]).name: row for row in r["rows"] if row["recipe"] == "fp32"}
    assert fp["a"]["quality_loss"] == 0 and fp["a"]["quality"]["accuracy"] == 1.0
    assert fp["b"]["quality"]["accuracy"] < 1.0
    assert fp["b"]["quality_loss"] == pytest.approx(1.0 - fp["b"]["quality"]["accuracy"])


def test_task_data_bad_input_is_one_line_exit_2(setup, tmp_path):
    bad_schema = tmp_path / "min.json"
    bad_schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}))
    ints = tmp_path / "ints.jsonl"
    ints.write_text(json.dumps({"text": "x", "expected": {"n": 1}}) + "\n")
    cases = [
        (("--task-data", ints, "--schema", bad_schema), "cannot be enforced"),
        (("--schema", bad_schema), "--schema goes with --task-data"),
    ]
    for extra, msg in cases:
        code, out, err = run_cli("optimize", "--model", setup["a"], *extra, "--runtimes", "torch",
                                 "--cache", tmp_path / "c", "--out", tmp_path / "o", "--no-progress")
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    # an example failing its own schema
    failing = tmp_path / "f.jsonl"
    failing.write_text(json.dumps({"text": "x", "expected": {"device": "oven", "on": True}}) + "\n")
    code, out, err = run_cli("optimize", "--model", setup["a"], "--task-data", failing, "--schema",
                             setup["dir"] / "schema.json", "--cache", tmp_path / "c", "--out", tmp_path / "o2")
    assert code == 2 and "fails the task's own schema" in err
