"""The cost model against measurement on this host: leave-one-out decode predictions for every runtime row of
bench/runtime_speed.py, and the calibrated predictions for the built-in device profiles.

For each measured (runtime, bit width) row, the cost model is calibrated on every *other* row (leave-one-out)
and predicts the row's decode tok/s from its bytes per token; the error is (predicted − measured) / measured.
Two models side by side:
  cost model     t = per-token overhead (per runtime) + roofline / bandwidth efficiency (one for the machine,
                 fitted across all runtimes' rows: ``fit_decode_pooled``);
  one-factor     t = roofline / efficiency, efficiency = geometric mean of the runtime's other rows (the first model).
Reads bench/results/runtime_speed.json (run that first); the host's fp32 matmul throughput is measured here
(seconds), its bandwidth is the median of the bandwidths measured beside the speed rows.
Writes bench/results/costmodel.json:
    .venv/bin/python bench/costmodel.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import ROOT, render  # noqa: E402

KV_ELEM = {"llama.cpp": 2}   # f16 KV cache in llama.cpp; fp32 elsewhere


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def main() -> None:
    from edgellm.devices.costmodel import Calibration, predict, prediction_error, roofline
    from edgellm.devices.detect import detect_host
    from edgellm.devices.profiles import builtin_profiles
    from edgellm.devices.stats import stats_from_model
    from edgellm.fileio import write_json
    from edgellm.models import load

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", default=str(ROOT / "bench" / "results" / "runtime_speed.json"))
    a = ap.parse_args()
    t0 = time.time()
    speed = json.loads(Path(a.speed).read_text())
    rows = {k: v["bench"] for k, v in speed["raw"].items() if v.get("ok")}
    if len(rows) < 2:
        raise SystemExit("bench/results/runtime_speed.json has fewer than 2 measured rows: run bench/runtime_speed.py")
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
                      "one-factor LOO": round(one, 2) if one else None, "one-factor error": pct(old) if old is not None else None})
    fits = []
    runtimes = sorted({k.split("|")[0] for k in rows})
    for runtime in runtimes:
        eff = cal.factors(runtime, "*")
        fits.append({"runtime": runtime, "rows": sum(1 for k in rows if k.startswith(runtime + "|")), "fit": eff.decode_fit,
                     "overhead ms/token": round(1e3 * eff.decode_overhead_s, 2), "bandwidth efficiency (shared)": round(eff.decode, 3)})
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
        "command": "python bench/costmodel.py  (after bench/runtime_speed.py)",
        "description": "Each runtime_speed row predicted by the cost model calibrated on all the other rows. "
                       "Cost model: t = overhead (per runtime) + roofline / bandwidth efficiency (one for the machine, "
                       "fitted across runtimes); one-factor (the first model): t = roofline / efficiency per runtime. "
                       "Device rows are predictions from the full host calibration.",
        "machine": speed.get("machine"),
        "tables": [{"title": "leave-one-out decode predictions on this host", "columns": list(table[0]), "rows": table,
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
    write_json(ROOT / "bench" / "results" / "costmodel.json", result)
    render()
    for t in result["tables"][:2]:
        for r in t["rows"]:
            print(r)
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
