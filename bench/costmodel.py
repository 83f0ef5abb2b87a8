"""The cost model against measurement on this host: leave-one-out decode predictions for every runtime row of
bench/runtime_speed.py, and the calibrated predictions for the built-in device profiles.

For each measured (runtime, bit width) row, the cost model is calibrated on every *other* row (leave-one-out)
and predicts the row's decode tok/s from its bytes per token; the error is (predicted − measured) / measured.
Two models side by side:
  cost model     t = layers × per-token overhead (per runtime) + roofline / bandwidth efficiency (one for the machine,
                 fitted across all runtimes' rows: ``fit_decode_pooled``);
  one-factor     t = roofline / efficiency, efficiency = geometric mean of the runtime's other rows (the first model).
Reads bench/results/runtime_speed.json (run that first); the host's fp32 matmul throughput is measured here
(seconds), its bandwidth is the median of the bandwidths measured beside the speed rows. Each leave-one-out
row carries the measured_at of the speed row it predicts; held-out rows the time they were measured.
Writes bench/results/costmodel.json; run from the repository root:
    .venv/bin/python -m bench.costmodel [--heldout]      (after bench.runtime_speed, and bench.prune for --heldout)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

from bench._common import RESULTS, now_utc, write_result

KV_ELEM = {"llama.cpp": 2}   # f16 KV cache in llama.cpp; fp32 elsewhere


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


HELDOUT_ROWS = (("torch", "fp32"), ("llama.cpp", "f32"), ("llama.cpp", "q8_0"), ("llama.cpp", "q4_0"),
                ("onnxruntime", "fp32"), ("onnxruntime", "int8"))


def heldout_artifact(name: str, folder, runtime: str, kind: str, work: Path) -> str:
    """What ``bench`` opens for one held-out row: the model folder (torch) or its GGUF/ONNX export."""
    from edgellm.exporters import export

    if runtime == "torch":
        return str(folder)
    if runtime == "llama.cpp":
        out = work / f"{name}-{kind}.gguf"
        if not out.exists():
            export(str(folder), "gguf", out, verify=False, gguf_type=kind)
        return str(out)
    out = work / f"{name}-{kind}.onnx"
    if not out.exists():
        export(str(folder), "onnx", out, verify=False, variant=kind)
    return str(out)


def heldout(a, host) -> dict | None:
    """Calibrate on SmolLM2 and predict *other* models, the way ``optimize`` uses the cost model.

    In one session, alternating model by model: SmolLM2 itself and bench/prune.py's depth- and width-pruned
    students, each on torch fp32, llama.cpp F32/Q8_0/Q4_0 and ONNX Runtime fp32/int8. The cost model is
    calibrated on SmolLM2's rows only and predicts the pruned models' rows (different layer counts, widths
    and bytes) before comparing them with their measurement.
    """
    from edgellm.measure import bench
    from edgellm.devices.costmodel import Calibration, predict, prediction_error
    from edgellm.devices.stats import stats_from_model
    from edgellm.models import cache_dir, load

    models = {"smollm2-135m": "smollm2-135m"}
    for name in ("depth25", "width25"):
        folder = cache_dir() / "bench-prune" / "models" / name
        if (folder / "config.json").exists():
            models[name] = folder
    if len(models) < 2:
        print("held-out models: run `python -m bench.prune` first (no pruned models in its cache)")
        return None
    work = cache_dir() / "bench" / "costmodel-heldout"
    work.mkdir(parents=True, exist_ok=True)
    rows_path = work / "rows.json"
    stored = json.loads(rows_path.read_text()) if rows_path.exists() and not a.fresh else {}
    for runtime, kind in HELDOUT_ROWS:                      # row by row, every model in turn: drift hits all alike
        for name, folder in models.items():
            key = f"{name}|{runtime}|{kind}"
            if key in stored:
                continue
            spec = heldout_artifact(name, folder, runtime, kind, work)
            stored[key] = {**bench(spec, runtime=runtime, threads=a.threads, runs=a.runs).to_dict(), "measured_at": now_utc()}
            rows_path.write_text(json.dumps(stored, indent=1, default=str))
            print(key, round(stored[key]["speed"]["decode_tok_s"]["median"], 2), flush=True)
    nets = {name: load(str(folder)).model for name, folder in models.items()}
    beside = [b["machine"]["measured_bandwidth_GBps"] for b in stored.values() if (b.get("machine") or {}).get("measured_bandwidth_GBps")]
    if beside:                                  # the bandwidth of this session, measured beside these rows
        host = dataclasses.replace(host, mem_bandwidth_GBps=statistics.median(beside))
    stats, cal = {}, Calibration()
    for key, b in stored.items():
        name, runtime, kind = key.split("|")
        s = b["speed"]
        stats[key] = stats_from_model(nets[name], kind, s["weight_bytes"], s["weight_bytes"], b["file_bytes"],
                                      kv_elem_bytes=KV_ELEM.get(runtime, 4))
        if name == "smollm2-135m":
            cal.add(runtime, stats[key], host, s["decode_tok_s"]["median"], s["prefill_tok_s"]["median"], 128, None,
                    256, label=key)
    table, errors = [], []
    for key, b in stored.items():
        name, runtime, kind = key.split("|")
        if name == "smollm2-135m":
            continue
        meas = b["speed"]["decode_tok_s"]["median"]
        p = predict(stats[key], host, runtime, cal, 128, 128)
        err = prediction_error(p.decode_tok_s, meas)
        errors.append(abs(err))
        base = stored[f"smollm2-135m|{runtime}|{kind}"]["speed"]["decode_tok_s"]["median"]
        table.append({"model": name, "runtime": runtime, "kind": kind, "layers": stats[key].n_layers,
                      "MB/token": round(stats[key].weight_bytes_per_token / 1e6, 1),
                      "decode measured": round(meas, 2), "predicted": round(p.decode_tok_s, 2), "error": pct(err),
                      "× SmolLM2 measured": round(meas / base, 2), "× predicted": round(p.decode_tok_s / base, 2),
                      **({"measured_at": b["measured_at"]} if b.get("measured_at") else {})})
    worst = max(errors)
    return {"title": "held-out models: calibrated on SmolLM2, predicting the pruned students (same session)",
            "columns": [c for c in table[0] if c != "measured_at"], "rows": table,
            "notes": [f"cost model calibrated on SmolLM2's {len(HELDOUT_ROWS)} rows measured in the same run; worst "
                      f"error on {len(errors)} held-out rows {100 * worst:.1f}% → "
                      f"{'within' if worst <= 0.25 else 'NOT within'} 25%",
                      "× columns: speed-up over SmolLM2 on the same runtime and kind, measured and predicted"],
            "raw": {"rows": stored, "errors": errors, "calibration": cal.to_dict()}}


def main() -> None:
    from edgellm.devices.costmodel import Calibration, predict, prediction_error, roofline
    from edgellm.devices.detect import detect_host
    from edgellm.devices.profiles import builtin_profiles
    from edgellm.devices.stats import stats_from_model
    from edgellm.models import load

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", default=str(RESULTS / "runtime_speed.json"))
    ap.add_argument("--heldout", action="store_true", help="also measure and predict the pruned models (about 20 min)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fresh", action="store_true", help="re-measure the held-out rows")
    a = ap.parse_args()
    t0 = time.time()
    speed = json.loads(Path(a.speed).read_text())
    rows = {k: v["bench"] for k, v in speed["raw"].items() if v.get("ok")}
    when = {k: v["measured_at"] for k, v in speed["raw"].items() if v.get("ok") and v.get("measured_at")}
    if len(rows) < 2:
        raise SystemExit("bench/results/runtime_speed.json has fewer than 2 measured rows: run `python -m bench.runtime_speed`")
    model = load("smollm2-135m").model
    measured_host = detect_host(threads=a.threads)
    bw = statistics.median(b["machine"]["measured_bandwidth_GBps"] for b in rows.values())
    host = dataclasses.replace(measured_host, mem_bandwidth_GBps=bw)
    prompt, new = 128, 128
    stats, cal = {}, Calibration()
    for key, b in rows.items():
        runtime = key.split("|")[0]
        s = b["speed"]
        stats[key] = stats_from_model(model, key.replace("|", "-"), s["weight_bytes"], s["weight_bytes"], b["file_bytes"],
                                      kv_elem_bytes=KV_ELEM.get(runtime, 4))
        cal.add(runtime, stats[key], host, s["decode_tok_s"]["median"], s["prefill_tok_s"]["median"], prompt,
                None, prompt + new, label=key)
    table, errors, old_errors = [], [], []
    for key, b in rows.items():
        runtime = key.split("|")[0]
        meas = b["speed"]["decode_tok_s"]["median"]
        loo = cal.without(key)
        p = predict(stats[key], host, runtime, loo, prompt, new)
        eff = loo.factors(runtime, stats[key].kind)
        others = [r["decode"] for k, v in loo.samples.items() if k.startswith(runtime + "|") for r in v if r["decode"]]
        one = (math.exp(sum(map(math.log, others)) / len(others)) / roofline(stats[key], host, prompt)["decode_s"]
               if others else None)
        err = prediction_error(p.decode_tok_s, meas) if p.calibrated else None
        old = prediction_error(one, meas) if one else None
        if err is not None:
            errors.append(abs(err))
        if old is not None:
            old_errors.append(abs(old))
        table.append({"runtime": runtime, "bits": key.split("|")[1], "MB/token": round(stats[key].weight_bytes_per_token / 1e6, 1),
                      "decode measured": round(meas, 2),
                      "cost model LOO": round(p.decode_tok_s, 2) if p.calibrated else None,
                      "error": pct(err) if err is not None else "no other row",
                      "fit (other rows)": eff.decode_fit,
                      "one-factor LOO": round(one, 2) if one else None, "one-factor error": pct(old) if old is not None else None,
                      **({"measured_at": when[key]} if key in when else {})})      # of the measured speed row
    fits = []
    runtimes = sorted({k.split("|")[0] for k in rows})
    for runtime in runtimes:
        eff = cal.factors(runtime, "*")
        fits.append({"runtime": runtime, "rows": sum(1 for k in rows if k.startswith(runtime + "|")), "fit": eff.decode_fit,
                     "overhead ms/token/layer": round(1e3 * eff.decode_overhead_layer_s, 3), "bandwidth efficiency (shared)": round(eff.decode, 3)})
    devices = []
    for name, prof in builtin_profiles().items():
        row = {"device (PREDICTED)": name, "GB/s": prof.mem_bandwidth_GBps}
        for key in rows:
            runtime = key.split("|")[0]
            if runtime in prof.runtimes:
                row[key] = round(predict(stats[key], prof, runtime, cal, prompt, new).decode_tok_s, 1)
        devices.append(row)
    worst = max(errors) if errors else None
    notes = [f"host: {measured_host.description}; bandwidth {bw:.1f} GB/s (median beside the speed rows), fp32 "
             f"{measured_host.fp32_gflops:.0f} GFLOP/s measured now; {a.threads} threads",
             f"target: host decode predictions within 25%: worst cost-model leave-one-out error "
             f"{100 * worst:.1f}% over {len(errors)} rows → {'met' if worst is not None and worst <= 0.25 else 'NOT met'}"
             if worst is not None else "no row had another row of its runtime to calibrate on",
             f"worst one-factor (old model) leave-one-out error {100 * max(old_errors):.1f}%" if old_errors else ""]
    result = {
        "title": "Cost model: decode prediction vs measurement on this host (leave-one-out)",
        "description": "Each runtime_speed row predicted by the cost model calibrated on all the other rows. "
                       "Cost model: t = layers × overhead (per runtime) + roofline / bandwidth efficiency (one for the machine, "
                       "fitted across runtimes); one-factor (the first model): t = roofline / efficiency per runtime. "
                       "Device rows are predictions from the full host calibration.",
        "machine": speed.get("machine"),
        "tables": [{"title": "leave-one-out decode predictions on this host",
                    "columns": [c for c in table[0] if c != "measured_at"], "rows": table,
                    "notes": [n for n in notes if n]},
                   {"title": "calibrated decode parameters per runtime (all rows)", "columns": list(fits[0]), "rows": fits,
                    "notes": []},
                   {"title": "PREDICTED decode tok/s on the built-in device profiles (SmolLM2-135M)",
                    "columns": ["device (PREDICTED)", "GB/s"] + list(rows), "rows": devices,
                    "notes": ["predictions, not measurements: host calibration scaled by each profile's bandwidth and "
                              "fp32 throughput; blank = runtime not on that device"]}],
        "raw": {"errors": errors, "old_errors": old_errors, "bandwidth_GBps": bw, "fp32_gflops": measured_host.fp32_gflops,
                "calibration": cal.to_dict()},
        "wall_seconds": time.time() - t0,
    }
    old = RESULTS / "costmodel.json"
    prev = json.loads(old.read_text()) if old.exists() else {}
    held = heldout(a, host) if a.heldout else next(                 # without --heldout: keep the last measured one
        (dict(t, raw=prev.get("raw", {}).get("heldout")) for t in prev.get("tables", []) if t["title"].startswith("held-out")),
        None)
    if held:
        result["tables"].insert(1, {k: v for k, v in held.items() if k != "raw"})
        if held.get("raw"):
            result["raw"]["heldout"] = held["raw"]
    write_result("costmodel", result, machine=result["machine"])
    for t in result["tables"][:2]:
        for r in t["rows"]:
            print(r)
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
