"""The exported-artifact folder format (edgellm.artifacts): sidecar + manifest written and read back, and refused when bad."""

import json

import pytest

from edgellm.artifacts import (EXECUTORCH, FORMATS, MANIFEST, ONNX, SIDECAR, ArtifactFormat, read_artifact,
                               read_sidecar, require, resolve_artifact, write_artifact)
from edgellm.errors import EdgeLLMError

INFO = {"task": "causal-lm", "inputs": ["input_ids"], "outputs": ["logits"], "vocab_size": 320, "weight_bytes": 1234,
        "max_positions": 64, "source": "tiny"}


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "m.onnx"
    folder.mkdir()
    (folder / ONNX.main).write_bytes(b"graph bytes")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_round_trip_with_the_check_result_sealed_in(artifact):
    seen = []

    def check(folder):
        seen.append(read_sidecar(folder, ONNX))            # the check sees the sidecar a runtime will read
        return {"passed": True, "kl": 1e-7}

    written = write_artifact(artifact, ONNX, dict(INFO), check)
    assert seen and seen[0]["format"] == "edgellm-onnx/1" and "verification" not in seen[0]
    back = read_artifact(artifact, ONNX)
    assert back == written == {"format": ONNX.tag, **INFO, "verification": {"passed": True, "kl": 1e-7}}
    manifest = json.loads((artifact / MANIFEST).read_text())
    assert set(manifest["files"]) == {ONNX.main, "tokenizer.json", SIDECAR}
    assert not list(artifact.glob(".*tmp*"))                # every file was renamed into place


def test_a_file_changed_after_sealing_is_caught_by_the_manifest(artifact):
    write_artifact(artifact, ONNX, dict(INFO))
    (artifact / ONNX.main).write_bytes(b"graph bytez")     # same size, other content
    with pytest.raises(EdgeLLMError, match="sha256"):
        read_artifact(artifact, ONNX)
    (artifact / ONNX.main).unlink()
    with pytest.raises(EdgeLLMError, match="missing"):
        read_artifact(artifact, ONNX)


def test_an_edited_sidecar_or_a_corrupt_manifest_is_refused(artifact):
    write_artifact(artifact, ONNX, dict(INFO))
    (artifact / SIDECAR).write_text(json.dumps({**INFO, "format": ONNX.tag, "weight_bytes": 1}))
    with pytest.raises(EdgeLLMError, match="sha256"):
        read_artifact(artifact, ONNX)
    (artifact / MANIFEST).write_text("{not json")
    with pytest.raises(EdgeLLMError, match="manifest.json' is corrupt"):
        read_artifact(artifact, ONNX)


def test_missing_and_corrupt_sidecars_are_refused(artifact):
    with pytest.raises(EdgeLLMError, match="has no edgellm.json.*ONNX export") as e:
        read_artifact(artifact, ONNX)
    assert "--format onnx" in e.value.hint
    (artifact / SIDECAR).write_text('{"format": "edgellm-onnx/1", "task": ')
    with pytest.raises(EdgeLLMError, match="not valid JSON"):
        read_artifact(artifact, ONNX)
    (artifact / SIDECAR).write_text("[1, 2]")
    with pytest.raises(EdgeLLMError, match="not a JSON object"):
        read_artifact(artifact, ONNX)


@pytest.mark.parametrize("change, match", [
    ({"format": "edgellm-executorch/1"}, "not an edgellm ONNX export"),
    ({"format": None}, "not an edgellm ONNX export"),
    ({"format": "edgellm-onnx/2"}, "cannot read"),
    ({"format": "edgellm-onnx/x"}, "cannot read"),
    ({"vocab_size": None}, "lacks vocab_size"),
])
def test_foreign_newer_or_incomplete_sidecars_are_refused(artifact, change, match):
    info = {"format": ONNX.tag, **INFO, **change}
    (artifact / SIDECAR).write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    with pytest.raises(EdgeLLMError, match=match):
        read_artifact(artifact, ONNX)


def test_writing_an_incomplete_sidecar_is_refused_before_anything_is_written(artifact):
    with pytest.raises(EdgeLLMError, match="lacks max_positions"):
        write_artifact(artifact, EXECUTORCH, {k: v for k, v in INFO.items() if k != "max_positions"})
    assert not (artifact / SIDECAR).exists() and not (artifact / MANIFEST).exists()


def test_a_failing_check_leaves_no_manifest(artifact):
    def check(folder):
        raise EdgeLLMError("verification failed", "no")

    with pytest.raises(EdgeLLMError, match="verification failed"):
        write_artifact(artifact, ONNX, dict(INFO), check)
    assert not (artifact / MANIFEST).exists()


def test_resolve_artifact(artifact, tmp_path):
    write_artifact(artifact, ONNX, dict(INFO))
    assert resolve_artifact(artifact, ONNX) == artifact
    assert resolve_artifact(artifact / ONNX.main, ONNX) == artifact
    with pytest.raises(EdgeLLMError, match="does not exist"):
        resolve_artifact(tmp_path / "nope.onnx", ONNX)
    stray = tmp_path / "stray.pte"
    stray.write_bytes(b"x")
    with pytest.raises(EdgeLLMError, match="bare file without edgellm's sidecar") as e:
        resolve_artifact(stray, EXECUTORCH)
    assert "--format executorch" in e.value.hint
    with pytest.raises(EdgeLLMError, match="bare file"):
        resolve_artifact(artifact / "tokenizer.json", ONNX)


def test_formats_and_require():
    assert {f.tag for f in FORMATS.values()} == {"edgellm-onnx/1", "edgellm-executorch/1", "edgellm-litert/1"}
    fake = ArtifactFormat("fake", "Fake", 1, "model.fake", ".fake", ("edgellm_no_such_module_xyz",), "fake", ())
    with pytest.raises(EdgeLLMError, match="edgellm_no_such_module_xyz") as e:
        require(fake)
    assert e.value.hint == "pip install 'edgellm[fake]'"
    with pytest.raises(EdgeLLMError):
        ArtifactFormat("bad", "Bad", 0, "m", ".b", ("json",), "x", ())
