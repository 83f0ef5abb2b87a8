"""Subprocess side of ``bench``: load, measure speed, report peak RSS as one JSON line on stdout."""

from __future__ import annotations

import json
import sys
import time

from ..errors import EdgeLLMError
from ..runtimes import open_runtime
from .latency import measure_speed
from .peak import peak_rss_bytes


def main(argv: list[str]) -> int:
    req = json.loads(argv[0])
    try:
        t0 = time.perf_counter()
        rt = open_runtime(req["spec"], runtime=req["runtime"], threads=req["threads"], device=req.get("device"),
                          **req.get("load_kwargs", {}))
        load_s = time.perf_counter() - t0
        speed = measure_speed(rt, req["prompt_len"], req["new_tokens"], req["runs"], req["warmup"])
    except EdgeLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = getattr(rt, "meta", None)
    out = {
        "runtime": rt.name,
        "threads": rt.threads,
        "device": getattr(rt, "device", "cpu"),
        "load_seconds": load_s,
        "file_bytes": rt.file_bytes(),
        "param_bytes": getattr(meta, "param_bytes", None),
        "n_params": getattr(meta, "n_params", None),
        "speed": speed.to_dict(),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
