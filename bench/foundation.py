"""Foundation benchmark: SmolLM2-135M fp32 in PyTorch — perplexity (docs/design.md §4 protocol),
speed, peak RSS, bandwidth utilisation. Writes bench/results/foundation.json.

Run from the repository root: .venv/bin/python -m bench.foundation [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench._common import stamp, write_result
from edgellm.api import evaluate
from edgellm.measure import bench


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--eval-json", default=None,
                    help="reuse `edgellm eval smollm2-135m --json FILE` output (perplexity is deterministic)")
    args = ap.parse_args()
    t0 = time.time()
    if args.eval_json:
        ev = json.loads(Path(args.eval_json).read_text())
    else:
        ev = evaluate("smollm2-135m", ctx=512, max_tokens=args.max_tokens, threads=args.threads, progress=True).to_dict()
    b = bench("smollm2-135m", threads=args.threads, runs=5).to_dict()
    p, s = ev["perplexity"], b["speed"]
    row = {"model": "smollm2-135m (fp32, PyTorch eager)", "threads": b["threads"],
           "perplexity": round(p["perplexity"], 3), "ctx": p["ctx"], "tokens": p["n_tokens"],
           "prefill tok/s": round(s["prefill_tok_s"]["median"], 1),
           "TTFT ms": round(s["ttft_ms"]["median"], 1),
           "decode tok/s (median)": round(s["decode_tok_s"]["median"], 2),
           "decode min-max": f"{s['decode_tok_s']['min']:.2f}-{s['decode_tok_s']['max']:.2f}",
           "peak RSS MiB": round(b["peak_rss_bytes"] / 2**20, 1),
           "weight MiB/token": round(s["weight_bytes"] / 2**20, 1),
           "BW util": f"{100 * b['bandwidth_utilisation']:.1f}%"}
    result = {
        "title": "Foundation: SmolLM2-135M fp32 in PyTorch",
        "description": "Perplexity on wikitext-2 test (non-overlapping windows); speed is greedy decode of 128 new "
                       "tokens after a 128-token prompt, EOS ignored, median of 5 runs after 1 warm-up; peak RSS of a "
                       "fresh subprocess that loads the model and runs the speed workload.",
        "machine": b["machine"],
        "tables": [{"title": "fp32 baseline", "columns": list(row), "rows": [stamp(row)]}],
        "raw": {"eval": ev, "bench": b}, "wall_seconds": time.time() - t0,
    }
    write_result("foundation", result)
    print(row)


if __name__ == "__main__":
    main()
