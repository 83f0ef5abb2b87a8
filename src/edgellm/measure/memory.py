"""``bench(spec, BenchConfig) -> BenchResult``: size, speed and peak RSS of a model, measured in a fresh subprocess.

The subprocess (``python -m edgellm.measure.worker``) loads the model, runs the speed
workload and reports its own peak RSS (``VmHWM``, see ``peak.py``), so the figure holds the runtime, the
weights and the workload, and nothing the parent happened to have loaded. The parent adds
machine information and bandwidth utilisation
(decode tok/s × weight bytes per token ÷ measured bandwidth). ``BenchConfig`` holds the workload,
each default stated once; the runtime, threads and device that open the model are keyword arguments.
Deliberately left out: several models side by side (``measure_paired``) and pipelines (``bench_pipeline``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..calibconfig import config_field
from ..errors import EdgeLLMError
from ..results import Result
from .latency import SpeedResult, Stat
from .machine import machine_info


@dataclass(frozen=True)
class BenchConfig:
    """The speed workload: *runs* measured greedy generations of *new_tokens* after a *prompt_len* prompt.

    >>> BenchConfig(prompt_len=32, new_tokens=16).runs
    5
    """

    prompt_len: int = config_field(128, "prompt tokens of each run")
    new_tokens: int = config_field(128, "tokens generated in each run")
    runs: int = config_field(5, "measured runs (median, min, max); at least 5 recommended")
    warmup: int = config_field(1, "unmeasured runs first")
    machine: bool = config_field(True, "also describe this machine and measure its bandwidth (BW util)")
    timeout_s: float = config_field(1800.0, "seconds the subprocess may take")

    def __post_init__(self):
        for name, low in (("prompt_len", 1), ("new_tokens", 2), ("runs", 1), ("warmup", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise EdgeLLMError(f"bench {name} must be an integer ≥ {low} (got {v!r})",
                                   f"fix --{name.replace('_', '-')}")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise EdgeLLMError(f"bench timeout_s must be a positive number of seconds (got {self.timeout_s!r})",
                               "fix --timeout-s")


@dataclass
class BenchResult(Result):
    """What ``bench`` measured; ``machine`` and ``bandwidth_utilisation`` are None (and left out of
    ``to_dict()``) when ``BenchConfig.machine`` is False."""

    spec: str
    source_path: str
    runtime: str
    threads: int | None
    device: str
    load_seconds: float
    file_bytes: int
    param_bytes: int | None
    n_params: int | None
    speed: SpeedResult
    peak_rss_bytes: int
    machine: dict | None = None
    bandwidth_utilisation: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items()
                if v is not None or k not in ("machine", "bandwidth_utilisation")}


def bench(spec: str, config: BenchConfig | None = None, *, runtime: str = "auto", threads: int | None = None,
          device: str | None = None, load_kwargs: dict | None = None, **fields) -> BenchResult:
    """Benchmark *spec* (a path or built-in name) in a fresh subprocess; *fields* are ``BenchConfig`` fields.

    >>> r = bench("smollm2-135m", BenchConfig(prompt_len=64), threads=2)   # doctest: +SKIP
    >>> r.speed.decode_tok_s.median, r.peak_rss_bytes, bench("smollm2-135m", runs=7).speed.runs  # doctest: +SKIP
    (12.1, 812345344, 7)
    """
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    if set(fields) - known:
        raise EdgeLLMError(f"bench: unknown option(s) {', '.join(sorted(set(fields) - known))}",
                           f"BenchConfig fields: {', '.join(sorted(known))}")
    cfg = dataclasses.replace(config, **fields) if config is not None else BenchConfig(**fields)
    threads = threads or os.cpu_count()
    request = {"spec": str(spec), "runtime": runtime, "threads": threads, "prompt_len": cfg.prompt_len,
               "new_tokens": cfg.new_tokens, "runs": cfg.runs, "warmup": cfg.warmup, "device": device,
               "load_kwargs": load_kwargs or {}}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgellm.measure.worker", json.dumps(request)],
                              capture_output=True, text=True, timeout=cfg.timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        raise EdgeLLMError(f"benchmark of '{spec}' took longer than {cfg.timeout_s:.0f} s", "use fewer --runs") from e
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode == 2 and msg.startswith("error: "):
            raise EdgeLLMError(msg[len("error: "):])
        raise EdgeLLMError(f"benchmark subprocess failed: {msg}", "run with --debug for the traceback")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    s = measured.pop("speed")
    speed = SpeedResult(**{**s, **{k: Stat(**s[k]) for k in ("prefill_tok_s", "ttft_ms", "decode_tok_s")}})
    r = BenchResult(spec=str(spec), source_path=str(Path(spec)) if Path(str(spec)).exists() else str(spec),
                    speed=speed, **measured)
    if cfg.machine:
        r.machine = machine_info(bandwidth=True)
        r.bandwidth_utilisation = speed.decode_tok_s.median * speed.weight_bytes / (r.machine["measured_bandwidth_GBps"] * 1e9)
    return r
