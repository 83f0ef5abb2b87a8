"""Pruning benchmark (issue 4): SmolLM2-135M, wikitext-2 test, ctx 512, 20,480 tokens; calibration on
wiki.valid.tokens. Perplexity, pruning time and size on disk for magnitude / Wanda / SparseGPT (50%
unstructured and 2:4); depth and width pruning at 25% (pruning time, size, perplexity) and their decode
speed against fp32, measured alternately; a depth/width sweep over 10-50% of the parameters (plot).

The machine is shared, so the script runs its steps in order of importance and saves after each one in
$EDGELLM_CACHE/bench-prune/results.json, each step with its command and measured_at; running it again
resumes where it stopped. Then it renders (bench/prune_render.py). From the repository root:
  flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.prune --threads 2
  .venv/bin/python -m bench.prune --render-only
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import time
from pathlib import Path

import torch

from bench._common import ROOT, invocation, now_utc
from bench.prune_render import render_results
from edgellm.api import evaluate
from edgellm.calibconfig import CalibConfig
from edgellm.calibrate import find_blocks
from edgellm.data import WIKI_VALID, calibration_windows
from edgellm.fileio import dir_bytes, write_json
from edgellm.measure import bench, machine_info
from edgellm.models import cache_dir, count_params, load, save
from edgellm.pruning import PruneConfig, prune
from edgellm.pruning import structured as st
from edgellm.pruning.storage import NO_KERNEL_NOTE, save_sparse

MODEL = "smollm2-135m"
WORK = cache_dir() / "bench-prune"
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


class Store:
    """results.json in WORK: one entry per finished step, written after each step, with the command that
    measured it and when (``command``, ``measured_at``)."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.d = {} if fresh or not path.exists() else json.loads(path.read_text())

    def done(self, key):
        return key in self.d

    def put(self, key, value):
        if isinstance(value, dict):
            value = {**value, "command": shlex.join(invocation()), "measured_at": now_utc()}
        self.d[key] = value
        write_json(self.path, self.d)
        print(key, {k: v for k, v in value.items() if k not in ("channels", "layer")} if isinstance(value, dict) else value,
              flush=True)


def ppl(loaded, args, tokens=None) -> float:
    r = evaluate(loaded, ctx=args.ctx, max_tokens=tokens or args.max_tokens, threads=args.threads, progress=False)
    return r.perplexity.perplexity


def step_base(S, args):
    t0 = time.time()
    base = load(MODEL)
    S.put("base", {"ppl": ppl(base, args), "params": count_params(base.model), "file_bytes": base.meta.file_bytes,
                   "tokens": args.max_tokens, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "seconds": time.time() - t0})


def step_unstructured(S, args, method, pattern):
    key = f"u:{method}:{pattern or '50%'}"
    if S.done(key):
        return
    m = load(MODEL)
    cfg = PruneConfig(method=method, sparsity=None if pattern else 0.5, pattern=pattern,
                      calib=CalibConfig(samples=args.calib_samples, seq_len=args.calib_len))
    _, r = prune(m, cfg, progress=False)   # includes reading and tokenizing the calibration text
    folder = save_sparse(m, WORK / "models" / f"{method}-{pattern or '50'}".replace(":", "of"), force=True,
                         edgellm_section={"prune": {k: v for k, v in r.to_dict().items() if k != "scores"}})
    S.put(key, {"method": method, "pattern": pattern or "unstructured", "sparsity": r.achieved_sparsity,
                "seconds": r.seconds, "file_bytes": dir_bytes(folder), "folder": str(folder), "ppl": ppl(m, args),
                "calib_samples": args.calib_samples})


def step_structured(S, args, name, structure, ratio: float = 0.25):
    key = f"s:{name}"
    if S.done(key):
        return
    m = load(MODEL)
    P = count_params(m.model)
    cfg = PruneConfig(structure=structure, ratio=ratio, calib=CalibConfig(samples=args.struct_calib_samples, seq_len=args.calib_len))
    _, r = prune(m, cfg, progress=False)
    folder = save(m, WORK / "models" / name, force=True)
    d = r.to_dict()["removed"]
    S.put(key, {"name": name, "structure": structure, "params": r.params_after, "fraction": 1 - r.params_after / P,
                "seconds": r.seconds, "file_bytes": dir_bytes(folder), "folder": str(folder),
                "removed": d.get("layers") or d.get("channels_per_layer"), "calib_samples": args.struct_calib_samples})


def step_structured_ppl(S, args, name):
    if not S.done(f"ppl:{name}") and S.done(f"s:{name}"):
        S.put(f"ppl:{name}", {"ppl": ppl(load(S.d[f"s:{name}"]["folder"]), args), "tokens": args.max_tokens})


def model_specs(S, names, gguf: bool) -> dict:
    """fp32 and the saved models *names*, as folders; with *gguf*, as GGUF F32 files (exported once, cached)."""
    specs = {"fp32": MODEL, **{n: S.d[f"s:{n}"]["folder"] if f"s:{n}" in S.d else S.d[n]["folder"] for n in names}}
    if gguf:
        from edgellm.exporters import export

        for name, spec in list(specs.items()):
            out = WORK / "gguf" / f"{name}-f32.gguf"
            if not out.exists():
                export(spec, "gguf", out, gguf_type="f32", force=True, verify=False)
            specs[name] = str(out)
    return specs


def step_speed(S, args, key, names, gguf: bool = False):
    """Bench fp32 and each model in turn, *rounds* times (alternating, so drift hits all alike).

    *gguf*: the same models exported to GGUF F32 (the same numbers), run by llama.cpp."""
    if S.done(key):
        return
    specs = model_specs(S, names, gguf)
    rounds = []
    for _ in range(args.rounds):
        row = {}
        for name, spec in specs.items():
            b = bench(spec, runtime="llama.cpp" if gguf else "auto", threads=args.threads, runs=args.runs,
                      machine=False, prompt_len=args.tokens, new_tokens=args.tokens).to_dict()
            row[name] = {"decode": b["speed"]["decode_tok_s"], "prefill": b["speed"]["prefill_tok_s"],
                         "ttft_ms": b["speed"]["ttft_ms"], "peak_rss": b["peak_rss_bytes"],
                         "weight_bytes": b["speed"]["weight_bytes"]}
            print(" ", name, round(b["speed"]["decode_tok_s"]["median"], 2), flush=True)
        rounds.append(row)
    S.put(key, {"rounds": rounds, "runs": args.runs, "threads": args.threads, "machine": machine_info(bandwidth=True)})


def step_paired(S, args, key, names, gguf: bool = False):
    """fp32 and *names* loaded side by side in this process and run in turn (``measure_paired``), the order
    flipped every round: each round's ratio to fp32 cancels what the shared machine was doing meanwhile.
    Also records each model's weight bytes read per token, whose ratio bounds the decode speed-up."""
    if S.done(key):
        return
    from edgellm.measure import measure_paired
    from edgellm.runtimes import open_runtime

    specs = model_specs(S, names, gguf)
    rts = {name: open_runtime(spec, runtime="llama.cpp" if gguf else "auto", threads=args.threads)
           for name, spec in specs.items()}
    r = measure_paired(rts, rounds=args.paired_rounds, prompt_len=args.tokens, new_tokens=args.tokens)
    r["weight_bytes"] = {name: rt.weight_bytes() for name, rt in rts.items()}
    r["runtime"] = "llama.cpp (GGUF F32)" if gguf else "torch (eager fp32)"
    S.put(key, r)


def step_sweep(S, args):
    base = load(MODEL)
    P = count_params(base.model)
    if not S.done("sweep:scores"):
        calib = calibration_windows(base.tokenizer, WIKI_VALID, args.struct_calib_samples, args.calib_len, 0)
        t0 = time.perf_counter()
        sc = st.score_structure(base.model, calib, mlp=True, heads=False, progress=False)
        S.put("sweep:scores", {"seconds": time.perf_counter() - t0, "layer": sc.layer,
                               "channels": [c.tolist() for c in sc.channels]})
    sc = S.d["sweep:scores"]
    blocks = find_blocks(base.model)[1]
    L, hidden, inter = len(blocks), base.model.config.hidden_size, base.model.config.intermediate_size
    per_layer = sum(p.numel() for p in blocks[0].parameters())
    order = sorted(range(L), key=lambda i: sc["layer"][i])
    for f in FRACTIONS:   # one scoring pass, every size from it
        for kind in ("depth", "width"):
            key = f"sweep:{kind}:{f}"
            if S.done(key):
                continue
            m = copy.deepcopy(base)
            if kind == "depth":
                k = math.ceil(f * P / per_layer)
                st.remove_layers(m.model, order[:k])
                removed = f"{k}/{L} layers"
            else:
                k = math.ceil(f * P / (L * 3 * hidden))
                st.remove_channels(m.model, [torch.tensor(c) for c in sc["channels"]], k)
                removed = f"{k}/{inter} channels"
            S.put(key, {"kind": kind, "removed": removed, "target": f, "fraction": 1 - count_params(m.model) / P,
                        "ppl": ppl(m, args, args.sweep_tokens), "tokens": args.sweep_tokens})


def run_all(S, args):
    steps = [lambda: S.done("base") or step_base(S, args),
             lambda: step_unstructured(S, args, "sparsegpt", None),
             lambda: step_unstructured(S, args, "sparsegpt", "2:4"),
             lambda: step_structured(S, args, "depth25", "depth"),
             lambda: step_structured(S, args, "width25", "width"),
             lambda: step_speed(S, args, "speed", ["depth25", "width25"]),
             lambda: step_unstructured(S, args, "wanda", None),
             lambda: step_unstructured(S, args, "wanda", "2:4"),
             lambda: step_unstructured(S, args, "magnitude", None),
             lambda: step_unstructured(S, args, "magnitude", "2:4"),
             lambda: step_sweep(S, args),
             lambda: step_structured_ppl(S, args, "depth25"),
             lambda: step_structured_ppl(S, args, "width25"),
             lambda: step_speed(S, args, "speed:sparse", ["u:sparsegpt:2:4"]),
             lambda: step_speed(S, args, "speed:gguf", ["depth25", "width25"], gguf=True),
             lambda: step_structured(S, args, "width35", "width", 0.35),
             lambda: step_structured_ppl(S, args, "width35"),
             lambda: step_paired(S, args, "paired:torch", ["depth25", "width25", "width35"]),
             lambda: step_paired(S, args, "paired:gguf", ["depth25", "width25", "width35"], gguf=True)]
    for fn in steps:
        fn()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows for Wanda/SparseGPT")
    ap.add_argument("--struct-calib-samples", type=int, default=16, help="calibration windows for structured scores")
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--paired-rounds", type=int, default=12, help="rounds of the in-process paired speed check")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--sweep-tokens", type=int, default=8192, help="tokens per sweep point (plot; fewer, to fit the shared machine)")
    ap.add_argument("--model", default=MODEL, help="for trying the script on a tiny model; results are for smollm2-135m")
    ap.add_argument("--tokens", type=int, default=128, help="prompt and decode length for speed (protocol: 128)")
    ap.add_argument("--fresh", action="store_true", help="forget saved steps")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    MODEL = args.model
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    S = Store(WORK / "results.json", args.fresh)
    if not args.render_only:
        run_all(S, args)
    render_results(S.d, ROOT, NO_KERNEL_NOTE)
