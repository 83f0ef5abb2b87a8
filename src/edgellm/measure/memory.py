"""``bench``: size, speed and peak RSS of a model, measured in a fresh subprocess.

The subprocess (``python -m edgellm.measure.worker``) loads the model, runs the speed
workload and reports its own peak RSS (``VmHWM``, see ``peak.py``), so the figure holds the runtime, the
weights and the workload, and nothing the parent happened to have loaded. The parent adds
machine information and bandwidth utilisation
(decode tok/s × weight bytes per token ÷ measured bandwidth).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import EdgeLLMError
from .machine import machine_info


def bench(spec: str, runtime: str = "auto", threads: int | None = None, prompt_len: int = 128,
          new_tokens: int = 128, runs: int = 5, warmup: int = 1, device: str | None = None,
          machine: bool = True, timeout_s: float = 1800, load_kwargs: dict | None = None) -> dict:
    """Benchmark *spec* (a path or built-in name) in a fresh subprocess; returns a JSON-able dict.

    >>> r = bench("smollm2-135m", threads=2)                 # doctest: +SKIP
    >>> r["speed"]["decode_tok_s"]["median"], r["peak_rss_bytes"]  # doctest: +SKIP
    (12.1, 812345344)
    """
    threads = threads or os.cpu_count()
    request = {"spec": str(spec), "runtime": runtime, "threads": threads, "prompt_len": prompt_len,
               "new_tokens": new_tokens, "runs": runs, "warmup": warmup, "device": device,
               "load_kwargs": load_kwargs or {}}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgellm.measure.worker", json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        raise EdgeLLMError(f"benchmark of '{spec}' took longer than {timeout_s:.0f} s", "use fewer --runs") from e
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode == 2 and msg.startswith("error: "):
            raise EdgeLLMError(msg[len("error: "):])
        raise EdgeLLMError(f"benchmark subprocess failed: {msg}", "run with --debug for the traceback")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if machine:
        result["machine"] = machine_info(bandwidth=True)
        bw = result["machine"]["measured_bandwidth_GBps"] * 1e9
        dec = result["speed"]["decode_tok_s"]["median"]
        result["bandwidth_utilisation"] = dec * result["speed"]["weight_bytes"] / bw
    result["spec"] = str(spec)
    result["source_path"] = str(Path(spec)) if Path(str(spec)).exists() else str(spec)
    return result
