"""A real run that is killed loses nothing (issue 20, item 5).

The ``edgellm`` command runs in a child process on a tiny random Llama and is sent SIGKILL at
delays drawn (fixed seed) across its measured duration: quantize (RTN, GPTQ), prune (Wanda), export
(GGUF, ONNX), distill (checkpoints every step) and optimize (its cache). ``killharness.sweep`` does
the killing and the judging: after each kill the output does not exist or is complete, valid and
equal to the uninterrupted run's; only the atomic writers' documented temporaries lie beside it;
and a re-run (distill: ``--resume`` from the newest checkpoint; optimize: the same cache) finishes
with the uninterrupted run's result and leaves no temporary anywhere. The normal suite forks the
children from a pre-imported zygote (60 kills in all); the slow test starts each child as a
fresh ``edgellm`` process. ``python -m bench.kill_sweep`` runs a larger sweep and records its counts.
Also here: the regression tests of what the sweep found (stale temporaries after a SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from killharness import Command, Zygote, exec_run, sweep, tree_digest

from edgellm.distillation.checkpoint import PREFIX, clean_checkpoints, discard
from edgellm.fileio import atomic_dir, atomic_file, clean_stale, temp_prefix, verify_manifest

ROOT = Path(__file__).resolve().parents[1]
_VALID: set = set()        # digests of outputs already checked in full: an identical output is as valid


def _checked(digest: dict, check) -> dict:
    key = frozenset(digest.items())
    if key not in _VALID:
        check()
        _VALID.add(key)
    return digest


TIMINGS = {"seconds", "wall_seconds", "train_seconds", "total_seconds", "elapsed_s", "measured_at"}


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMINGS}
    return [_untimed(v) for v in obj] if isinstance(obj, list) else obj


def content(path: Path) -> dict:
    """Every file's sha256, except that a JSON file counts without its timing fields (a quantized folder's
    config records how long quantization took) and the manifest is checked (``verify_manifest``), not compared."""
    path = Path(path)
    if path.is_dir():
        verify_manifest(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")
    out = {}
    for p in files:
        name = p.name if p == path else str(p.relative_to(path))
        if p.suffix == ".json":
            out[name] = json.dumps(_untimed(json.loads(p.read_text())), sort_keys=True)
        else:
            out[name] = tree_digest(p)[p.name]
    return out


def model_folder(out: Path) -> dict:
    """A quantized or pruned folder: its manifest holds, edgellm loads it; the result is its ``content``."""
    from edgellm.models import load

    def check():
        loaded = load(str(out))
        assert sum(p.numel() for p in loaded.model.parameters()) > 0

    return _checked(content(out), check)


def gguf_file(out: Path) -> dict:
    def check():
        from gguf import GGUFReader

        r = GGUFReader(out)
        assert "edgellm.export" in r.fields and len(r.tensors) > 0

    return _checked(content(out), check)


def onnx_folder(out: Path) -> dict:
    def check():
        import onnxruntime

        from edgellm.artifacts import ONNX, read_artifact

        assert read_artifact(out, ONNX)["verification"]["passed"]
        onnxruntime.InferenceSession(str(out / ONNX.main), providers=["CPUExecutionProvider"])

    return _checked(content(out), check)


def distilled(out: Path) -> dict:
    """The student's weights and the loss and eval curves (without their wall-clock seconds)."""
    verify_manifest(out)
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert len(list(f.keys())) > 0
    rows = lambda name: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                         for line in (out / "distill" / name).read_text().splitlines()]
    return {"weights": tree_digest(out / "model.safetensors"), "train": rows("train.jsonl"), "eval": rows("eval.jsonl")}


def optimized(out: Path) -> list:
    """The quality figures of every row (speeds are measured again on a re-run, so they are not compared)."""
    r = json.loads((out / "results.json").read_text())
    verify_manifest(out / "model")
    assert r["chosen"] is not None and (out / "report.html").is_file()
    keys = ("model", "recipe", "runtime", "status", "quality_loss")
    return sorted((tuple((k, row.get(k)) for k in keys) for row in r["rows"]), key=str)


def commands(model: Path, text: Path) -> dict[str, Command]:
    calib = ["--calib-data", text, "--calib-samples", "8", "--calib-seq-len", "32"]
    recipes = [ROOT / "recipes" / f"{r}.yaml" for r in ("fp32", "w8-rtn-g32")]
    ckpt = lambda work: ["--resume", "s.run"] if any((work / "s.run").glob("checkpoint-*/trainer_state.json")) else []  # noqa: E731
    return {c.name: c for c in (
        Command("quantize-rtn", "q", ["quantize", model, "--method", "rtn", "--bits", "8", "--out", "q"], model_folder),
        Command("quantize-gptq", "q", ["quantize", model, "--method", "gptq", "--bits", "4", "--group-size", "32", *calib,
                                       "--out", "q"], model_folder),
        Command("prune-wanda", "p", ["prune", model, "--method", "wanda", "--sparsity", "0.5", *calib, "--out", "p"],
                model_folder),
        Command("export-gguf", "m.gguf", ["export", model, "--format", "gguf", "--gguf-type", "q8_0", "--out", "m.gguf",
                                          "--threads", "1"], gguf_file),
        Command("export-onnx", "m.onnx", ["export", model, "--format", "onnx", "--out", "m.onnx", "--threads", "1"],
                onnx_folder),
        Command("distill", "s", ["distill", "--teacher", model, "--student-from", model, "--keep-layers", "2", "--data", text,
                                 "--out", "s", "--steps", "6", "--batch-size", "2", "--seq-len", "32", "--val-tokens", "128",
                                 "--eval-every", "3", "--save-every", "1", "--quiet"], distilled, resume=ckpt,
                after_success=lambda work: ["s.run"] if (work / "s.run").exists() else [], state=("s.run",)),
        Command("optimize", "o", ["optimize", "--model", model, "--eval-text", text, "--ctx", "64", "--screen-tokens", "128",
                                  "--full-tokens", "256", "--speed-runs", "2", "--speed-in-process", "--prompt-len", "16",
                                  "--new-tokens", "8", "--runtimes", "torch", "--recipes", *recipes,
                                  "--max-quality-loss", "3%", "--cache", "cache", "--out", "o", "--no-progress",
                                  "--threads", "1"], optimized, state=("cache",)),
    )}


# --- regressions: what a SIGKILL leaves, the next write removes ------------------------------------

def _killed_writer(tmp_path: Path, body: str) -> None:
    """Run *body* (with ``out`` bound) in a child that SIGKILLs itself inside the atomic writer."""
    code = (f"import os, signal\nfrom pathlib import Path\nfrom edgellm.fileio import atomic_dir, atomic_file\n"
            f"out = Path({str(tmp_path / 'out')!r})\n{body}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_a_killed_atomic_dir_leaves_a_temporary_the_next_write_removes(tmp_path):
    _killed_writer(tmp_path, "with atomic_dir(out) as t:\n    (t / 'a').write_text('half')\n"
                             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    left = [p.name for p in tmp_path.iterdir()]
    assert not (tmp_path / "out").exists() and len(left) == 1 and left[0].startswith(".out.tmp-")
    with atomic_dir(tmp_path / "out") as t:
        (t / "a").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "a").read_text() == "whole"


def test_a_killed_atomic_file_leaves_a_temporary_the_next_write_removes(tmp_path):
    _killed_writer(tmp_path, "with atomic_file(out) as f:\n    f.write('half'); f.flush()\n"
                             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert [p.name for p in tmp_path.iterdir()][0].startswith(".out.tmp-")
    with atomic_file(tmp_path / "out") as f:
        f.write("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_between_the_two_renames_puts_the_old_output_back(tmp_path):
    """Killed after the old output moved aside and before the new one landed: the next run restores the old one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "edgellm-manifest/1", "files": {}}')
    _killed_writer(tmp_path, "import edgellm.fileio as f\nreal = os.replace\n"
                             "def replace(a, b):\n    real(a, b)\n    if '.old-' in str(b): os.kill(os.getpid(), signal.SIGKILL)\n"
                             "f.os.replace = replace\n"
                             "with atomic_dir(out, force=True) as t:\n    (t / 'new').write_text('new')\n")
    assert not out.exists()
    assert sorted(n[:9] for n in os.listdir(tmp_path)) == [".out.old-", ".out.tmp-"]
    assert clean_stale(out) and sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == ["manifest.json"]          # the previous output, whole


def test_live_writers_temporaries_and_other_names_are_kept(tmp_path):
    mine = tmp_path / f"{temp_prefix(tmp_path / 'out')}abc"       # this process is alive: its temporary stays
    mine.mkdir()
    other = tmp_path / ".outer.tmp-1-x"                           # another output's temporary
    other.mkdir()
    assert clean_stale(tmp_path / "out") == [] and mine.exists() and other.exists()


def test_a_killed_checkpoint_write_is_removed_by_the_next_checkpoint(tmp_path):
    run = tmp_path / "s.run"
    (run / f".{PREFIX}000002.tmp-999999999-x").mkdir(parents=True)     # no such process
    (run / f"{PREFIX}000001").mkdir()
    clean_checkpoints(run)
    assert sorted(os.listdir(run)) == [f"{PREFIX}000001"]


def test_a_discarded_run_folder_vanishes_in_one_step(tmp_path):
    """A finished run's checkpoints go by one rename, so a kill mid-deletion cannot leave half a checkpoint."""
    run = tmp_path / "s.run"
    (run / f"{PREFIX}000003").mkdir(parents=True)
    (run / f"{PREFIX}000003" / "trainer_state.json").write_text("{}")
    (tmp_path / ".s.run.tmp-999999999-discard-0a1b").mkdir()               # what a killed discard left
    discard(run)
    assert os.listdir(tmp_path) == []


# --- the sweeps ------------------------------------------------------------------------------------

# kills per command in the normal suite, sized by each command's duration on the tiny model (RTN 1.2 s ...
# optimize 3.2 s, forked from the zygote) so that the file runs in about 90 s on 2 cores
KILLS = {"quantize-rtn": 16, "quantize-gptq": 8, "prune-wanda": 8, "export-gguf": 8, "export-onnx": 6, "distill": 8,
         "optimize": 6}


@pytest.fixture(scope="module")
def zygote():
    with Zygote() as z:
        yield z


@pytest.mark.parametrize("name", list(KILLS))
def test_sigkill_loses_nothing(name, zygote, tiny_llama, text_file, tmp_path):
    cmd = commands(tiny_llama, text_file)[name]
    tally = sweep(zygote.run, cmd, tmp_path, kills=KILLS[name], seed=20 + len(name))
    print(json.dumps(tally.to_dict()))
    assert tally.kills >= KILLS[name] // 2, tally.to_dict()         # most delays fall inside the run
    assert not tally.failures, "\n".join(tally.failures)


# quantize-gptq was left out once: two uninterrupted runs in fresh processes wrote different files. The codes
# were equal; the safetensors header's two metadata keys came out in a per-process (Rust hash) order, which
# forked children share. Fixed in quantization/storage.py; tests/quantization/test_gptq_reproducible.py.
# one command, not every one: what a fresh interpreter adds (imports inside the killed span) is the same for all,
# and the sweep above kills every command; quantize-gptq is the one a fresh process once broke (see above)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["quantize-gptq"])
def test_sigkill_of_a_fresh_interpreter(name, tiny_llama, text_file, tmp_path):
    """The same, each child a new ``edgellm`` process (imports included in the duration the kills are drawn over).
    Four kills, at 32%, 15%, 65% and 7% of the reference duration (seed 7), then one re-run: the fifth and sixth
    kills this test once made (37% and 6%) fell beside the first and fourth and cost a second re-run."""
    tally = sweep(exec_run, commands(tiny_llama, text_file)[name], tmp_path, kills=4, seed=7)
    print(json.dumps(tally.to_dict()))
    assert tally.kills >= 3 and not tally.failures, "\n".join(tally.failures)
