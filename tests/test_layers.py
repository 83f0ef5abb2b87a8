"""The import-linter contracts in pyproject.toml hold: the layer order, and no import cycles (function-level imports count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_are_kept():
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: pip install -e '.[dev]' (import-linter)")
    r = subprocess.run([str(LINT), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "2 kept" in r.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The same checker fails on a contract the code does not keep (so the test above can fail)."""
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: pip install -e '.[dev]' (import-linter)")
    cfg = tmp_path / "contracts.toml"
    cfg.write_text('[tool.importlinter]\nroot_package = "edgellm"\n\n[[tool.importlinter.contracts]]\n'
                   'name = "upside down"\ntype = "layers"\nlayers = ["edgellm.errors", "edgellm.commands"]\n')
    r = subprocess.run([str(LINT), "--no-cache", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "BROKEN" in r.stdout
