"""Spawn an N-process pipeline on this machine (what ``edgellm bench --pipeline N`` and the tests use).

The CLI side of ``edgellm bench --pipeline`` lives in ``commands/pipeline.py``; this module only launches.

Each rank is a fresh ``python -m edgellm.parallel ...`` process with the env vars torchrun would
set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT, and
GLOO_SOCKET_IFNAME=lo so gloo stays on the loopback interface), so each reports its own peak
RSS. If one rank fails, the others are stopped and the failing rank's error is raised.
Deliberately absent: multi-host launching (use torchrun on each host, see docs/parallel.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from ..errors import EdgeLLMError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, threads: int | None = None) -> dict:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch_local(argv: list[str], nproc: int, threads: int | None = None, timeout_s: float = 600,
                 ranks: list[int] | None = None) -> dict:
    """Run ``python -m edgellm.parallel *argv`` as *nproc* ranks; returns rank 0's JSON result.

    *ranks* starts only those ranks (tests use it to leave a rank missing).

    >>> launch_local(["generate", "smollm2-135m", "--prompt-ids", "1,2,3"], nproc=2)["tokens"]  # doctest: +SKIP
    """
    if nproc < 1:
        raise EdgeLLMError(f"--pipeline {nproc} is not a positive process count", "use 1 or more")
    port = free_port()
    procs, logs = [], []
    with tempfile.TemporaryDirectory(prefix="edgellm-pipeline-") as tmp:
        for r in (ranks if ranks is not None else range(nproc)):
            out = open(os.path.join(tmp, f"rank{r}.out"), "w+")
            err = open(os.path.join(tmp, f"rank{r}.err"), "w+")
            cmd = [sys.executable, "-m", "edgellm.parallel", *argv]
            if threads:
                cmd += ["--threads", str(threads)]
            procs.append((r, subprocess.Popen(cmd, stdout=out, stderr=err, env=rank_env(r, nproc, port, threads))))
            logs.append((out, err))
        deadline = time.monotonic() + timeout_s
        failed = None
        try:
            while any(p.poll() is None for _, p in procs):
                bad = [(r, p) for r, p in procs if p.returncode not in (None, 0)]
                if bad and failed is None:
                    failed = bad[0]
                    deadline = min(deadline, time.monotonic() + 10)   # let the others report, then stop them
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
        texts = {}
        for (r, p), (out, err) in zip(procs, logs):
            out.seek(0)
            err.seek(0)
            texts[r] = (p.returncode, out.read(), err.read())
            out.close()
            err.close()
    return _result(texts, timeout_s)


def _last_error(stderr: str) -> str | None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error: ")]
    return errs[-1][len("error: "):] if errs else (lines[-1] if lines else None)


def _result(texts: dict, timeout_s: float) -> dict:
    codes = {r: c for r, (c, _, _) in texts.items()}
    if all(c == 0 for c in codes.values()) and 0 in texts:
        lines = [ln for ln in texts[0][1].strip().splitlines() if ln.startswith("{")]
        if lines:
            return json.loads(lines[-1])
    # prefer a rank that failed on its own (exit 2 with a message) over ranks that were stopped
    for r in sorted(texts, key=lambda r: (codes[r] != 2, r)):
        c, _, err = texts[r]
        if c not in (0, None, -15, -9):
            msg = _last_error(err)
            raise EdgeLLMError(f"pipeline rank {r} failed: {msg or f'exit code {c}'}",
                               None if msg else "run that rank's command by hand to see its traceback")
    raise EdgeLLMError(f"the pipeline did not finish within {timeout_s:.0f} s", "use fewer runs or tokens")


def bench_pipeline(spec, nproc: int, threads: int | None = None, prompt_len: int = 128, new_tokens: int = 128,
                   runs: int = 5, warmup: int = 1, batch: int = 0, micro_batches=1, batch_runs: int | None = None,
                   decode: bool = True, timeout_s: float = 1800, connect_timeout_s: float = 60) -> dict:
    """Benchmark *spec* as an *nproc*-rank pipeline on this machine (*threads* in all, split over the ranks).

    Batch 1: ``measure_speed`` through rank 0 (docs/design.md §4). With *batch*: generated tokens per
    second for *batch* prompts cut into *micro_batches* (an int or a list, measured alternately).
    Every rank reports its peak RSS.

    >>> r = bench_pipeline("smollm2-135m", 2, threads=2)        # doctest: +SKIP
    >>> [x["peak_rss_bytes"] for x in r["ranks"]]               # doctest: +SKIP
    """
    total = threads or os.cpu_count() or 1
    per_rank = max(1, total // nproc)
    argv = ["bench", str(spec), "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens), "--runs", str(runs),
            "--warmup", str(warmup), "--batch", str(batch),
            "--micro-batches", ",".join(str(m) for m in (micro_batches if isinstance(micro_batches, (list, tuple)) else [micro_batches])),
            "--timeout", str(connect_timeout_s)]
    if batch_runs:
        argv += ["--batch-runs", str(batch_runs)]
    if not decode:
        argv.append("--no-decode")
    result = launch_local(argv, nproc, threads=per_rank, timeout_s=timeout_s)
    result["threads_per_rank"] = per_rank
    return result
