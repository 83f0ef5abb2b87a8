"""fileio: atomic outputs leave nothing half-written, the output guard, manifests catch changed files, sizes add up."""

from __future__ import annotations

import json
import os

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.fileio import (atomic_dir, atomic_file, check_output, check_writable_target, dir_bytes, sha256_file,
                            verify_manifest, write_json, write_manifest, written_by_edgellm)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_dir_appears_only_when_the_body_succeeds(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"x" * 10)
        assert not out.exists()                      # nothing at the target while the body runs
    assert (out / "a.bin").read_bytes() == b"x" * 10
    assert leftovers(tmp_path) == []


def test_atomic_dir_leaves_nothing_when_the_body_raises(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_folder_when_a_forced_rewrite_fails(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    write_manifest(out)                               # an edgellm output: --force may replace it
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, force=True) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "old.bin"] and leftovers(tmp_path) == []


def test_atomic_dir_force_semantics(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(EdgeLLMError, match="edgellm did not write it"), atomic_dir(out, force=True):
        pass                                          # not edgellm's: --force does not replace it
    write_manifest(out)
    with pytest.raises(EdgeLLMError, match="already exists") as e, atomic_dir(out):
        pass
    assert "--force" in e.value.hint
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert [p.name for p in out.iterdir()] == ["new.bin"]        # replaced, not merged
    assert leftovers(tmp_path) == []


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(ValueError), atomic_file(path) as f:
        f.write("half of the new")
        raise ValueError
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    with atomic_file(path) as f:                      # atomic_file overwrites by default
        f.write("new")
    assert path.read_text() == "new"
    with pytest.raises(EdgeLLMError, match="already exists"), atomic_file(path, force=False) as f:
        f.write("x")
    with atomic_file(tmp_path / "b.bin", mode="wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_check_writable_target_creates_the_parent_and_refuses_a_file_as_parent(tmp_path):
    assert check_writable_target(tmp_path / "a" / "b" / "out.gguf") == tmp_path / "a" / "b" / "out.gguf"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeLLMError, match="cannot create output folder"):
        check_writable_target(tmp_path / "file" / "sub" / "out")


def test_write_json_handles_tensors_paths_and_dataclasses(tmp_path):
    import dataclasses
    from pathlib import Path

    import torch

    @dataclasses.dataclass
    class R:
        x: int

    write_json(tmp_path / "r.json", {"t": torch.tensor(2.5), "p": Path("a/b"), "r": R(3)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"t": 2.5, "p": "a/b", "r": {"x": 3}}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(tmp_path / "bad.json", {"s": {1, 2}})
    assert not (tmp_path / "bad.json").exists() and leftovers(tmp_path) == []


def make_folder(tmp_path):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "w.safetensors").write_bytes(os.urandom(1000))
    (folder / "sub" / "tok.json").write_text('{"a": 1}')
    return folder


def test_manifest_lists_every_file_and_verifies(tmp_path):
    folder = make_folder(tmp_path)
    m = write_manifest(folder)
    assert set(m["files"]) == {"w.safetensors", os.path.join("sub", "tok.json")}
    assert m["files"]["w.safetensors"] == {"bytes": 1000, "sha256": sha256_file(folder / "w.safetensors")}
    assert json.loads((folder / "manifest.json").read_text()) == m
    verify_manifest(folder)                           # unchanged: passes


def test_verify_manifest_catches_a_changed_file_of_the_same_size(tmp_path):
    folder = make_folder(tmp_path)
    write_manifest(folder)
    data = bytearray((folder / "w.safetensors").read_bytes())
    data[500] ^= 0xFF
    (folder / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(EdgeLLMError, match="does not match its sha256"):
        verify_manifest(folder)


def test_verify_manifest_catches_a_missing_or_resized_file(tmp_path):
    folder = make_folder(tmp_path)
    write_manifest(folder)
    (folder / "sub" / "tok.json").write_text('{"a": 12}')
    with pytest.raises(EdgeLLMError, match="does not match"):
        verify_manifest(folder)
    (folder / "sub" / "tok.json").unlink()
    with pytest.raises(EdgeLLMError, match="missing"):
        verify_manifest(folder)


def test_verify_manifest_without_a_manifest_passes(tmp_path):
    verify_manifest(make_folder(tmp_path))


def test_dir_bytes_of_a_file_and_a_folder(tmp_path):
    folder = make_folder(tmp_path)
    assert dir_bytes(folder / "w.safetensors") == 1000
    assert dir_bytes(folder) == 1000 + len('{"a": 1}')
    write_manifest(folder)
    assert dir_bytes(folder) == 1000 + len('{"a": 1}') + (folder / "manifest.json").stat().st_size


def test_check_output_refuses_inputs_and_protected_folders(tmp_path, monkeypatch):
    model = make_folder(tmp_path)
    write_manifest(model)                             # even an edgellm folder is protected when it is the input
    for out, what in [(model, "is the input"), (model / "sub", "lies inside the input"),
                      (tmp_path, "contains the input")]:
        with pytest.raises(EdgeLLMError, match=what):
            check_output(out, force=True, inputs=(str(model), "hub/id-not-on-disk"))
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(EdgeLLMError, match="is the input"):
        check_output(link, force=True, inputs=(model,))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(EdgeLLMError, match="the home folder"):
        check_output(home, force=True)
    with pytest.raises(EdgeLLMError, match="holding the home folder"):
        check_output(tmp_path, force=True)
    with pytest.raises(EdgeLLMError, match="filesystem root"):
        check_output("/", force=True)
    repo = home / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(EdgeLLMError, match="repository root"):
        check_output(repo, force=True)
    assert check_output(repo / "out", force=True) == repo / "out"      # a new folder inside a repository is fine
    assert check_output(tmp_path / "new" / "m", inputs=(model,)) == tmp_path / "new" / "m"


def test_written_by_edgellm_recognises_only_its_own_outputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert written_by_edgellm(empty)
    user = make_folder(tmp_path)
    assert not written_by_edgellm(user)
    write_manifest(user)
    assert written_by_edgellm(user)
    (user / "manifest.json").write_text('{"format": "someone-else/1"}')
    assert not written_by_edgellm(user)
    sidecar = tmp_path / "m.onnx"
    sidecar.mkdir()
    (sidecar / "model.onnx").write_bytes(b"x")
    (sidecar / "edgellm.json").write_text('{"format": "edgellm-onnx/1"}')
    assert written_by_edgellm(sidecar)
    ours, theirs = tmp_path / "r.json", tmp_path / "notes.json"
    ours.write_text('{"format": "edgellm-bench/2"}')
    theirs.write_text('{"a": 1}')
    assert written_by_edgellm(ours) and not written_by_edgellm(theirs)
    (tmp_path / "notes.txt").write_text("mine")
    assert not written_by_edgellm(tmp_path / "notes.txt") and not written_by_edgellm(tmp_path / "absent")
    with pytest.raises(EdgeLLMError, match="edgellm did not write it"):
        check_output(tmp_path / "notes.txt", force=True)
    assert check_output(tmp_path / "notes.txt", force=True, own=True) == tmp_path / "notes.txt"


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp/mkdtemp create private files; a finished output is readable like any file the user writes."""
    import os
    import stat

    from edgellm.fileio import atomic_dir, write_json

    mask = os.umask(0o022)
    try:
        f = write_json(tmp_path / "r.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
