"""Quantization benchmark: SmolLM2-135M, wikitext-2 test, ctx 512, first 20,480 tokens (docs/design.md §4).

For each setting: perplexity, KL(fp32 ‖ quantized) and top-1 agreement on the same windows,
quantization wall time, bits per weight (scales and zeros included) and the kernels used. Then
decode tok/s for fp32 / W8 / W4 / W8A8, measured alternately in one run (ratios quoted per
round). Every pass is ``edgellm.evaluation.evaluate_lm`` (the one perplexity loop); the fp32
reference log-probs are computed once and kept in a float32 memmap in /tmp (``CachedReference``).
Each heavy step takes the shared lock /tmp/edgellm-heavy.lock. Results are written after every
step to bench/results/quantize.json (and docs/benchmarks.md), so a partial run still reports.

Run from the repository root: .venv/bin/python -m bench.quantize --threads 2 [--only NAME ...] [--calib-samples 32]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgellm
from bench._common import RESULTS, invocation, stamp, write_result
from edgellm.calibconfig import CalibConfig
from edgellm.data import WIKI_TEST, data_file, tokenize_file
from edgellm.evaluation.perplexity import evaluate_lm, windows
from edgellm.measure.latency import fixed_prompt, one_run
from edgellm.measure.machine import machine_info
from edgellm.quantization import QuantConfig, quantize
from edgellm.runtimes.torch import TorchRuntime

OUT = RESULTS / "quantize.json"
LOCK = "/tmp/edgellm-heavy.lock"

# name, target note, QuantConfig fields
GPTQ = dict(method="gptq", act_order=True, static_groups=True, mse_clip=True)
SETTINGS = [   # in priority order: a partial run reports the most important rows first
    ("W8 per-channel RTN", "≤ +0.5%", dict(method="rtn", bits=8)),
    ("W4 g32 sym GPTQ", "≤ +10% (best of GPTQ/AWQ)", dict(GPTQ, bits=4, group_size=32)),
    ("W4 g64 asym GPTQ", "≤ +12%", dict(GPTQ, bits=4, group_size=64, symmetric=False)),
    ("W3 g32 asym GPTQ", "≤ +60%", dict(GPTQ, bits=3, group_size=32, symmetric=False)),
    ("W4 g32 sym RTN (Q4_0 grid)", "RTN measured before: +35%", dict(method="rtn", bits=4, group_size=32)),
    ("W4 g32 sym AWQ", "≤ +10% (best of GPTQ/AWQ)", dict(method="awq", bits=4, group_size=32)),
    ("W8A8 per-channel RTN (dynamic per-token int8 activations)", "-", dict(method="rtn", bits=8, act_bits=8)),
    ("W4 g64 asym RTN", "RTN measured before: +44%", dict(method="rtn", bits=4, group_size=64, symmetric=False)),
    ("W3 g32 asym RTN", "RTN measured before: +350%", dict(method="rtn", bits=3, group_size=32, symmetric=False)),
    ("W4 g32 sym GPTQ+AWQ prescale", "≤ +10% (best of GPTQ/AWQ)", dict(GPTQ, bits=4, group_size=32, awq_prescale=True)),
    ("W3 g32 asym GPTQ+AWQ prescale", "≤ +60%", dict(GPTQ, bits=3, group_size=32, symmetric=False, awq_prescale=True)),
    ("W4 g64 asym GPTQ+AWQ prescale", "≤ +12%", dict(GPTQ, bits=4, group_size=64, symmetric=False, awq_prescale=True)),
    ("W4 g32 asym RTN (the grid the model shipped in: not evidence)", "-",
     dict(method="rtn", bits=4, group_size=32, symmetric=False)),
]
SPEED = {"fp32": None, "W8": dict(bits=8), "W4 g32 sym": dict(bits=4, group_size=32), "W8A8": dict(bits=8, act_bits=8)}


@contextlib.contextmanager
def heavy_lock():
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CachedReference:
    """The fp32 model's log-probs per window, kept in a float32 memmap, as a runtime for ``evaluate_lm``.

    With *inner*, ``logits`` runs it and records each window's log-probs (the reference pass); without,
    it answers from the memmap (every candidate's pass, and a ``--reuse-ref`` run)."""

    name = "fp32 (cached log-probs)"

    def __init__(self, mm, wins: list[torch.Tensor], inner=None):
        self.mm, self.inner = mm, inner
        self.index = {w.data_ptr(): i for i, w in enumerate(wins)}

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        i = self.index[w.data_ptr()]
        if self.inner is not None:
            lp = F.log_softmax(self.inner.logits(w)[:-1].float(), dim=-1)
            self.mm[i] = lp.numpy()
        else:
            lp = torch.from_numpy(np.asarray(self.mm[i]))
        return torch.cat([lp, lp[-1:]])     # [T, V]: evaluate_lm drops the last position


def score(runtime, wins, reference) -> dict:
    """Perplexity, KL(fp32 ‖ runtime) and top-1 agreement on *wins*: ``evaluate_lm`` against the cached reference."""
    r = evaluate_lm(runtime, chunks=wins, reference=reference)
    return {"perplexity": r.perplexity, "kl": r.agreement.kl, "top1": r.agreement.top1, "n_predicted": r.n_predicted}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["quality", "speed"], default="quality",
                    help="quality: perplexity/KL/top-1 per setting; speed: decode tok/s and the GPTQ wall time")
    ap.add_argument("--timing-calib-samples", type=int, default=32, help="speed phase: calibration windows of the timed GPTQ run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--speed-runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="setting names (substring match) to run")
    ap.add_argument("--reuse-ref", action="store_true", help="quality phase: reuse the fp32 log-probs memmap of a previous run")
    ap.add_argument("--no-gptq-timing", action="store_true", help="speed phase: skip the timed GPTQ run")
    ap.add_argument("--pause-pid", type=int, default=None,
                    help="speed phase: SIGSTOP this process (e.g. a running quality phase) while measuring")
    ap.add_argument("--no-lock", action="store_true",
                    help="quality phase without the shared lock (figures are deterministic; wall times are then contended)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.update({"title": "Quantization: SmolLM2-135M (RTN, GPTQ, AWQ; packed integer kernels)",
                   "machine": machine_info(bandwidth=False)})
    result.setdefault("tables", [])
    result.setdefault("raw", {})
    result.setdefault("commands", {})
    key = args.phase + (" " + "|".join(args.only) if args.only else "")   # one entry per distinct run
    result["commands"][key] = shlex.join(invocation())
    result["command"] = "; ".join(result["commands"].values())
    result["description"] = (
        f"wikitext-2 test, ctx {args.ctx}, first {args.max_tokens} tokens, non-overlapping windows; "
        "KL(fp32‖quantized) nats/token and top-1 agreement on the same windows; GPTQ/AWQ calibrated on "
        f"{args.calib_samples}×{args.calib_len} tokens of wiki.valid.tokens; {args.threads} threads. Decode: greedy, "
        "128-token prompt, 128 new tokens, EOS ignored; the four models measured alternately (rounds), median.")

    def put_table(t):
        result["tables"] = [x for x in result["tables"] if x["title"].split(" (")[0] != t["title"].split(" (")[0]] + [t]
        result["tables"].sort(key=lambda x: not x["title"].startswith("Quality"))

    def save():   # merge with what a concurrent phase wrote meanwhile: our tables and raw entries win
        cur = json.loads(OUT.read_text()) if OUT.exists() else {}
        mine = {t["title"].split(" (")[0] for t in result["tables"]}
        tables = [t for t in cur.get("tables", []) if t["title"].split(" (")[0] not in mine]
        for t in result["tables"]:          # rows of the same table from another run are kept (ours win)
            old = next((x for x in cur.get("tables", []) if x["title"] == t["title"]), None)
            if old is not None:
                key = t["columns"][0]
                ours = {r[key] for r in t["rows"]}
                t = dict(t, rows=t["rows"] + [r for r in old["rows"] if r[key] not in ours])
            tables.append(t)
        tables.sort(key=lambda x: not x["title"].startswith("Quality"))
        cur.update({k: v for k, v in result.items() if k not in ("tables", "raw", "commands")})
        cur["tables"] = tables
        cur["raw"] = {**cur.get("raw", {}), **result["raw"]}
        cur["commands"] = {**cur.get("commands", {}), **result["commands"]}
        cur["command"] = "; ".join(cur["commands"].values())
        write_result(OUT, cur, machine=result["machine"], command=cur["command"])

    if args.phase == "speed":
        put_table(measure_speeds(args, result))
        save()
        return
    lock = contextlib.nullcontext if args.no_lock else heavy_lock
    t_start = time.time()
    base = edgellm.load("smollm2-135m")
    ids = tokenize_file(base.tokenizer, data_file(WIKI_TEST), max_tokens=args.max_tokens)
    wins = windows(ids, args.ctx, args.max_tokens)
    V = base.model.config.vocab_size
    mm_path = Path(tempfile.gettempdir()) / f"edgellm-qbench-ref-{len(wins)}x{args.ctx}.f32"
    shape = (len(wins), args.ctx - 1, V)
    reuse = args.reuse_ref and mm_path.exists() and mm_path.stat().st_size == 4 * int(np.prod(shape))
    ref_mm = np.memmap(mm_path, dtype=np.float32, mode="r+" if reuse else "w+", shape=shape)
    reference = CachedReference(ref_mm, wins)
    with (contextlib.nullcontext() if reuse else lock()):
        t0 = time.time()
        first = reference if reuse else CachedReference(ref_mm, wins, TorchRuntime(base, device="cpu", threads=args.threads))
        fp32 = evaluate_lm(first, chunks=wins)
        ref_mm.flush()
    del base, first
    base_ppl, n = fp32.perplexity, fp32.n_predicted
    print(f"fp32: ppl {base_ppl:.3f} ({time.time() - t0:.0f}s)", flush=True)
    rows = [{"setting": "fp32 (reference)", "target": "-", "perplexity": round(base_ppl, 3), "Δppl": "-", "KL": 0.0,
             "top-1": 1.0, "bits/weight": 32, "quant s": "-", "kernels": "-"}]
    columns = list(rows[0])
    rows[0] = stamp(rows[0])
    notes = [f"{len(wins)} windows × {args.ctx} tokens = {len(wins) * args.ctx} tokens; {n} predicted",
             "bits/weight counts the quantized linears with their fp16 scales and zero points; embeddings/lm_head stay fp32",
             "quant s: wall time of quantize() in this run" + (" (run without the shared lock on a contended "
                                                                "machine: see the speed table for a timed GPTQ run)"
                                                                if args.no_lock else "")]
    table = {"title": f"Quality against the issue's targets (SmolLM2-135M, wikitext-2 test, ctx {args.ctx}, "
                      f"first {len(wins) * args.ctx} tokens)",
             "columns": columns, "rows": rows, "notes": notes}
    put_table(table)
    save()
    for name, target, fields in SETTINGS:
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        cfg = QuantConfig(calib=CalibConfig(samples=args.calib_samples, seq_len=args.calib_len), **fields)
        with lock():
            m = edgellm.load("smollm2-135m")
            _, res = quantize(m, cfg, progress=False)
            s = score(TorchRuntime(m, device="cpu", threads=args.threads), wins, reference)
        row = {"setting": name, "target": target, "perplexity": round(s["perplexity"], 3),
               "Δppl": f"{100 * (s['perplexity'] / base_ppl - 1):+.2f}%", "KL": round(s["kl"], 5),
               "top-1": round(s["top1"], 4), "bits/weight": round(res.bits_per_weight, 3),
               "quant s": round(res.seconds, 1), "kernels": ", ".join(f"{k}:{v}" for k, v in res.kernels.items())}
        rows.append(stamp(row))
        result["raw"][name] = {"config": cfg.__dict__, "result": res.to_dict(), "score": s}
        print(row, flush=True)
        del m
        save()
    if not args.reuse_ref:
        mm_path.unlink(missing_ok=True)
    print(f"done in {time.time() - t_start:.0f}s")


@contextlib.contextmanager
def paused(pid):
    import os
    import signal

    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def measure_speeds(args, result) -> dict:
    rts = {}
    lock = contextlib.nullcontext if args.no_lock else heavy_lock
    timing = None
    with lock(), paused(args.pause_pid):
        # the GPTQ wall-time claim, timed alone under the lock with the pinned threads
        if not args.no_gptq_timing:
            timing = time_gptq(args, result)
        rts = load_speed_models(args)
        rounds = run_rounds(args, rts)
    return speed_table(args, rts, rounds, timing)


def time_gptq(args, result):
    m = edgellm.load("smollm2-135m")
    cfg = QuantConfig(calib=CalibConfig(samples=args.timing_calib_samples, seq_len=args.calib_len), bits=4, group_size=32,
                      method="gptq", act_order=True, static_groups=True, mse_clip=True)
    _, res = quantize(m, cfg, progress=False)
    result["raw"]["gptq_timing"] = {"config": cfg.__dict__, "seconds": res.seconds, "threads": args.threads}
    del m
    return cfg, res


def load_speed_models(args):
    rts = {}
    for name, fields in SPEED.items():
        m = edgellm.load("smollm2-135m")
        if fields:
            quantize(m, QuantConfig(**fields), progress=False)
        rts[name] = TorchRuntime(m, device="cpu", threads=args.threads)
    return rts


def run_rounds(args, rts):
    prompt = fixed_prompt(rts["fp32"].model.config.vocab_size, 128)
    for rt in rts.values():
        one_run(rt, prompt, 128)                     # warm-up
    rounds = {n: [] for n in rts}
    for _ in range(args.speed_runs):
        for n, rt in rts.items():
            _, dt, k = one_run(rt, prompt, 128)
            rounds[n].append((k - 1) / dt)
    return rounds


def speed_table(args, rts, rounds, timing):
    rows = []
    for n, vals in rounds.items():
        ratio = [v / f for v, f in zip(vals, rounds["fp32"])]
        rows.append({"model": n, "decode tok/s (median)": round(statistics.median(vals), 2),
                     "min-max": f"{min(vals):.2f}-{max(vals):.2f}",
                     "÷ fp32 (median of per-round ratios)": round(statistics.median(ratio), 3),
                     "weight MiB read/token": round(rts[n].weight_bytes() / 2 ** 20, 1),
                     "kernel": "fp32 matmul" if n == "fp32" else
                     next(iter({q.kernel_plan()[1] for q in edgellm.quantization.quantized_linears(rts[n].model).values()}))})
    print(rows, flush=True)
    return {"title": f"Decode speed, PyTorch eager on CPU, {args.threads} threads (alternating rounds)",
            "columns": list(rows[0]), "rows": [stamp(r) for r in rows],
            "notes": ([f"GPTQ W4 g32 (act-order, static groups, MSE clip; {timing[0].calib.samples}×{timing[0].calib.seq_len} "
                       f"calibration tokens) took {timing[1].seconds:.0f} s with {args.threads} threads, timed alone under "
                       "the lock"] if timing else []) + [
                      "measured without the shared lock on a contended machine (other jobs running): the alternating "
                      "rounds and per-round ratios are the fair comparison" if args.no_lock else
                      "measured under the shared lock",
                      "W4 = RTN W4 g32 sym (GPTQ/AWQ models have the same format and kernel)",
                      "embeddings and lm_head stay fp32 (113 MiB of the weights read per token)"]}


if __name__ == "__main__":
    main()
