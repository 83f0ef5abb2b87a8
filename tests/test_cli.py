"""The CLI is quiet: third-party noise hidden by default and shown with --debug; edgellm's own warnings shown.

The commands run in a subprocess, as a user runs them, so torch, torchao and onnxruntime are
imported fresh and their warnings, log lines and C-level prints reach the real stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# what a first `edgellm export --format onnx --variant int8` printed before the CLI hid it
NOISE = ("Failed to load", "_C_mxfp8", "torch/utils/_pytree.py", "register_constant", "Please consider to run pre-processing")


def edgellm(*argv, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_LOGS", "TORCH_CPP_LOG_LEVEL", "TRANSFORMERS_VERBOSITY")}
    return subprocess.run([sys.executable, "-m", "edgellm.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def python(code: str) -> tuple[int, str]:
    """Run *code* in a fresh interpreter; its stderr decoded as is (text mode would turn \\r into \\n)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    return r.returncode, r.stderr.decode()


@pytest.fixture(scope="module")
def onnx_export_runs(tiny_llama, tmp_path_factory):
    """The same int8 ONNX export (it imports torchao and onnxruntime's quantizer), quiet and with --debug."""
    import onnxruntime  # noqa: F401
    import torchao  # noqa: F401
    out = tmp_path_factory.mktemp("cli")
    quiet = edgellm("export", tiny_llama, "--format", "onnx", "--variant", "int8", "--out", out / "q.onnx")
    debug = edgellm("--debug", "export", tiny_llama, "--format", "onnx", "--variant", "int8", "--out", out / "d.onnx")
    return quiet, debug


def test_third_party_noise_is_hidden_by_default(onnx_export_runs):
    quiet, _ = onnx_export_runs
    assert quiet.returncode == 0, quiet.stderr
    assert "verified" in quiet.stdout and "yes" in quiet.stdout
    assert not [n for n in NOISE if n in quiet.stderr], quiet.stderr


def test_debug_shows_the_third_party_noise(onnx_export_runs):
    _, debug = onnx_export_runs
    assert debug.returncode == 0, debug.stderr
    assert "Failed to load" in debug.stderr              # torchao's logger
    assert "register_constant" in debug.stderr           # torch's own log handler
    assert "Please consider to run pre-processing" in debug.stderr   # onnxruntime on the root logger


def test_edgellm_warnings_still_show(tiny_llama, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the light in the living room is on and the music is loud.\n" * 12)
    r = edgellm("quantize", tiny_llama, "--method", "gptq", "--bits", "4", "--group-size", "32",
                "--calib-data", short, "--calib-samples", "64", "--calib-seq-len", "32", "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert "UserWarning" in r.stderr and f"calibration file '{short}' holds" in r.stderr, r.stderr


def test_c_level_stderr_lines_are_filtered_and_the_rest_passes():
    """fd-level writes, as ExecuTorch's and onnxruntime's C++ logging make, bypass Python's sys.stderr."""
    code, err = python("""
        import os, sys, logging, warnings
        from edgellm.noise import quiet_third_party
        with quiet_third_party():
            os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n")
            os.write(2, b"2026-01-01 10:00:00.123456 [W:onnxruntime:, graph.cc:4285 CleanUnusedInitializers] x\\n")
            os.write(2, b"[method.cpp:123] Error: program failed\\n")
            os.write(2, b"\\rprogress 50%")
            os.write(2, b"\\rprogress 100%\\n")
            print("plain stderr line", file=sys.stderr)
            logging.getLogger("torchao").warning("torchao chatter")
            logging.getLogger("edgellm.test").warning("our log line")
            logging.warning("root warning from edgellm-free code")
            warnings.warn("a library's FutureWarning", FutureWarning)
        os.write(2, b"[cpuinfo_utils.cpp:72] after the block\\n")
    """)
    assert code == 0, err
    assert "cpuinfo_utils.cpp:71" not in err and "onnxruntime" not in err
    assert "[method.cpp:123] Error: program failed" in err            # errors pass
    assert "\rprogress 50%\rprogress 100%\n" in err                 # progress bars pass unchanged
    assert "plain stderr line" in err and "WARNING:edgellm.test:our log line" in err
    assert "torchao chatter" not in err and "root warning" not in err and "FutureWarning" not in err
    assert "[cpuinfo_utils.cpp:72] after the block" in err            # fd 2 restored when the block ends


def test_quiet_block_restores_global_state():
    import logging
    import warnings

    from edgellm.noise import quiet_third_party

    filters, level = list(warnings.filters), logging.getLogger("torchao").level
    handlers, env = list(logging.getLogger().handlers), os.environ.get("TORCH_LOGS")
    with quiet_third_party():
        assert logging.getLogger("torchao").level == logging.ERROR
        assert len(warnings.filters) > len(filters)
    assert list(warnings.filters) == filters and logging.getLogger("torchao").level == level
    assert logging.getLogger().handlers == handlers and os.environ.get("TORCH_LOGS") == env
