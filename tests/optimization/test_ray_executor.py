"""``optimize --executor ray`` on a private 2-CPU Ray instance (one per module): the same rows and pick as the local
search, a worker killed mid-build retried, and the bad-input lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.optimization.ray_exec import BENCH, check_cluster, start_local
from edgellm.optimization.tasks import KILL_HOOK_ENV

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ("fp32", "w8-rtn-g32", "magnitude-2of4")


def _args(model, text, cache, out, *extra):
    return ["optimize", "--model", model, "--eval-text", text, "--ctx", "64", "--screen-tokens", "128",
            "--full-tokens", "256", "--speed-runs", "2", "--speed-in-process", "--prompt-len", "16", "--new-tokens", "8",
            "--runtimes", "torch", "llama.cpp", "--recipes", *[ROOT / f"recipes/{r}.yaml" for r in RECIPES],
            "--max-quality-loss", "3%", "--objective", "size", "--cache", cache, "--out", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One private Ray instance (2 CPUs, the bench resource, 127.0.0.1) for the module; workers see the kill hook."""
    hook = tmp_path_factory.mktemp("kill")
    mp = pytest.MonkeyPatch()
    mp.setenv(KILL_HOOK_ENV, str(hook))      # workers inherit the environment at ray.init
    ray = start_local(num_cpus=2)
    yield {"ray": ray, "hook": hook}
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def runs(ray_local, tiny_llama, text_file, tmp_path_factory):
    """The same search three times, each with its own cache: local, Ray, and Ray with one worker killed mid-build."""
    base = tmp_path_factory.mktemp("ray-opt")
    out = {}
    for name, extra in (("local", ()), ("ray", ("--executor", "ray")), ("killed", ("--executor", "ray"))):
        if name == "killed":
            (ray_local["hook"] / "kill").write_text("")
        code, stdout, err = run_cli(*_args(tiny_llama, text_file, base / f"cache-{name}", base / f"out-{name}", *extra))
        assert code == 0, (name, err)
        out[name] = json.loads((base / f"out-{name}" / "results.json").read_text())
    out["hook"], out["base"] = ray_local["hook"], base
    return out


def _rows(result) -> dict:
    return {r["label"]: r for r in result["rows"]}


def test_ray_rows_and_pick_equal_the_local_search(runs):
    local, ray = _rows(runs["local"]), _rows(runs["ray"])
    assert set(local) == set(ray) and len(local) >= 5
    for label, a in local.items():
        b = ray[label]
        assert (a["status"], a["reason"]) == (b["status"], b["reason"]), label
        assert a["quality_loss"] == b["quality_loss"], label          # exactly equal, not approximately
        assert {k: v for k, v in a["quality"].items()} == b["quality"], label
        # the same weights; a built folder's config.json records the build's seconds, so its length may differ
        assert abs(a["size_bytes"] - b["size_bytes"]) <= 32, label
    assert runs["ray"]["chosen"]["label"] == runs["local"]["chosen"]["label"]
    assert any(r["status"] == "measured" for r in ray.values())
    # the work ran as tasks: builds/screens, full protocols on both runtimes, speed on the bench node
    ex = runs["ray"]["executor"]
    assert ex["executor"] == "ray" and ex["cluster"]["nodes"] == 1
    kinds = {t["kind"] for t in ex["tasks"]}
    assert kinds == {"screen", "full", "speed"}
    assert any("llama.cpp" in t["task"] for t in ex["tasks"] if t["kind"] == "full")
    speeds = [t for t in ex["tasks"] if t["kind"] == "speed"]
    others = [t for t in ex["tasks"] if t["kind"] != "speed"]
    assert min(s["start"] for s in speeds) >= max(t["end"] for t in others)   # measured alone, after the rest
    for a, b in zip(speeds, speeds[1:]):
        assert b["start"] >= a["end"]                                             # one at a time
    work = sorted(others, key=lambda t: t["start"])          # --threads 2 on 2 CPUs: one task at a time
    for a, b in zip(work, work[1:]):
        assert b["start"] >= a["end"] - 0.05, (a, b)
    assert runs["local"]["executor"] == {"executor": "local"}
    # the report's timeline: one lane per worker process, a bar per task
    assert "timeline.svg" in runs["ray"]["plots"] and "timeline.svg" not in runs["local"]["plots"]
    assert (runs["base"] / "out-ray" / "timeline.svg").is_file()
    assert "Task timeline" in (runs["base"] / "out-ray" / "report.html").read_text()


def test_a_worker_killed_mid_build_is_retried(runs):
    assert (runs["hook"] / "killed").exists() and not (runs["hook"] / "kill").exists()
    ex = runs["killed"]["executor"]
    # the hook killed the worker inside the first attempt of exactly one build: the driver saw that attempt die in
    # its ObjectRef and resubmitted it once; every other task ran once
    retried = [t for t in ex["tasks"] if t["attempts"] != 1]
    assert len(retried) == 1, retried
    (t,) = retried
    assert t["kind"] == "screen" and t["attempts"] == 2
    assert [d["attempt"] for d in t["died"]] == [1] and "WorkerCrashedError" in t["died"][0]["error"]
    assert 0 < t["died"][0]["seen_at"] <= t["start"]          # seen dead before the second attempt started
    assert ex["retries"] == 1 and ex["failed_tasks"] == []
    assert runs["ray"]["executor"]["retries"] == 0 and all(x["attempts"] == 1 for x in runs["ray"]["executor"]["tasks"])
    # the killed build's full protocols waited on it and ran once, after its second attempt
    name = t["task"].split()[1]
    fulls = [x for x in ex["tasks"] if x["kind"] == "full" and x["task"].split()[1] == name]
    assert fulls and all(x["attempts"] == 1 and x["start"] >= t["end"] - 0.05 for x in fulls)
    assert len(ex["tasks"]) == len(runs["ray"]["executor"]["tasks"])
    killed, ray = _rows(runs["killed"]), _rows(runs["ray"])
    assert {k: (r["status"], r["quality_loss"]) for k, r in killed.items()} == \
        {k: (r["status"], r["quality_loss"]) for k, r in ray.items()}
    assert runs["killed"]["chosen"]["label"] == runs["ray"]["chosen"]["label"]
    assert (runs["base"] / "out-killed" / "timeline.svg").is_file()


def _one_line_exit_2(code, err, *words):
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) <= 2 and "Traceback" not in err, err        # the message, and at most its hint
    for w in words:
        assert w in err, err


def test_bad_input_lines(ray_local, tiny_llama, text_file, tmp_path, monkeypatch):
    args = _args(tiny_llama, text_file, tmp_path / "c", tmp_path / "o")
    _one_line_exit_2(*run_cli(*args, "--executor", "ray", "--ray-address", "127.0.0.1:1")[::2], "cannot reach")
    _one_line_exit_2(*run_cli(*args, "--executor", "ray", "--ray-address", "nonsense")[::2], "HOST:PORT")
    _one_line_exit_2(*run_cli(*args, "--ray-address", "127.0.0.1:6379")[::2], "--executor ray")
    monkeypatch.setitem(sys.modules, "ray", None)              # Ray not installed
    _one_line_exit_2(*run_cli(*args, "--executor", "ray")[::2], "edgellm[ray]")
    assert not (tmp_path / "o").exists()


def test_cluster_checks():
    def node(i, bench=False, cpus=2.0):
        return {"NodeID": i, "Alive": True, "Resources": {"CPU": cpus, **({BENCH: 1.0} if bench else {})}}

    assert check_cluster([node("a", True), node("b")], "a", "/shared/cache")["nodes"] == 2
    with pytest.raises(EdgeLLMError, match="offers the 'edgellm_bench'"):
        check_cluster([node("a")], "a", None)
    with pytest.raises(EdgeLLMError, match="this node alone"):
        check_cluster([node("a"), node("b", True)], "a", "/shared")
    with pytest.raises(EdgeLLMError, match="shared result cache"):
        check_cluster([node("a", True), node("b")], "a", None)
