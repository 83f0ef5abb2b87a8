"""Peer comparison in one run: llama.cpp's own quantizer vs edgellm's GPTQ/AWQ written into the same GGUF types.

From the same fp32 SmolLM2 (``edgellm.load("smollm2-135m")``):
  (a) export an F32 GGUF, then ``llama_model_quantize`` to Q4_0 and Q8_0, and to Q4_0 with an
      importance matrix computed on wiki.valid (never the test file);
  (b) edgellm GPTQ (and AWQ when the quantize package has it), symmetric 4-bit g32 -> Q4_0 and
      8-bit g32 -> Q8_0, codes and scales written straight into the blocks.
Every file: perplexity through llama.cpp on the standard protocol (wiki.test.raw, ctx 512,
20,480 tokens), size on disk, tensor types, decode and prefill tok/s (``edgellm.measure``, 2
threads, median of 5; the two Q4_0 files are benchmarked alternately once more and the ratio is
quoted). Writes bench/results/gguf_vs_llamacpp.json and re-renders docs/benchmarks.md.

Run from the repository root (heavy: under the lock):
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.gguf_vs_llamacpp --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import time
from pathlib import Path

import torch

from bench._common import RESULTS, invocation, now_utc, write_result
from edgellm.api import evaluate
from edgellm.data import WIKI_VALID, calibration_windows, data_file
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.llamacpp_quant import importance_matrix, llama_quantize, tensor_types
from edgellm.measure import bench, machine_info
from edgellm.models import cache_dir, load

QTYPE = {4: "q4_0", 8: "q8_0"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--imatrix-samples", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--q4-repeats", type=int, default=1, help="extra alternating speed rounds for the two Q4_0 files")
    ap.add_argument("--variants", default="gptq:4,gptq:8", help="edgellm method:bits to include")
    ap.add_argument("--work", default=str(cache_dir() / "bench" / "gguf_vs_llamacpp"))
    ap.add_argument("--model", default="smollm2-135m", help="fp32 source (a tiny folder for a dry run)")
    ap.add_argument("--out", default=str(RESULTS / "gguf_vs_llamacpp.json"))
    ap.add_argument("--speed-only", action="store_true",
                    help="re-measure only the two Q4_0 files (--q4-repeats alternating rounds) on top of --out")
    ap.add_argument("--q4-reset", action="store_true",
                    help="with --speed-only: drop the pair's earlier speed rounds instead of adding to them")
    ap.add_argument("--paired", type=int, default=40,
                    help="rounds of the paired check: both Q4_0 files loaded in one process, run in turn (0: skip)")
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(args, ap)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}         # label -> {"path", "quantizer", "type", ...}
    timings: dict[str, float] = {}

    log("load fp32 SmolLM2")
    fp32 = load(args.model)
    t = time.time()
    try:
        f32 = export(fp32, "gguf", work / "f32.gguf", gguf_type="f32", force=True, threads=args.threads)
        verification = f32.verification
    except EdgeLLMError as e:
        log(f"F32: verification FAILED: {e}")
        f32 = export(fp32, "gguf", work / "f32.gguf", gguf_type="f32", force=True, verify=False)
        verification = {"passed": False, "error": str(e), "ppl": {}}
    timings["export f32 (+verify)"] = time.time() - t
    files["F32 (edgellm export)"] = {"path": f32.path, "quantizer": "-", "type": "F32", "verification": verification}
    log(f"f32 export: {json.dumps(verification['ppl'])}")

    t = time.time()
    calib = calibration_windows(fp32.tokenizer, data_file(WIKI_VALID), args.imatrix_samples, args.calib_len)
    imatrix = importance_matrix(fp32.model, calib)
    timings[f"imatrix ({args.imatrix_samples}x512 tokens of wiki.valid)"] = time.time() - t
    for qtype, im in (("q4_0", None), ("q8_0", None), ("q4_0", imatrix)):
        label = f"{qtype.upper()} llama.cpp" + (" + imatrix" if im else "")
        t = time.time()
        path = llama_quantize(f32.path, work / f"llamacpp-{qtype}{'-imatrix' if im else ''}.gguf", qtype,
                              imatrix=im, threads=args.threads, force=True)
        timings[f"llama_model_quantize {label}"] = time.time() - t
        files[label] = {"path": path, "quantizer": "llama.cpp " + ("(imatrix)" if im else "(RTN)"), "type": qtype.upper()}

    from edgellm.calibconfig import CalibConfig
    from edgellm.quantization import QuantConfig, quantize

    for variant in [v for v in args.variants.split(",") if v]:
        method, bits = variant.split(":")[0], int(variant.split(":")[1])
        # the best GPTQ setting of bench/quantize.py (with AWQ's prescale below 8 bits)
        best = dict(act_order=True, static_groups=True, mse_clip=True, awq_prescale=bits < 8) if method == "gptq" else {}
        cfg = QuantConfig(method=method, bits=bits, group_size=32, symmetric=True,
                          calib=CalibConfig(samples=args.calib_samples, seq_len=args.calib_len), **best)
        label = f"{QTYPE[bits].upper()} edgellm {method.upper()}" + (" (+AWQ prescale)" if best.get("awq_prescale") else "")
        m = load(args.model)
        t = time.time()
        quantize(m, cfg, progress=False)
        timings[f"quantize {label} ({args.calib_samples}x{args.calib_len} calib)"] = time.time() - t
        t = time.time()
        out = work / f"edgellm-{method}-{QTYPE[bits]}.gguf"
        try:
            r = export(m, "gguf", out, gguf_type=QTYPE[bits], force=True, threads=args.threads)
            verification = r.verification
        except EdgeLLMError as e:     # keep measuring, and say so in the results
            log(f"{label}: verification FAILED: {e}")
            r = export(m, "gguf", out, gguf_type=QTYPE[bits], force=True, verify=False)
            verification = {"passed": False, "error": str(e), "ppl": {}}
        timings[f"export {label} (+verify)"] = time.time() - t
        files[label] = {"path": r.path, "quantizer": f"edgellm {cfg.describe()}", "type": QTYPE[bits].upper(),
                        "how": r.details["how"], "verification": verification}
        if method == "gptq" and bits == 4:   # the same quantized weights in PyTorch, for the 1% claim
            t = time.time()
            tp = evaluate(m, ctx=args.ctx, max_tokens=args.max_tokens, threads=args.threads, runtime="torch")
            timings["PyTorch ppl of the GPTQ 4-bit weights"] = time.time() - t
            files[label]["torch_ppl"] = tp.perplexity.perplexity
        log(f"{label}: {json.dumps(verification['ppl'])}")
        del m

    for label, f in files.items():
        t = time.time()
        ev = evaluate(str(f["path"]), ctx=args.ctx, max_tokens=args.max_tokens, threads=args.threads)
        f["ppl"] = ev.perplexity.to_dict()
        f["bytes"] = Path(f["path"]).stat().st_size
        f["tensor_types"] = tensor_types(f["path"])
        f["measured_at"] = now_utc()
        timings[f"ppl {label}"] = time.time() - t
        log(f"{label}: ppl {f['ppl']['perplexity']:.4f} ({f['ppl']['n_tokens']} tokens), {f['bytes']} bytes")

    # speed: each file once; then the two plain Q4_0 files alternately, --q4-repeats more times
    speed: dict[str, list] = {label: [] for label in files}
    run_speed(files, speed, list(files), args, timings)
    finish(args, files, speed, timings, t_start, run_paired(files, args, timings))


def q4_pair(files: dict) -> list:
    return ["Q4_0 llama.cpp", next((k for k in files if k.startswith("Q4_0 edgellm")), None)]


def run_speed(files: dict, speed: dict, order: list, args, timings: dict) -> None:
    """Bench *order*'s files, then the two Q4_0 files alternately ``--q4-repeats`` times (appending to *speed*).

    The pair's order flips every round (A B, B A, ...): an earlier run with llama.cpp's file first in all six
    rounds measured ours 8% slower; flipping the order, the same two files measured 5% faster."""
    pair = [x for x in q4_pair(files) if x]
    order = order + [x for i in range(args.q4_repeats) for x in (pair if i % 2 == 0 else pair[::-1])]
    for label in order:
        t = time.time()
        b = bench(str(files[label]["path"]), threads=args.threads, runs=args.runs, machine=False).to_dict()
        speed[label].append(b)
        files[label]["measured_at"] = now_utc()
        timings.setdefault(f"bench {label}", 0.0)
        timings[f"bench {label}"] += time.time() - t
        log(f"bench {label}: decode {b['speed']['decode_tok_s']['median']:.1f} tok/s, "
            f"prefill {b['speed']['prefill_tok_s']['median']:.1f} tok/s")


def run_paired(files: dict, args, timings: dict) -> dict | None:
    """The two Q4_0 files loaded side by side in this process and run in turn, ``--paired`` rounds.

    Separate subprocesses, even alternated, leave each file's runs in different minutes of a shared machine;
    here every round runs both on the same prompt back to back, and the per-round ratio cancels what the
    machine was doing."""
    pair = q4_pair(files)
    if not args.paired or not all(pair):
        return None
    from edgellm.measure import measure_paired
    from edgellm.runtimes import open_runtime

    t = time.time()
    runtimes = {label: open_runtime(str(files[label]["path"]), threads=args.threads) for label in pair}
    r = measure_paired(runtimes, rounds=args.paired, prompt_len=128, new_tokens=128)
    timings["paired Q4_0"] = time.time() - t
    for label in pair:
        files[label]["measured_at"] = now_utc()
    for kind in ("decode", "prefill"):
        q = r["ratios"][pair[1]][kind]
        log(f"paired {kind}: edgellm / llama.cpp median {q['median']:.3f} (IQR {q['q1']:.3f}-{q['q3']:.3f})")
    return r


def speed_only(args, parser) -> None:
    """Re-measure only the two Q4_0 files (alternating, ``--q4-repeats`` rounds) on top of a saved result."""
    import shlex

    prev = json.loads(Path(args.out).read_text())
    first = re.split(r"gguf_vs_llamacpp(?:\.py)?", prev["command"].split(";")[0], maxsplit=1)[1]
    settings = vars(parser.parse_args(shlex.split(first)))      # the settings the saved files were made with
    for k in ("calib_samples", "imatrix_samples", "calib_len", "ctx", "max_tokens"):
        setattr(args, k, settings[k])
    files = {label: dict(f) for label, f in prev["raw"].items()}
    speed = {label: [{"speed": s} for s in runs] for label, runs in prev["speed_raw"].items()}
    if args.q4_reset:                                              # forget the pair's earlier rounds
        for label in q4_pair(files):
            if label:
                speed[label] = []
    timings = dict(prev.get("timings_s", {}))
    t_start = time.time() - prev.get("wall_seconds", 0.0)
    run_speed(files, speed, [], args, timings)
    paired = run_paired(files, args, timings) or prev.get("paired")
    base = prev["command"].split(";")[0] if args.q4_reset else prev["command"]
    args.command = base + "; " + shlex.join(invocation())
    finish(args, files, speed, timings, t_start, paired)


def finish(args, files: dict, speed: dict, timings: dict, t_start: float, paired: dict | None = None) -> None:
    machine = machine_info(bandwidth=True)

    base = files["F32 (edgellm export)"]["ppl"]["perplexity"]
    rows = []
    for label, f in files.items():
        runs = speed[label]
        dec = statistics.median(r["speed"]["decode_tok_s"]["median"] for r in runs)
        pre = statistics.median(r["speed"]["prefill_tok_s"]["median"] for r in runs)
        ppl = f["ppl"]["perplexity"]
        rows.append({
            "file": label, "quantizer": f["quantizer"], "GGUF type": f["type"],
            "tensor types": ", ".join(f"{k}×{v}" for k, v in sorted(f["tensor_types"].items())),
            "size MiB": round(f["bytes"] / 2**20, 2), "perplexity": round(ppl, 4),
            "Δppl vs F32": round(ppl - base, 4), "decode tok/s": round(dec, 1), "prefill tok/s": round(pre, 1),
            "PyTorch ppl (same weights)": round(f["torch_ppl"], 4) if "torch_ppl" in f else None,
            "BW util": f"{100 * dec * runs[0]['speed']['weight_bytes'] / (machine['measured_bandwidth_GBps'] * 1e9):.1f}%",
            **({"measured_at": f["measured_at"]} if f.get("measured_at") else {}),    # its last measurement
        })
    by = {r["file"]: r for r in rows}
    notes, target = [], {}
    ours = q4_pair(files)[1]
    if ours and "Q4_0 llama.cpp" in by:
        a, b = by["Q4_0 llama.cpp"], by[ours]
        pa = [r["speed"]["decode_tok_s"]["median"] for r in speed["Q4_0 llama.cpp"]]
        pb = [r["speed"]["decode_tok_s"]["median"] for r in speed[ours]]
        qa = [r["speed"]["prefill_tok_s"]["median"] for r in speed["Q4_0 llama.cpp"]]
        qb = [r["speed"]["prefill_tok_s"]["median"] for r in speed[ours]]
        target = {
            "edgellm_q4_0_increase": b["Δppl vs F32"], "llamacpp_q4_0_increase": a["Δppl vs F32"],
            "increase_ratio": b["Δppl vs F32"] / a["Δppl vs F32"] if a["Δppl vs F32"] else None,
            "size_ratio": files[ours]["bytes"] / files["Q4_0 llama.cpp"]["bytes"],
            "decode_ratio_subprocesses": statistics.median(pb) / statistics.median(pa),
            "prefill_ratio_subprocesses": statistics.median(qb) / statistics.median(qa),
            "decode_runs_alternating": {"llama.cpp": pa, "edgellm": pb},
        }
        if paired:                  # the paired check is the better design; the subprocess ratios stay beside it
            target["speed_from"] = f"paired, {paired['rounds']} rounds in one process (median per-round ratio)"
            target["decode_ratio"] = paired["ratios"][ours]["decode"]["median"]
            target["prefill_ratio"] = paired["ratios"][ours]["prefill"]["median"]
        else:
            target["speed_from"] = f"{len(pa)} alternating subprocess benches each (ratio of medians)"
            target["decode_ratio"] = target["decode_ratio_subprocesses"]
            target["prefill_ratio"] = target["prefill_ratio_subprocesses"]
        target["met"] = bool(target["increase_ratio"] is not None and target["increase_ratio"] <= 0.5
                             and abs(target["size_ratio"] - 1) <= 0.05 and abs(target["decode_ratio"] - 1) <= 0.05
                             and abs(target["prefill_ratio"] - 1) <= 0.05)
        notes.append(f"Target: edgellm Q4_0 perplexity increase ≤ ½ of llama.cpp's Q4_0 increase at the same size and "
                     f"speed (±5%). Measured: {b['Δppl vs F32']:+.3f} vs {a['Δppl vs F32']:+.3f} "
                     f"(ratio {target['increase_ratio']:.2f}); size ratio {target['size_ratio']:.4f}; decode ratio "
                     f"{target['decode_ratio']:.3f} and prefill ratio {target['prefill_ratio']:.3f} "
                     f"({target['speed_from']}). {'MET' if target['met'] else 'NOT MET'}.")
    notes += [
        "Perplexity: wikitext-2 test, non-overlapping windows of 512, first 20,480 tokens, through llama.cpp "
        "(edgellm.api.evaluate on the .gguf); tokenization by the GGUF's embedded tokenizer, checked equal to the "
        "source tokenizer at export.",
        "Speed: edgellm.measure in a fresh subprocess, 2 threads, greedy 128 new tokens after a 128-token prompt, "
        "median of 5 runs after 1 warm-up; Q4_0 rows are the median over their alternating repeats, the pair's order flipped every round (A B, B A, ...).",
        "Source: SmolLM2-135M-Instruct as shipped (a Q4_1 GGUF, dequantized to fp32): its linear weights already lie "
        "on a 4-bit asymmetric g32 grid, which favours Q4_1 and makes Q8_0 nearly lossless.",
        f"edgellm GPTQ/AWQ calibration: {args.calib_samples}×{args.calib_len} wiki.valid tokens, symmetric, group 32; "
        "the embedding (tied output head) is Q8_0 round-to-nearest in every quantized file, as llama.cpp chooses.",
        f"imatrix: mean x² per input column of every linear over {args.imatrix_samples}×{args.calib_len} wiki.valid tokens, "
        "computed with edgellm's calibration runner and passed to llama_model_quantize.",
    ]
    result = {
        "title": "GGUF: llama.cpp's quantizer vs edgellm GPTQ/AWQ in the same block types (SmolLM2-135M)",
        "description": "One run from the same fp32 SmolLM2: llama.cpp's llama_model_quantize (with and without an "
                       "importance matrix) against edgellm's calibrated quantizers whose integer codes and fp16 scales "
                       "are written straight into Q4_0/Q8_0 blocks. All files run in llama.cpp.",
        "machine": machine,
        "tables": [{"title": "Perplexity, size and speed through llama.cpp (2 threads)",
                    "columns": ["file", "quantizer", "GGUF type", "size MiB", "perplexity", "Δppl vs F32",
                                "PyTorch ppl (same weights)", "decode tok/s", "prefill tok/s", "BW util", "tensor types"],
                    "rows": rows, "notes": notes}] + paired_table(paired, ours),
        "target": target,
        "raw": {label: {k: v for k, v in f.items() if k != "path"} | {"path": str(f["path"])} for label, f in files.items()},
        "speed_raw": {label: [r["speed"] for r in runs] for label, runs in speed.items()},
        "paired": paired,
        "timings_s": timings, "wall_seconds": time.time() - t_start,
    }
    write_result(args.out, result, machine=machine, command=getattr(args, "command", None))
    for r in rows:
        print(r)
    print(json.dumps(target, indent=1, default=str))


def paired_table(paired: dict | None, ours: str | None) -> list:
    if not paired or not ours:
        return []
    ref = paired["reference"]
    rows = []
    for kind in ("decode", "prefill"):
        q = paired["ratios"][ours][kind]
        a, b = paired["runs"][ref][kind], paired["runs"][ours][kind]
        rows.append({"phase": kind, f"{ref} tok/s (median)": round(statistics.median(a), 1),
                     f"{ours} tok/s (median)": round(statistics.median(b), 1),
                     "ratio (median of rounds)": round(q["median"], 3),
                     "interquartile range": f"{q['q1']:.3f}-{q['q3']:.3f}",
                     "rounds within ±5%": f"{sum(abs(x - 1) <= 0.05 for x in q['per_round'])}/{len(q['per_round'])}"})
    return [{"title": "The Q4_0 pair, paired: both files in one process, run in turn",
             "columns": list(rows[0]), "rows": rows,
             "notes": [f"{paired['rounds']} rounds; each round runs both files once on the same {paired['prompt_tokens']}-"
                       f"token prompt then {paired['new_tokens']} greedy tokens, the order flipped every round; "
                       "ratio = ours ÷ llama.cpp's in the same round. The subprocess benches above leave each "
                       "file's runs in different minutes of a shared machine."]}]


if __name__ == "__main__":
    main()
