"""The LiteRT converter process: kept between conversions of one edgellm process, replaced after a failure, a
kill or a long job, never shared with a forked child. The jobs convert a one-layer program (a second each)."""

from __future__ import annotations

import json
import os
import signal

import ai_edge_litert.interpreter  # noqa: F401  (the litert extra: a missing one fails here, never skips)
import numpy as np
import pytest
import torch

from edgellm.errors import EdgeLLMError
from edgellm.exporters import litert_env


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4).eval()
    path = tmp_path_factory.mktemp("prog") / "linear.pt2"
    torch.export.save(torch.export.export(lin, (torch.zeros(2, 8),)), path)
    return lin, path


def job(tmp_path, program_path, name="j") -> tuple:
    out, report = tmp_path / f"{name}.tflite", tmp_path / f"{name}.report.json"
    spec = {"signatures": [{"name": "main", "program": str(program_path)}], "out": str(out), "variant": "fp32",
            "group_size": 32, "quantize_embeddings": False, "report": str(report)}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    return tmp_path / f"{name}.json", out, report


def converted(lin, out) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(out)).get_signature_runner("main")
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    got = next(iter(runner(**{next(iter(runner.get_input_details())): x}).values()))
    return np.allclose(got, lin(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def pid() -> int | None:
    return litert_env._converter.proc.pid if litert_env._converter is not None else None


def test_one_process_serves_the_conversions_in_turn(program, tmp_path):
    lin, path = program
    first, out1, rep1 = job(tmp_path, path, "a")
    litert_env.run_converter(first)
    kept = pid()
    second, out2, _ = job(tmp_path, path, "b")
    litert_env.run_converter(second)
    assert kept is not None and pid() == kept
    assert converted(lin, out1) and converted(lin, out2)
    assert json.loads(rep1.read_text())["converter_peak_rss_mb"] > 0


def test_a_failed_job_is_one_line_and_the_next_gets_a_fresh_process(program, tmp_path):
    lin, path = program
    bad, out, _ = job(tmp_path, tmp_path / "missing.pt2", "bad")
    with pytest.raises(EdgeLLMError, match=r"LiteRT conversion failed: .*missing\.pt2") as e:
        litert_env.run_converter(bad)
    assert "\n" not in str(e.value) and pid() is None and not out.exists()
    good, out, _ = job(tmp_path, path, "good")
    litert_env.run_converter(good)
    assert converted(lin, out)


def test_a_killed_converter_is_replaced(program, tmp_path):
    lin, path = program
    litert_env.run_converter(job(tmp_path, path, "a")[0])
    dead = pid()
    os.kill(dead, signal.SIGKILL)
    litert_env._converter.proc.wait()
    f, out, _ = job(tmp_path, path, "b")
    litert_env.run_converter(f)
    assert pid() not in (None, dead) and converted(lin, out)


def test_a_forked_copy_is_never_used_and_a_long_job_closes_it(program, tmp_path, monkeypatch):
    lin, path = program
    litert_env.run_converter(job(tmp_path, path, "a")[0])
    conv = litert_env._converter
    conv.owner = -1                                        # as a forked child sees its parent's converter
    assert not conv.usable()
    conv.close()                                           # a no-op in the child: the parent's process lives on
    assert conv.proc.poll() is None
    conv.owner = os.getpid()
    monkeypatch.setattr(litert_env, "KEEP_SECONDS", 0.0)
    f, out, _ = job(tmp_path, path, "b")
    litert_env.run_converter(f)
    assert conv.proc.poll() is not None and pid() is None  # the job took longer than KEEP_SECONDS: closed
    assert converted(lin, out)
