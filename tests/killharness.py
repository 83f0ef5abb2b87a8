"""SIGKILL harness: run the real ``edgellm`` command in a child process and kill it at a chosen moment.

Two ways to start the child:

- ``Zygote``: a fresh interpreter (this file run as a script) imports edgellm and its heavy
  dependencies once, then forks one child per run; the child calls ``edgellm.cli.main(argv)`` with
  its stdout and stderr in a log file, exactly as the ``edgellm`` console script does, and is sent
  SIGKILL by the zygote after the requested delay. A fork costs milliseconds where a fresh
  interpreter costs seconds of imports, so a test can afford a hundred kills. The zygote never runs
  a torch operation itself, so no thread pool exists when it forks.
- ``exec_run``: the ``edgellm`` console script in a new interpreter (``subprocess``), for the slow sweep.

``Outcome.killed`` is true only when the child died of the SIGKILL (a child that finished first is
not counted as a kill). ``sweep`` runs one ``Command`` uninterrupted (its duration and reference
result), then kills it again and again on one output path at delays drawn across that duration, and
counts what each kill left wrong: an output that exists but is invalid or differs from the
reference, anything but the atomic writers' documented temporaries beside it, and a re-run that
does not finish with the reference result or leaves a temporary anywhere in its work folder.
Deliberately absent: the judgement of each command's output (each ``Command`` brings its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# imported by the zygote before it forks: what the commands under test load
PRELOAD = ("torch", "transformers", "safetensors.torch", "accelerate", "gguf", "onnx", "onnxruntime", "onnxscript",
           "torchao", "matplotlib.pyplot", "edgellm.cli", "edgellm.commands.quantize",
           "edgellm.commands.prune", "edgellm.commands.export", "edgellm.commands.distill", "edgellm.commands.optimize",
           "edgellm.exporters.gguf", "edgellm.exporters.onnx", "edgellm.optimization",
           "transformers.models.llama.modeling_llama", "transformers.models.auto.tokenization_auto",
           "transformers.tokenization_utils_fast", "edgellm.distillation", "edgellm.pruning", "edgellm.quantization")

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}


@dataclass
class Outcome:
    rc: int            # exit code; -9 when killed
    killed: bool       # died of the SIGKILL (not finished before it)
    seconds: float     # from start to exit or death
    log: str           # the child's stdout and stderr


class Zygote:
    """A pre-imported interpreter that forks one ``edgellm`` child per ``run``.

    >>> with Zygote() as z:                                                  # doctest: +SKIP
    ...     z.run(["quantize", "m", "--out", "q"], cwd=tmp, kill_after=0.3).killed
    True
    """

    def __init__(self, env: dict | None = None):
        self.env = env or {}
        self.proc = None

    def __enter__(self):
        env = {**os.environ, **CHILD_ENV, **self.env}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the zygote did not start: {line!r}")
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def run(self, argv, cwd: Path, kill_after: float | None = None, log: Path | None = None) -> Outcome:
        log = Path(log) if log else Path(cwd) / "edgellm.log"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "kill_after": kill_after, "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return Outcome(reply["rc"], reply["killed"], reply["seconds"], log.read_text(errors="replace"))


def exec_run(argv, cwd: Path, kill_after: float | None = None, log: Path | None = None) -> Outcome:
    """``edgellm ARGV`` in a new interpreter, SIGKILLed after *kill_after* seconds (None: let it finish)."""
    log = Path(log) if log else Path(cwd) / "edgellm.log"
    exe = Path(sys.executable).parent / "edgellm"
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen([str(exe), *map(str, argv)], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env={**os.environ, **CHILD_ENV})
        try:
            p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
    return Outcome(p.returncode, p.returncode == -signal.SIGKILL, time.monotonic() - t0, log.read_text(errors="replace"))


def litter(out: Path) -> list[str]:
    """Hidden siblings named after *out* (``.NAME.*``: the atomic writers' temporary and replaced copies)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") or
                  p.name.startswith(f".{out.stem}.tmp-"))


def tree_digest(path: Path, skip=()) -> dict[str, str]:
    """``{relative path: sha256}`` of a file or of every file under a folder (names in *skip* left out)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.name not in skip}


# the atomic writers' documented temporaries (edgellm.fileio): what a kill may leave beside an output
DOCUMENTED = re.compile(r"^\..+\.(tmp-\d+-.*|old-\d+)$")


@dataclass
class Command:
    """One command under test. *argv* runs in a work folder (relative paths resolve there); *result(out)* is
    the comparable result of a finished output and raises when the output is invalid;
    *resume(work)* gives the flags a re-run after a kill adds (distill: ``--resume``)."""

    name: str
    out: str
    argv: list
    result: Callable[[Path], object]
    resume: Callable[[Path], list] = lambda work: []
    after_success: Callable[[Path], list] = lambda work: []    # problems left in *work* by a finished run
    state: tuple = ()          # paths under the work folder a fresh start removes with the output (a cache)


@dataclass
class Tally:
    command: str
    reference_seconds: float = 0.0
    kills: int = 0
    finished_before_kill: int = 0
    reruns: int = 0
    failures: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"command": self.command, "reference_seconds": round(self.reference_seconds, 3), "kills": self.kills,
                "finished_before_kill": self.finished_before_kill, "reruns": self.reruns,
                "failures": len(self.failures), "failure_messages": self.failures}


def _diff(a, b) -> str:
    """Where two results differ, briefly."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return "; ".join(f"{k}: {str(a.get(k))[:120]} != {str(b.get(k))[:120]}" for k in keys[:3])
    return f"{str(a)[:200]} != {str(b)[:200]}"


def stale_anywhere(work: Path) -> list[str]:
    """Temporaries (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) anywhere under *work*."""
    return sorted(str(p.relative_to(work)) for p in Path(work).rglob(".*") if DOCUMENTED.match(p.name))


def sweep(run, cmd: Command, base: Path, kills: int, seed: int = 0, rerun_every: int = 4) -> Tally:
    """Kill *cmd* *kills* times (``run(argv, cwd, kill_after)`` is ``Zygote.run`` or ``exec_run``); returns the tally.

    The reference runs are in ``base/NAME/ref`` and ``ref2`` (two, equal; the delays span the faster), the kills and re-runs in ``base/NAME/kill``; every
    *rerun_every* kills (and after the last) one uninterrupted re-run, after which half the time the
    output and the command's *state* are removed, so the next kills start from nothing.
    """
    tally = Tally(cmd.name)
    ref_dir, work = base / cmd.name / "ref", base / cmd.name / "kill"
    ref_dir.mkdir(parents=True)
    work.mkdir(parents=True)
    o = run(cmd.argv, ref_dir)
    if o.rc != 0:
        tally.failures.append(f"reference run failed (rc {o.rc}): {o.log[-800:]}")
        return tally
    ref = cmd.result(ref_dir / cmd.out)
    # a second uninterrupted run, in a fresh folder: the output must not depend on the run, and the kill delays
    # span the faster of the two (a first run can be twice as slow, and then most kills came too late)
    again = base / cmd.name / "ref2"
    again.mkdir()
    o2 = run(cmd.argv, again)
    if o2.rc != 0 or cmd.result(again / cmd.out) != ref:
        tally.failures.append(f"a second uninterrupted run {'failed' if o2.rc else 'wrote another output'}: {o2.log[-800:]}")
        return tally
    tally.reference_seconds = min(o.seconds, o2.seconds)
    rng = random.Random(seed)
    out = work / cmd.out

    def judge(when: str, finished: bool) -> None:
        if out.exists():
            try:
                got = cmd.result(out)
            except Exception as e:  # noqa: BLE001 — any way the output fails to read is the failure counted
                tally.failures.append(f"{when}: the output exists but is invalid: {type(e).__name__}: {e}")
                return
            if got != ref:
                tally.failures.append(f"{when}: the output differs from the uninterrupted run's: {_diff(ref, got)}")
        elif finished:
            tally.failures.append(f"{when}: finished without an output")
        stray = [n for n in (p.name for p in out.parent.iterdir()) if n.startswith(".") and not DOCUMENTED.match(n)]
        if stray:
            tally.failures.append(f"{when}: undocumented files beside the output: {stray}")
        if finished:
            left = stale_anywhere(work) + cmd.after_success(work)
            if left:
                tally.failures.append(f"{when}: a finished run left {left}")

    for i in range(kills):
        delay = rng.uniform(0.0, tally.reference_seconds)
        o = run([*cmd.argv, "--force", *cmd.resume(work)], work, kill_after=delay)
        if o.killed:
            tally.kills += 1
        else:
            tally.finished_before_kill += 1
            if o.rc != 0:
                tally.failures.append(f"kill {i} at {delay:.2f}s: the run failed before the kill (rc {o.rc}): "
                                      f"{o.log[-800:]}")
        judge(f"kill {i} at {delay:.2f}s", finished=False)
        if (i + 1) % rerun_every == 0 or i == kills - 1:
            o = run([*cmd.argv, "--force", *cmd.resume(work)], work)
            tally.reruns += 1
            if o.rc != 0:
                tally.failures.append(f"re-run after kill {i} failed (rc {o.rc}): {o.log[-800:]}")
            else:
                judge(f"re-run after kill {i}", finished=True)
            if rng.random() < 0.5:            # half the time the next kills start with no output at all
                for p in (out, *(work / s for s in cmd.state)):
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return tally


# --- the zygote itself -----------------------------------------------------------------------------

def _child(req: dict) -> None:
    rc = 1
    try:
        os.chdir(req["cwd"])
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from edgellm.cli import main

        rc = main(req["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 — report it in the log, as the interpreter would
        import traceback

        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass                               # the child imports it (and fails) as the real command would
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(req)
        pidfd = os.pidfd_open(pid)
        if req["kill_after"] is not None:
            ready, _, _ = select.select([pidfd], [], [], max(0.0, req["kill_after"]))
            if not ready:
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - t0
        os.close(pidfd)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "killed": killed, "seconds": seconds}) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
