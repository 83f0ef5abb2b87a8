"""``edgellm optimize`` on llama.cpp end to end, on a tiny Llama: every candidate exported to its exact GGUF
block type and verified on llama.cpp inside the search, scored there, its speed measured by the subprocess
bench (``edgellm.measure`` in a fresh process, peak RSS), and the chosen GGUF copied out and verified again.

This is the path that produced the headline pick; the protocol is shrunk (64-token windows, 8 new tokens,
2 speed runs) so it runs in seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import llama_cpp  # noqa: F401  (the llamacpp extra: a missing one fails here, it is never skipped)
import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _cpu_seconds() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


@pytest.fixture(scope="module")
def llamacpp_run(tiny_llama, text_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("opt-llamacpp")
    t0, c0 = time.monotonic(), _cpu_seconds()
    code, out, err = run_cli(
        "optimize", "--model", tiny_llama, "--eval-text", text_file, "--runtimes", "llama.cpp",
        "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn-g32.yaml",
        "--ctx", "64", "--screen-tokens", "128", "--full-tokens", "256",
        "--speed-runs", "2", "--prompt-len", "16", "--new-tokens", "8", "--max-quality-loss", "5%",
        "--cache", base / "cache", "--out", base / "out", "--no-progress")
    return {"code": code, "out": out, "err": err, "seconds": time.monotonic() - t0, "cpu": _cpu_seconds() - c0,
            "base": base}


def test_llamacpp_rows_are_exported_verified_and_measured(llamacpp_run):
    run = llamacpp_run
    assert run["code"] == 0, run["err"]
    # CPU seconds (this process and its bench subprocesses): the work done, whatever else shares the machine
    assert run["cpu"] < 60, f"{run['cpu']:.0f} CPU s ({run['seconds']:.0f} s wall)"
    r = json.loads((run["base"] / "out" / "results.json").read_text())
    rows = {x["recipe"]: x for x in r["rows"]}
    assert set(rows) == {"fp32", "w8-rtn-g32"} and all(x["runtime"] == "llama.cpp" for x in rows.values())
    assert rows["fp32"]["kind"] == "f16" and rows["w8-rtn-g32"]["kind"] == "q8_0"
    for row in rows.values():
        assert row["status"] == "measured" and row["measured"], (row["status"], row["reason"])
        # scored on llama.cpp over the full protocol, through the GGUF exported and verified inside the search
        assert row["quality"]["protocol"] == "full" and row["artifact"].endswith(".gguf")
        gguf = row["build"]["gguf"]
        assert Path(gguf["path"]).is_file() and gguf["report"]["verification"]["passed"]
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0
        # the subprocess bench: a fresh process's peak RSS is measured (in-process speed has none)
        hc = row["host_check"]
        assert hc["decode_measured"] == row["decode_tok_s"] and hc["ram_measured"] and hc["ram_measured"] > 0
    assert rows["w8-rtn-g32"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert abs(rows["w8-rtn-g32"]["quality_loss"]) < 0.05
    chosen = r["chosen"]
    assert chosen is not None and chosen["runtime"] == "llama.cpp" and chosen["measured"]
    exported = Path(r["export"]["path"])
    assert exported.suffix == ".gguf" and exported.is_file() and exported.parent == run["base"] / "out" / "model"
    assert r["export"]["runtime"] == "llama.cpp" and r["export"]["verification"]["passed"]
    with exported.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert "CHOSEN" in run["out"]
