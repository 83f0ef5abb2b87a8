"""Speed measurements for the search (docs/design.md §4): a fresh subprocess by default, in-process on request.

``bench_subprocess`` is ``edgellm.measure`` (peak RSS of a process that only loads and runs the
model); ``speed_in_process`` is the same ``measure_speed`` without the subprocess (faster, no
RSS); classifiers are timed on a fixed batch of 32 rows. Deliberately absent: batching LMs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from functools import lru_cache

# what ``edgellm.measure``'s worker imports before it loads a model, per runtime
_HARNESS = {"torch": "import edgellm.runtimes.torch, transformers", "llama.cpp": "import edgellm.runtimes.llamacpp, llama_cpp",
            "litert": "import edgellm.runtimes.litert, ai_edge_litert.interpreter"}


@lru_cache(maxsize=None)
def harness_rss(runtime: str) -> int:
    """Peak RSS of a fresh process that imported what the bench worker imports for *runtime*, no model loaded.

    The cost model removes it from measured peak RSS, so the calibrated runtime overhead carries to a
    device that runs the runtime natively (no Python, no torch).
    """
    code = ("import json, edgellm.measure.latency, edgellm.runtimes; " + _HARNESS.get(runtime, "pass") +
            "; from edgellm.measure.peak import peak_rss_bytes; print(json.dumps(peak_rss_bytes()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return 0
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_subprocess(spec, runtime: str, cfg) -> dict:
    """``edgellm.measure`` of *spec* on *runtime* with the search's protocol settings."""
    from ..measure import bench

    return bench(str(spec), runtime=runtime, threads=cfg.threads, prompt_len=cfg.prompt_len, new_tokens=cfg.new_tokens,
                 runs=cfg.speed_runs, warmup=1, machine=False).to_dict()


def speed_in_process(spec, runtime: str, cfg) -> dict:
    """``measure_speed`` here rather than in a fresh subprocess: no peak RSS (RAM stays predicted)."""
    from ..measure import measure_speed
    from ..runtimes import open_runtime

    rt = open_runtime(spec, runtime=runtime, threads=cfg.threads, **({"device": "cpu"} if runtime == "torch" else {}))
    try:
        s = measure_speed(rt, cfg.prompt_len, cfg.new_tokens, cfg.speed_runs, warmup=1)
    finally:
        if hasattr(rt, "close"):
            rt.close()
    return {"speed": s.to_dict(), "peak_rss_bytes": None, "in_process": True}


def classifier_speed(rt, rows, cfg) -> dict:
    """Examples/s of a classifier runtime on one batch of *rows* (median of ``cfg.speed_runs`` after a warm-up)."""
    texts = [r.text for r in rows]
    rt.classify(texts)
    times = []
    for _ in range(cfg.speed_runs):
        t0 = time.perf_counter()
        rt.classify(texts)
        times.append(time.perf_counter() - t0)
    return {"examples_per_s": len(texts) / statistics.median(times), "batch_size": len(texts), "runs": cfg.speed_runs,
            "peak_rss_bytes": None}
