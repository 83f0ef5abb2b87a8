"""Quantizer speed: the best W4 recipe end to end on SmolLM2-135M, with a per-phase profile and its quality.

The recipe is recipes/w4-gptq-g32-sym-fast.yaml (GPTQ after AWQ's prescale, act-order + static groups +
MSE-clipped grids, symmetric g32, 32×512 calibration tokens of wiki.valid). One run (``--label``) times
``edgellm.quantize`` on the given threads, splits its wall time into phases by wrapping the functions
each phase runs (exclusive time: a phase called inside another is taken out of its parent; what no
phase covers is "other"), optionally keeps a cProfile top list (``--cprofile``: slower, so the
phase table of a profiled run is marked as such), saves the quantized folder under out/ and measures
its perplexity on the standard protocol (wikitext-2 test, ctx 512, 20,480 tokens, torch runtime).
``--fp32`` measures the float model's perplexity once (the reference for the rise). Runs are merged
into bench/results/quantize_speed.json by label, each with its own commit, so the profile before a
change and after it sit side by side. It leaves out decode speed (bench/quantize.py) and GGUF export.

Run from the repository root, one setting per run, under the shared lock:
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.quantize_speed --label after
An older commit's code: ``git archive SHA src | tar -x -C /tmp/old`` and run with ``PYTHONPATH=/tmp/old/src``
and ``--code SHA``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import inspect
import io
import json
import pstats
import time
from pathlib import Path

import torch

from bench._common import RESULTS, ROOT, git_commit, now_utc, write_result

OUT = RESULTS / "quantize_speed.json"
RECIPE = ROOT / "recipes" / "w4-gptq-g32-sym-fast.yaml"
TARGET_S = 90.0
PP_TOLERANCE = 0.3

# phase -> the functions it runs, as (module, attribute path); a missing one is skipped (older/newer code)
PHASES = {
    "calibration data (tokenize wiki.valid)": [("edgellm.quantization.core", "_calibration_ids")],
    "capture block-0 inputs": [("edgellm.calibrate", "capture_block_inputs")],
    "block forwards: statistics pass": [("edgellm.calibrate", "BlockInputs.feed")],
    "block forwards: outputs pass": [("edgellm.calibrate", "BlockInputs.run")],
    "Hessian accumulation": [("edgellm.calibrate", "HessianStats.add")],
    "AWQ input sample / mean |x|": [("edgellm.calibrate", "InputSampleStats.add"),
                                    ("edgellm.quantization.awq", "_Both.add")],
    "AWQ scale search": [("edgellm.quantization.awq", "awq_search_scale"),
                         ("edgellm.quantization.awq", "awq_search_scale_stats")],
    "MSE clip search": [("edgellm.quantization.gptq", "mse_shrink"), ("edgellm.quantization.rtn", "mse_shrink")],
    "GPTQ column loop": [("edgellm.quantization.gptq", "_gptq_columns")],
    "GPTQ setup (Cholesky, permute, pack record)": [("edgellm.quantization.gptq", "gptq_quantize_weight")],
    "QuantizedLinear swap": [("edgellm.quantization.linear", "QuantizedLinear.from_weight")],
}


class PhaseClock:
    """Exclusive wall time per phase: entering a phase pauses the one it was called from."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[list] = []
        self.undo: list = []

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            now = time.perf_counter()
            if self.stack:
                self.seconds[self.stack[-1][0]] = self.seconds.get(self.stack[-1][0], 0.0) + now - self.stack[-1][1]
            self.stack.append([name, now])
            self.calls[name] = self.calls.get(name, 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                n, t = self.stack.pop()
                self.seconds[n] = self.seconds.get(n, 0.0) + end - t
                if self.stack:
                    self.stack[-1][1] = end
        return timed

    def install(self, phases: dict) -> list[str]:
        import importlib

        missing = []
        for name, targets in phases.items():
            for mod, path in targets:
                owner = importlib.import_module(mod)
                *parents, attr = path.split(".")
                for p in parents:
                    owner = getattr(owner, p)
                if not hasattr(owner, attr):
                    missing.append(f"{mod}:{path}")
                    continue
                raw = inspect.getattr_static(owner, attr)
                if isinstance(raw, (classmethod, staticmethod)):
                    new = type(raw)(self.wrap(name, raw.__func__))
                else:
                    new = self.wrap(name, raw)
                setattr(owner, attr, new)
                self.undo.append((owner, attr, raw))
        return missing

    def uninstall(self):
        for owner, attr, raw in reversed(self.undo):
            setattr(owner, attr, raw)
        self.undo.clear()


def perplexity(model, threads: int) -> float:
    import edgellm

    r = edgellm.evaluate(model, edgellm.EvalConfig(ctx=512, max_tokens=20480), threads=threads)
    return float(r.perplexity.perplexity)


def quantize_run(args) -> dict:
    import edgellm
    from edgellm.quantization.storage import save_quantized
    from edgellm.recipe import load_recipe

    cfg = load_recipe(RECIPE).steps["quantize"]
    clock = PhaseClock()
    missing = clock.install(PHASES)
    t0 = time.perf_counter()
    m = edgellm.load("smollm2-135m")
    load_s = time.perf_counter() - t0
    prof = cProfile.Profile() if args.cprofile else None
    t1 = time.perf_counter()
    if prof:
        prof.enable()
    _, res = edgellm.quantize(m, cfg, progress=False)
    if prof:
        prof.disable()
    total = time.perf_counter() - t1
    clock.uninstall()
    rows = [{"phase": "model load (not in quantize)", "seconds": round(load_s, 2), "share": "-", "calls": 1}]
    for name in PHASES:
        s = clock.seconds.get(name, 0.0)
        rows.append({"phase": name, "seconds": round(s, 2), "share": f"{100 * s / total:.1f}%",
                     "calls": clock.calls.get(name, 0)})
    other = total - sum(clock.seconds.values())
    rows.append({"phase": "other", "seconds": round(other, 2), "share": f"{100 * other / total:.1f}%", "calls": "-"})
    rows.append({"phase": "quantize() total", "seconds": round(total, 2), "share": "100%", "calls": 1})
    sha, dirty = git_commit()
    code = args.code or f"{(sha or '?')[:7]}{' + uncommitted changes' if dirty else ''}"
    run = {"label": args.label, "commit": sha, "dirty": dirty, "code": code, "measured_at": now_utc(),
           "threads": args.threads, "cprofile": bool(prof), "quantize_seconds": round(total, 2),
           "quantize_result_seconds": round(res.seconds, 2), "phases": rows, "missing_hooks": missing}
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        run["cprofile_top"] = [ln for ln in buf.getvalue().splitlines() if ln.strip()][:40]
    out_dir = ROOT / "out" / f"quantize-speed-{args.label}"
    save_quantized(m, out_dir, force=True)
    run["model_dir"] = str(out_dir.relative_to(ROOT))
    if not args.no_ppl:
        run["perplexity"] = round(perplexity(m, args.threads), 4)
    return run


def tables(result: dict) -> list[dict]:
    runs = result.get("runs", {})
    fp32 = result.get("fp32_perplexity")
    summary = []
    for label, r in runs.items():
        ppl = r.get("perplexity")
        rise = 100 * (ppl / fp32 - 1) if ppl and fp32 else None
        summary.append({"run": label, "code": r.get("code"), "quantize s": r["quantize_seconds"],
                        "cProfile on": r["cprofile"], "perplexity": ppl,
                        "rise": None if rise is None else f"+{rise:.2f}%", "measured_at": r["measured_at"]})
    out = [{"title": "Best W4 recipe, end to end (quantize() wall time, 2 threads)",
            "columns": ["run", "code", "quantize s", "cProfile on", "perplexity", "rise", "measured_at"],
            "rows": summary,
            "notes": [f"target: ≤ {TARGET_S:.0f} s on 2 cores with the perplexity rise within ±{PP_TOLERANCE} pp",
                      f"fp32 perplexity on the same protocol: {fp32}",
                      "a run with cProfile on is slower than the plain run (its profiler overhead)"]}]
    for label, r in runs.items():
        out.append({"title": f"Profile: {label} ({r['quantize_seconds']} s, code {r.get('code')})",
                    "columns": ["phase", "seconds", "share", "calls"], "rows": r["phases"],
                    "notes": ["exclusive wall time: a phase called inside another is taken out of its parent"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after", help="run name in the results (e.g. before, after)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cprofile", action="store_true", help="also keep a cProfile top list (slows the run)")
    ap.add_argument("--no-ppl", action="store_true", help="skip the perplexity of the quantized model")
    ap.add_argument("--fp32", action="store_true", help="only measure the float model's perplexity (reference)")
    ap.add_argument("--code", default=None, help="what code ran, when not this checkout's HEAD (e.g. an older "
                                                 "commit's src on PYTHONPATH)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.setdefault("runs", {})
    if args.fp32:
        import edgellm

        result["fp32_perplexity"] = round(perplexity(edgellm.load("smollm2-135m"), args.threads), 4)
    else:
        run = quantize_run(args)
        result["runs"][args.label] = run
        print(json.dumps({k: v for k, v in run.items() if k != "cprofile_top"}, indent=1))
    result.update({
        "title": "Quantizer speed: best W4 recipe on SmolLM2-135M (GPTQ after AWQ prescale, g32 sym, 32×512 calib)",
        "description": ("recipes/w4-gptq-g32-sym-fast.yaml through edgellm.quantize on 2 threads; the phase table "
                        "splits quantize()'s wall time by the functions each phase runs; perplexity on wikitext-2 "
                        "test, ctx 512, first 20,480 tokens, torch runtime. Each run says which code ran ('before': "
                        "commit 6e1fd8d's src on PYTHONPATH, once under cProfile and once plain)."),
    })
    result["tables"] = tables(result)
    write_result(OUT, result)


if __name__ == "__main__":
    main()
