"""Pruning benchmark (issue 4): SmolLM2-135M, wikitext-2 test, ctx 512, 20,480 tokens; calibration on
wiki.valid.tokens. Measures perplexity, pruning time and size on disk for magnitude / Wanda / SparseGPT
(50% unstructured and 2:4), depth and width pruning swept over 10-50% of the parameters (plot), and the
decode speed of the 25% depth/width-pruned models against fp32, measured alternately.

Run in parts (each under the heavy-CPU lock), then assemble:
  flock /tmp/edgellm-heavy.lock .venv/bin/python bench/prune.py --part unstructured
  flock /tmp/edgellm-heavy.lock .venv/bin/python bench/prune.py --part structured
  flock /tmp/edgellm-heavy.lock .venv/bin/python bench/prune.py --part speed
  .venv/bin/python bench/prune.py --part render
(--part all does the four in order.) Parts are kept in $EDGELLM_CACHE/bench-prune/.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import ROOT, render  # noqa: E402

from edgellm.api import evaluate  # noqa: E402
from edgellm.bench import bench, machine_info  # noqa: E402
from edgellm.calibrate import find_blocks  # noqa: E402
from edgellm.data import WIKI_VALID, calibration_windows  # noqa: E402
from edgellm.fileio import dir_bytes, write_json  # noqa: E402
from edgellm.models import cache_dir, count_params, load, save  # noqa: E402
from edgellm.prune import PruneConfig, prune  # noqa: E402
from edgellm.prune import structured as st  # noqa: E402
from edgellm.prune.storage import NO_KERNEL_NOTE, save_sparse  # noqa: E402

MODEL = "smollm2-135m"
WORK = cache_dir() / "bench-prune"
UNSTRUCTURED = [("magnitude", None), ("wanda", None), ("sparsegpt", None),
                ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4")]
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def ppl(loaded, args) -> float:
    r = evaluate(loaded, ctx=args.ctx, max_tokens=args.max_tokens, threads=args.threads, progress=False)
    return r["perplexity"]["perplexity"]


def part_unstructured(args) -> dict:
    base = load(MODEL)
    out = {"base_ppl": ppl(base, args), "base_params": count_params(base.model),
           "base_file_bytes": base.meta.file_bytes, "runs": []}
    print(f"fp32 ppl {out['base_ppl']:.3f}", flush=True)
    calib = calibration_windows(base.tokenizer, WIKI_VALID, args.calib_samples, args.calib_len, 0)
    for method, pattern in UNSTRUCTURED:
        m = load(MODEL)
        cfg = PruneConfig(method=method, sparsity=None if pattern else 0.5, pattern=pattern,
                          calib_samples=args.calib_samples, calib_len=args.calib_len)
        _, r = prune(m, cfg, progress=False, calib_ids=calib if cfg.calibrated else None)
        folder = save_sparse(m, WORK / "models" / f"{method}-{pattern or '50'}".replace(":", "of"), force=True,
                             edgellm_section={"prune": {k: v for k, v in r.to_dict().items() if k != "scores"}})
        row = {"method": method, "pattern": pattern or "unstructured", "sparsity": r.achieved_sparsity,
               "ppl": ppl(m, args), "seconds": r.seconds, "file_bytes": dir_bytes(folder), "folder": str(folder)}
        out["runs"].append(row)
        print(row, flush=True)
    return out


def _removed_fraction(model, before: int) -> float:
    return 1 - count_params(model) / before


def part_structured(args) -> dict:
    torch.set_num_threads(args.threads)
    base = load(MODEL)
    P = count_params(base.model)
    calib = calibration_windows(base.tokenizer, WIKI_VALID, args.struct_calib_samples, args.calib_len, 0)
    t0 = time.perf_counter()
    scores = st.score_structure(base.model, calib, mlp=True, heads=False, progress=False)
    score_s = time.perf_counter() - t0
    blocks = find_blocks(base.model)[1]
    L, hidden = len(blocks), base.model.config.hidden_size
    per_layer = sum(p.numel() for p in blocks[0].parameters())
    order = sorted(range(L), key=lambda i: scores.layer[i])
    out = {"score_seconds": score_s, "layer_scores": scores.layer, "sweep": [], "runs": []}
    n = args.struct_calib_samples
    for name, cfg in (("depth25", PruneConfig(structure="depth", ratio=0.25, calib_samples=n, calib_len=args.calib_len)),
                      ("width25", PruneConfig(structure="width", ratio=0.25, calib_samples=n, calib_len=args.calib_len))):
        m = load(MODEL)
        _, r = prune(m, cfg, progress=False, calib_ids=calib)
        folder = save(m, WORK / "models" / name, force=True)
        d = r.to_dict()
        row = {"name": name, "structure": cfg.structure, "ratio": cfg.ratio, "params": r.params_after,
               "fraction": 1 - r.params_after / P, "ppl": ppl(m, args), "seconds": r.seconds,
               "file_bytes": dir_bytes(folder), "folder": str(folder),
               "removed": d["removed"].get("layers") or d["removed"].get("channels_per_layer")
               or d["removed"].get("heads_per_layer")}
        out["runs"].append(row)
        print(row, flush=True)
    for f in FRACTIONS:   # one scoring pass, then every size from it
        k = math.ceil(f * P / per_layer)
        m = copy.deepcopy(base)
        st.remove_layers(m.model, order[:k])
        out["sweep"].append({"kind": "depth", "removed": f"{k}/{L} layers", "target": f,
                             "fraction": _removed_fraction(m.model, P), "ppl": ppl(m, args)})
        print(out["sweep"][-1], flush=True)
        k = math.ceil(f * P / (L * 3 * hidden))
        m = copy.deepcopy(base)
        st.remove_channels(m.model, scores.channels, k)
        out["sweep"].append({"kind": "width", "removed": f"{k}/{base.model.config.intermediate_size} channels",
                             "target": f, "fraction": _removed_fraction(m.model, P), "ppl": ppl(m, args)})
        print(out["sweep"][-1], flush=True)
        del m
    return out


def part_speed(args) -> dict:
    specs = {"fp32": MODEL, "depth25": str(WORK / "models" / "depth25"), "width25": str(WORK / "models" / "width25"),
             "sparsegpt-2:4 (sparse folder)": str(WORK / "models" / "sparsegpt-2of4")}
    rounds = []
    for rnd in range(args.rounds):   # alternate, so drift on the shared machine hits every model alike
        row = {}
        for name, spec in specs.items():
            if name.startswith("sparsegpt") and rnd > 0:
                continue
            b = bench(spec, threads=args.threads, runs=args.runs, machine=False)
            row[name] = {"decode": b["speed"]["decode_tok_s"], "prefill": b["speed"]["prefill_tok_s"],
                         "ttft_ms": b["speed"]["ttft_ms"], "peak_rss": b["peak_rss_bytes"],
                         "weight_bytes": b["speed"]["weight_bytes"]}
            print(rnd, name, round(b["speed"]["decode_tok_s"]["median"], 2), flush=True)
        rounds.append(row)
    return {"rounds": rounds, "machine": machine_info(bandwidth=True), "threads": args.threads, "runs": args.runs}


def part_render(args) -> None:
    u, s, sp = (json.loads((WORK / f"{p}.json").read_text()) for p in ("unstructured", "structured", "speed"))
    base = u["base_ppl"]

    def rel(p):
        return 100 * (p / base - 1)

    speed = {}
    for name in ("depth25", "width25", "sparsegpt-2:4 (sparse folder)"):
        ratios = [r[name]["decode"]["median"] / r["fp32"]["decode"]["median"] for r in sp["rounds"] if name in r]
        speed[name] = sum(ratios) / len(ratios)
    best50 = min((r for r in u["runs"] if r["method"] != "magnitude" and r["pattern"] == "unstructured"), key=lambda r: r["ppl"])
    best24 = min((r for r in u["runs"] if r["method"] != "magnitude" and r["pattern"] == "2:4"), key=lambda r: r["ppl"])
    targets = [
        {"setting": f"best of SparseGPT/Wanda, 50% unstructured ({best50['method']})", "target": "≤ +35%",
         "measured": f"{rel(best50['ppl']):+.1f}% (ppl {best50['ppl']:.2f})", "met": rel(best50["ppl"]) <= 35},
        {"setting": f"2:4 ({best24['method']})", "target": "≤ +120%",
         "measured": f"{rel(best24['ppl']):+.1f}% (ppl {best24['ppl']:.2f})", "met": rel(best24["ppl"]) <= 120},
        {"setting": "depth-pruned, 25% of layers removed", "target": "≥ 1.2× decode tok/s",
         "measured": f"{speed['depth25']:.2f}×", "met": speed["depth25"] >= 1.2},
        {"setting": "width-pruned, 25% of MLP channels removed", "target": "≥ 1.2× decode tok/s",
         "measured": f"{speed['width25']:.2f}×", "met": speed["width25"] >= 1.2},
    ]
    unstructured = [{"method": "none (fp32)", "pattern": "-", "sparsity": 0.0, "perplexity": round(base, 3), "Δ ppl": "-",
                     "prune s": "-", "size on disk MB": round(u["base_file_bytes"] / 1e6, 1)}]
    unstructured += [{"method": r["method"], "pattern": r["pattern"], "sparsity": round(r["sparsity"], 4),
                      "perplexity": round(r["ppl"], 3), "Δ ppl": f"{rel(r['ppl']):+.1f}%", "prune s": round(r["seconds"], 1),
                      "size on disk MB": round(r["file_bytes"] / 1e6, 1)} for r in u["runs"]]
    last = sp["rounds"][0]
    structured = [{"model": r["name"], "removed": str(r["removed"]), "params M": round(r["params"] / 1e6, 2),
                   "params removed": f"{100 * r['fraction']:.1f}%", "perplexity": round(r["ppl"], 3),
                   "Δ ppl": f"{rel(r['ppl']):+.1f}%", "prune s": round(r["seconds"], 1),
                   "size on disk MB": round(r["file_bytes"] / 1e6, 1),
                   "decode tok/s": round(last[r["name"]]["decode"]["median"], 2) if r["name"] in last else "-",
                   "speedup vs fp32": f"{speed[r['name']]:.2f}×" if r["name"] in speed else "-"} for r in s["runs"]]
    speed_rows = [{"round": i, "model": n, "decode tok/s median": round(v["decode"]["median"], 2),
                   "min-max": f"{v['decode']['min']:.2f}-{v['decode']['max']:.2f}",
                   "prefill tok/s": round(v["prefill"]["median"], 1), "peak RSS MB": round(v["peak_rss"] / 1e6, 1)}
                  for i, r in enumerate(sp["rounds"]) for n, v in r.items()]
    sweep = [{"kind": r["kind"], "removed": r["removed"], "params removed": f"{100 * r['fraction']:.1f}%",
              "perplexity": round(r["ppl"], 2), "Δ ppl": f"{rel(r['ppl']):+.0f}%"} for r in s["sweep"]]
    plot = _plot(s["sweep"], base)
    result = {
        "title": "Pruning: SmolLM2-135M (magnitude, Wanda, SparseGPT, N:M, depth, width)",
        "command": "python bench/prune.py --part all --threads 2 (under flock /tmp/edgellm-heavy.lock)",
        "description": (f"Perplexity on wikitext-2 test, ctx 512, first 20,480 tokens; calibration {u.get('calib_samples', '?')} "
                        "windows × 512 tokens of wiki.valid.tokens (seed 0). All linears in the decoder blocks are pruned; "
                        "embeddings/LM head stay dense. Structured models are plain HF folders (no healing; distillation does "
                        "that). Speed: greedy decode of 128 tokens after a 128-token prompt, 2 threads, median of "
                        f"{sp['runs']} runs, every model measured in turn in each of {len(sp['rounds'])} rounds; speedup = "
                        f"mean over rounds of (decode tok/s ÷ fp32 decode tok/s in the same round). {NO_KERNEL_NOTE}."),
        "machine": sp["machine"],
        "tables": [
            {"title": "Targets (issue 4)", "columns": ["setting", "target", "measured", "met"], "rows": targets},
            {"title": "Unstructured and 2:4 (sizes are edgellm sparse folders: bitmask + values)",
             "columns": list(unstructured[0]), "rows": unstructured,
             "notes": ["Published anchors at 50% on OPT-125M: magnitude ≈ +600%, Wanda +42%, SparseGPT +33%."]},
            {"title": "Structured (physically smaller HF models)", "columns": list(structured[0]), "rows": structured,
             "notes": [f"structured scores use {s.get('struct_calib_samples', '?')} calibration windows × 512 tokens; "
                       f"one scoring pass took {s['score_seconds']:.1f} s (the sweep reuses it; 'prune s' is a full "
                       "prune() call, scoring included)."]},
            {"title": "Depth / width sweep (plotted)", "columns": list(sweep[0]), "rows": sweep},
            {"title": "Decode speed, alternating rounds", "columns": list(speed_rows[0]), "rows": speed_rows},
        ],
        "plots": [plot],
        "raw": {"unstructured": u, "structured": s, "speed": sp},
    }
    write_json(ROOT / "bench" / "results" / "prune.json", result)
    render()
    for t in targets:
        print(t)


def _plot(sweep, base) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("depth", "o"), ("width", "s")):
        pts = sorted((r["fraction"] * 100, r["ppl"]) for r in sweep if r["kind"] == kind)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{kind} (no healing)")
    ax.axhline(base, color="gray", ls="--", label=f"fp32 ({base:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("wikitext-2 perplexity (ctx 512, log scale)")
    ax.set_title("SmolLM2-135M: structured pruning")
    ax.legend()
    fig.tight_layout()
    rel = "docs/img/prune_structured_ppl.png"
    (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / rel, dpi=120)
    return rel


def main() -> None:
    global MODEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["all", "unstructured", "structured", "speed", "render"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows for Wanda/SparseGPT")
    ap.add_argument("--struct-calib-samples", type=int, default=16, help="calibration windows for structured scores")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=MODEL, help="for trying the script on a tiny model; results are for smollm2-135m")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=20480)
    args = ap.parse_args()
    MODEL = args.model
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    parts = ["unstructured", "structured", "speed", "render"] if args.part == "all" else [args.part]
    for p in parts:
        t0 = time.time()
        if p == "render":
            part_render(args)
            continue
        res = {"unstructured": part_unstructured, "structured": part_structured, "speed": part_speed}[p](args)
        res.update(wall_seconds=time.time() - t0, calib_samples=args.calib_samples, threads=args.threads,
                   struct_calib_samples=args.struct_calib_samples)
        write_json(WORK / f"{p}.json", res)
        print(f"{p}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
