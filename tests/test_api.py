"""The public API keeps its shape: every name in ``edgellm._API`` is one object, whatever was imported.

Python binds ``edgellm.<sub>`` to a subpackage when the subpackage is imported, so a public function
that shared its name with a subpackage would turn into a module after the first import of that
subpackage. The capability packages are therefore named as nouns (``quantization``, ``pruning``,
``exporters``, ``serving``, ...) and the public functions as verbs.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import edgellm


def _subpackages() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(edgellm.__path__) if m.ispkg or m.name != "__main__"]


def test_no_public_name_shares_a_name_with_a_subpackage():
    clash = sorted(set(edgellm._API) & set(_subpackages()))
    assert not clash, f"public API names that are also edgellm submodules: {clash}"


def test_every_public_name_is_the_same_object_after_its_subpackage_is_imported():
    # a fresh interpreter, so that no earlier test has imported anything yet
    code = (
        "import importlib, pkgutil, edgellm\n"
        "first = {n: getattr(edgellm, n) for n in edgellm._API}\n"
        "again = {n: getattr(edgellm, n) for n in edgellm._API}\n"
        "for m in pkgutil.walk_packages(edgellm.__path__, 'edgellm.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    try: importlib.import_module(m.name)\n"
        "    except ImportError: pass\n"
        "after = {n: getattr(edgellm, n) for n in edgellm._API}\n"
        "bad = [n for n in edgellm._API if not (first[n] is again[n] is after[n])]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_public_callables_stay_callable():
    for name, target in edgellm._API.items():
        module, attr = target.split(":")
        obj = getattr(importlib.import_module(module), attr)
        assert getattr(edgellm, name) is obj
        assert not isinstance(obj, type(edgellm)), f"edgellm.{name} is a module"
