"""Speed of every runtime on this CPU for SmolLM2-135M at fp32, 8-bit and 4-bit (docs/design.md §4 protocol).

Rows (each built from the same fp32 SmolLM2, artifacts cached in ``--work`` and reused):
  torch      fp32 eager; 8-bit / 4-bit = ``edgellm.quantization`` RTN (8-bit per channel, 4-bit g32),
             packed folders on edgellm's integer kernels;
  llama.cpp  GGUF F32 / Q8_0 / Q4_0 from ``edgellm.exporters`` (gguf);
  onnxruntime  fp32 / dynamic int8 / MatMulNBits int4 (g32, int8 compute) from ``edgellm.exporters`` (onnx);
  executorch   fp32 / 8da8w / 8da4w (g32) .pte on XNNPACK from ``edgellm.exporters`` (executorch).
Each row is ``edgellm.measure.bench`` in a fresh subprocess: greedy decode of 128 new tokens after a
128-token prompt, median of 5 runs after a warm-up, ``--threads`` threads, peak RSS; bandwidth
utilisation = decode tok/s × weight bytes read per token ÷ measured memory bandwidth. Exports
here skip verification (speed only; every export path is verified in its own tests and by
``edgellm export``). Rows are stored one by one in ``--work``/rows.json, so ``--only`` runs pieces.
Writes bench/results/runtime_speed.json. Run from the repository root, under the heavy-job lock:
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.runtime_speed --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench._common import now_utc, write_result

BITS = ("fp32", "8-bit", "4-bit")
ROWS = [(rt, b) for rt in ("torch", "llama.cpp", "onnxruntime", "executorch") for b in BITS]
# measuring order: cheapest artifacts first, ExecuTorch last (lowering SmolLM2 to XNNPACK takes the longest)
RUN_ORDER = [("torch", "fp32")] + [("onnxruntime", b) for b in BITS] + [("llama.cpp", b) for b in BITS] + \
    [("torch", "8-bit"), ("torch", "4-bit")] + [("executorch", b) for b in BITS]
WHAT = {
    ("torch", "fp32"): "eager fp32", ("torch", "8-bit"): "edgellm RTN w8 per-channel", ("torch", "4-bit"): "edgellm RTN w4 g32",
    ("llama.cpp", "fp32"): "GGUF F32", ("llama.cpp", "8-bit"): "GGUF Q8_0", ("llama.cpp", "4-bit"): "GGUF Q4_0",
    ("onnxruntime", "fp32"): "fp32", ("onnxruntime", "8-bit"): "dynamic int8 (MatMulInteger)",
    ("onnxruntime", "4-bit"): "MatMulNBits int4 g32",
    ("executorch", "fp32"): "XNNPACK fp32", ("executorch", "8-bit"): "XNNPACK 8da8w", ("executorch", "4-bit"): "XNNPACK 8da4w g32",
}


def artifact(runtime: str, bits: str, work: Path, source) -> Path | str:
    """Build (or reuse) the artifact for one row; returns what ``bench`` opens."""
    from edgellm.exporters import export

    if runtime == "torch":
        if bits == "fp32":
            return "smollm2-135m"
        out = work / f"torch-{bits}"
        if not out.exists():
            import copy

            from edgellm.quantization import QuantConfig, quantize, save_quantized

            cfg = QuantConfig(method="rtn", bits=8) if bits == "8-bit" else QuantConfig(method="rtn", bits=4, group_size=32)
            m, _ = quantize(copy.deepcopy(source()), cfg, progress=False)
            save_quantized(m, out)
        return out
    if runtime == "llama.cpp":
        t = {"fp32": "f32", "8-bit": "q8_0", "4-bit": "q4_0"}[bits]
        out = work / f"smollm2-{t}.gguf"
        if not out.exists():
            export(source(), "gguf", out, verify=False, gguf_type=t)
        return out
    variant = {"fp32": "fp32", "8-bit": "int8", "4-bit": "int4"}[bits]
    if runtime == "onnxruntime":
        out = work / f"smollm2-{variant}.onnx"
        if not out.exists():
            export(source(), "onnx", out, verify=False, variant=variant, block_size=32)
        return out
    out = work / f"smollm2-{variant}.pte"
    if not out.exists():
        export(source(), "executorch", out, verify=False, variant=variant, group_size=32, max_len=512)
    return out


def main() -> None:
    from edgellm.measure import bench, machine_info
    from edgellm.errors import EdgeLLMError
    from edgellm.models import cache_dir, load

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated runtimes to (re)measure, e.g. onnxruntime,executorch")
    ap.add_argument("--work", default=str(cache_dir() / "bench" / "runtime_speed"))
    args = ap.parse_args()
    t_start, run_start = time.time(), now_utc()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows_path = work / "rows.json"
    stored = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    cached = {}

    def source():
        if "m" not in cached:
            cached["m"] = load("smollm2-135m")
        return cached["m"]

    wanted = set(args.only.split(",")) if args.only else {r for r, _ in ROWS}
    for runtime, bits in RUN_ORDER:
        if runtime not in wanted:
            continue
        key = f"{runtime}|{bits}"
        t0 = time.time()
        try:
            spec = artifact(runtime, bits, work, source)
            b = bench(str(spec), runtime=runtime, threads=args.threads, runs=args.runs).to_dict()
            stored[key] = {"ok": True, "bench": b, "artifact": str(spec), "seconds": time.time() - t0,
                           "measured_at": now_utc()}
        except EdgeLLMError as e:
            stored[key] = {"ok": False, "error": str(e), "seconds": time.time() - t0}
        rows_path.write_text(json.dumps(stored, indent=1, default=str))
        print(key, "ok" if stored[key]["ok"] else stored[key]["error"], f"{time.time() - t0:.0f}s", flush=True)
    machine = machine_info()
    # the copy bandwidth varies by ±20% between measurements on this shared machine: use the median of the one
    # measured beside each row and the one now, so a re-measured row does not move every other row's BW util
    beside = [r["bench"]["machine"]["measured_bandwidth_GBps"] for r in stored.values()
              if r.get("ok") and (r["bench"].get("machine") or {}).get("measured_bandwidth_GBps")]
    machine["measured_bandwidth_GBps"] = statistics.median(beside + [machine["measured_bandwidth_GBps"]])
    bw = machine["measured_bandwidth_GBps"] * 1e9
    rows, notes = [], []
    for runtime, bits in ROWS:
        r = stored.get(f"{runtime}|{bits}")
        if r is None:
            rows.append({"runtime": runtime, "bits": bits, "what": WHAT[(runtime, bits)], "note": "not measured"})
            continue
        if not r["ok"]:
            rows.append({"runtime": runtime, "bits": bits, "what": WHAT[(runtime, bits)], "note": r["error"][:120]})
            continue
        b, s = r["bench"], r["bench"]["speed"]
        wb = s["weight_bytes"]
        rows.append({
            "runtime": runtime, "bits": bits, "what": WHAT[(runtime, bits)],
            "decode tok/s": round(s["decode_tok_s"]["median"], 1),
            "decode min-max": f"{s['decode_tok_s']['min']:.1f}-{s['decode_tok_s']['max']:.1f}",
            "prefill tok/s": round(s["prefill_tok_s"]["median"], 1), "TTFT ms": round(s["ttft_ms"]["median"], 1),
            "peak RSS MiB": round(b["peak_rss_bytes"] / 2**20, 1), "file MB": round(b["file_bytes"] / 1e6, 1),
            "weights MB/token": round(wb / 1e6, 1),
            "BW util": f"{100 * s['decode_tok_s']['median'] * wb / bw:.1f}%",
            "BW-bound tok/s": round(bw / wb, 1),
            **({"measured_at": r["measured_at"]} if r.get("measured_at") else {}),   # older rows have none
        })
    for bits in BITS:
        measured = [r for r in rows if r["bits"] == bits and "decode tok/s" in r]
        if measured:
            best = max(measured, key=lambda r: r["decode tok/s"])
            notes.append(f"{bits}: fastest decode is {best['runtime']} ({best['what']}) at {best['decode tok/s']} tok/s, "
                         f"{best['BW util']} of the bandwidth bound ({best['BW-bound tok/s']} tok/s for its "
                         f"{best['weights MB/token']} MB/token); "
                         + ", ".join(f"{r['runtime']} {r['decode tok/s']} ({r['BW util']})" for r in measured))
    when: dict[str, list[str]] = {}        # rows kept from an earlier run (this one used --only): which, and when
    for runtime, bits in ROWS:
        r = stored.get(f"{runtime}|{bits}")
        if r is not None and r.get("ok") and r.get("measured_at", "") < run_start:
            when.setdefault(r.get("measured_at", "an earlier run (no time recorded)"), []).append(f"{runtime} {bits}")
    if when:
        notes.append(f"rows kept from earlier runs (this run measured {', '.join(sorted(wanted))} only): "
                     + "; ".join(f"{', '.join(v)}: {k}" for k, v in sorted(when.items())))
    missing = [f"{r['runtime']} {r['bits']}: {r['note']}" for r in rows if "note" in r]
    if missing:
        notes.append("not measured: " + "; ".join(missing))
    result = {
        "title": "Runtimes: SmolLM2-135M decode/prefill speed at fp32, 8-bit and 4-bit",
        "description": (f"Every runtime on this CPU with {args.threads} threads, from the same fp32 SmolLM2-135M. "
                        "Greedy decode of 128 new tokens after a 128-token prompt, EOS ignored, median of "
                        f"{args.runs} runs after 1 warm-up, in a fresh subprocess (peak RSS). BW util = decode tok/s × "
                        "weight bytes read per token ÷ measured bandwidth; BW-bound tok/s = bandwidth ÷ weight bytes "
                        "per token. The machine is shared: rows were measured one after another, not interleaved."),
        "machine": machine,
        "tables": [{"title": "speed by runtime and bit width",
                    "columns": ["runtime", "bits", "what", "decode tok/s", "decode min-max", "prefill tok/s", "TTFT ms",
                                "peak RSS MiB", "file MB", "weights MB/token", "BW util", "BW-bound tok/s", "note"],
                    "rows": rows, "notes": notes}],
        "raw": stored, "wall_seconds": time.time() - t_start,
    }
    write_result("runtime_speed", result)
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
