"""The output guard (fileio.check_output) on every command that writes: --force never destroys what it should not.

Each writing command is pointed at an --out that is its input, lies inside it, holds it, is a
non-empty folder edgellm did not write, is the home folder or a repository root, all with --force:
exit 2, one line, and the target tree is byte-for-byte what it was. An output edgellm wrote IS
replaced with --force.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

FLAGS = ["--steps", 1, "--batch-size", 2, "--seq-len", 32, "--val-tokens", 64, "--quiet"]


def tree_hash(root: Path) -> str:
    """Every path under *root* (folders too) with the sha256 of each file's bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama, tiny_bert, text_file, tsv_file):
    """A folder holding copies of the inputs (so 'contains the input' has a parent to hash) and a data folder."""
    root = tmp_path_factory.mktemp("guard")
    shutil.copytree(tiny_llama, root / "models" / "llama")
    shutil.copytree(tiny_bert, root / "models" / "bert")
    return {"root": root, "llama": root / "models" / "llama", "bert": root / "models" / "bert",
            "text": text_file, "tsv": tsv_file}


# command -> (input key, argv for (input, out))
COMMANDS = {
    "quantize": ("llama", lambda w, i, o: ["quantize", i, "--bits", "8", "--out", o]),
    "prune": ("llama", lambda w, i, o: ["prune", i, "--method", "magnitude", "--sparsity", "0.5", "--out", o]),
    "distill": ("llama", lambda w, i, o: ["distill", "--teacher", i, "--student-from", i, "--keep-layers", 2,
                                          "--data", w["text"], "--out", o, *FLAGS]),
    "finetune": ("bert", lambda w, i, o: ["finetune", i, "--task", "classification", "--data", w["tsv"], "--out", o,
                                          "--steps", 1, "--batch-size", 4, "--val-rows", 8, "--quiet"]),
    "export": ("llama", lambda w, i, o: ["export", i, "--format", "gguf", "--no-verify",
                                         "--out", o if o.suffix == ".gguf" or o.exists() else o.with_suffix(".gguf")]),
    "rotate": ("llama", lambda w, i, o: ["rotate", i, "--out", o]),
    "optimize": ("llama", lambda w, i, o: ["optimize", "--model", i, "--eval-text", w["text"], "--no-progress",
                                           "--cache", w["root"] / "cache", "--out", o]),
}


def targets(w, inp: Path, tmp_path: Path, monkeypatch):
    """(name, --out, the tree that must stay unchanged, the message)."""
    foreign = tmp_path / "photos"
    (foreign / "2024").mkdir(parents=True)
    (foreign / "2024" / "a.jpg").write_bytes(b"\xff\xd8 not edgellm's")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "main.py").write_text("print('hi')\n")
    return [("is the input", inp, inp, "is the input"),
            ("inside the input", inp / "sub", inp, "lies inside the input"),
            ("contains the input", inp.parent, inp.parent, "contains the input"),
            ("foreign folder", foreign, foreign, "edgellm did not write it"),
            ("home", home, home, "home folder"),
            ("repository root", repo, repo, "repository root")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_force_never_destroys_what_edgellm_did_not_write(command, world, tmp_path, monkeypatch):
    key, argv = COMMANDS[command]
    inp = world[key]
    for name, out, keep, match in targets(world, inp, tmp_path, monkeypatch):
        before = tree_hash(keep)
        code, _, err = run_cli(*argv(world, inp, out), "--force")
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1 and match in lines[0], (name, err)
        assert tree_hash(keep) == before, name
        assert not (inp / "sub").exists()


def test_export_refuses_a_foreign_file_even_with_force(world, tmp_path):
    target = tmp_path / "notes.gguf"
    target.write_bytes(b"GGUF but not written by edgellm")
    code, _, err = run_cli("export", world["llama"], "--format", "gguf", "--no-verify", "--out", target, "--force")
    assert code == 2 and "edgellm did not write it" in err
    assert target.read_bytes() == b"GGUF but not written by edgellm"


def test_an_edgellm_output_is_replaced_with_force(world, tmp_path):
    out = tmp_path / "q"
    assert run_cli("quantize", world["llama"], "--bits", "8", "--out", out)[0] == 0
    code, _, err = run_cli("quantize", world["llama"], "--bits", "8", "--out", out)
    assert code == 2 and "already exists" in err                       # without --force: refused
    code, _, err = run_cli("quantize", world["llama"], "--bits", "4", "--group-size", "32", "--out", out, "--force")
    assert code == 0, err
    layers = json.loads((out / "config.json").read_text())["edgellm"]["layers"]
    assert {spec["bits"] for spec in layers.values()} == {4}
    gguf = tmp_path / "m.gguf"
    for gtype in ("f32", "q8_0"):                                      # the second run replaces edgellm's own GGUF
        code, _, err = run_cli("export", world["llama"], "--format", "gguf", "--gguf-type", gtype, "--no-verify",
                               "--out", gguf, "--force")
        assert code == 0, err
    from gguf import GGUFReader

    assert int(GGUFReader(gguf).fields["general.file_type"].parts[-1][0]) == 7          # LLAMA_FTYPE_MOSTLY_Q8_0
    assert "edgellm.export" in GGUFReader(gguf).fields


def test_bench_results_replace_only_edgellm_results(tmp_path):
    from bench._common import write_result

    path = tmp_path / "x.json"
    write_result(path, {"title": "t", "rows": []}, machine={"cpu_model": "test"}, render=False)
    write_result(path, {"title": "t2", "rows": []}, machine={"cpu_model": "test"}, render=False)
    assert json.loads(path.read_text())["title"] == "t2"
    mine = tmp_path / "mine.json"
    mine.write_text('{"notes": "my own file"}')
    from edgellm.errors import EdgeLLMError

    with pytest.raises(EdgeLLMError, match="edgellm did not write it"):
        write_result(mine, {"title": "t"}, machine={}, render=False)
    assert mine.read_text() == '{"notes": "my own file"}'
