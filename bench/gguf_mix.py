"""Budgeted GGUF mixes (issue 17 item 2): does the predicted loss rank the mixes as measured perplexity does?

From the fp32 model (default: SmolLM2 as shipped, ``edgellm.load("smollm2-135m")``): one F32 GGUF as the
baseline, then for each budget in ``--budgets`` (bits per weight of the whole file) one GGUF whose every
tensor's type ``edgellm.exporters.gguf_mix`` chooses from its ladder (Hessian-weighted RTN error from one
calibration pass on wiki.valid; knapsack under the budget), exported and verified in llama.cpp. Every file:
size on disk, tensor types, perplexity through llama.cpp on the standard protocol (wikitext-2 test, ctx
512, 20,480 tokens) and the same on a second text from another domain (the SST-2 dev sentences joined,
one per line), and the mix's predicted loss. The Spearman rank correlation of predicted loss against the
measured perplexity rise is reported for both texts. Speed is not measured here (bench/gguf_vs_llamacpp.py).

Run from the repository root (heavy: under the lock):
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.gguf_mix --threads 2
A dry run on a tiny model folder:
    .venv/bin/python -m bench.gguf_mix --model /tmp/tiny --budgets 3.6,4.5,6 --ctx 128 --max-tokens 2048 \\
        --calib-samples 8 --calib-len 64 --out /tmp/gguf_mix.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench._common import RESULTS, now_utc, write_result
from edgellm.api import evaluate
from edgellm.calibconfig import CalibConfig
from edgellm.data import SST2, WIKI_VALID, data_file, read_tsv
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.gguf import GGUFExportConfig
from edgellm.exporters.gguf_mix import DEFAULT_LADDER
from edgellm.exporters.llamacpp_quant import tensor_types
from edgellm.fileio import atomic_file
from edgellm.measure import machine_info
from edgellm.models import cache_dir, load


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 points."""
    if len(a) < 3:
        return None

    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra) ** 0.5, sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else None


def second_text(work: Path, split: str) -> Path:
    """The SST-2 *split* sentences joined one per line: a text that shares nothing with the calibration data."""
    path = work / f"sst2-{split}.txt"
    text = "\n".join(r.text.strip() for r in read_tsv(data_file(SST2.format(split=split)))) + "\n"
    with atomic_file(path) as f:
        f.write(text)
    return path


def measure(path: Path, texts: dict, args) -> dict:
    out = {"bytes": path.stat().st_size, "tensor_types": tensor_types(path), "measured_at": now_utc()}
    for name, text in texts.items():
        r = evaluate(str(path), ctx=args.ctx, max_tokens=args.max_tokens, threads=args.threads, ppl=str(text))
        out[name] = r.perplexity.to_dict()
    return out


def exported(src, cfg: GGUFExportConfig, out: Path, args):
    """(ExportResult, verification summary): verified in llama.cpp; a failed verification is recorded, not fatal."""
    try:
        r = export(src, cfg, out, force=True, threads=args.threads)
        return r, {k: r.verification[k] for k in ("passed", "ppl", "prompts")}
    except EdgeLLMError as e:
        log(f"{out.name}: verification FAILED: {e}")
        return export(src, cfg, out, force=True, verify=False), {"passed": False, "error": str(e)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="fp32 source (a tiny folder for a dry run)")
    ap.add_argument("--budgets", default="4.0,4.25,4.5,5.0", help="bits per weight of the whole file, comma-separated")
    ap.add_argument("--ladder", default=",".join(DEFAULT_LADDER), help="types the mixes choose from")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--calib-samples", type=int, default=CalibConfig().samples)
    ap.add_argument("--calib-len", type=int, default=CalibConfig().seq_len)
    ap.add_argument("--sst2-split", default="dev", choices=["dev", "test"])
    ap.add_argument("--work", default=str(cache_dir() / "bench" / "gguf_mix"))
    ap.add_argument("--out", default=str(RESULTS / "gguf_mix.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = {"wikitext": data_file("wikitext-2/wiki.test.raw"), "sst2": second_text(work, args.sst2_split)}
    calib = CalibConfig(data=WIKI_VALID, samples=args.calib_samples, seq_len=args.calib_len)
    ladder = tuple(t for t in args.ladder.split(",") if t)

    log(f"load {args.model}")
    src = load(args.model)
    t = time.time()
    f32, verification = exported(src, GGUFExportConfig(gguf_type="f32"), work / "f32.gguf", args)
    base = measure(f32.path, texts, args) | {"seconds": time.time() - t, "verification": verification}
    log(f"F32: wikitext {base['wikitext']['perplexity']:.4f}, sst2 {base['sst2']['perplexity']:.4f}")
    files = {"F32": base}
    for bpw in [float(b) for b in args.budgets.split(",") if b]:
        label = f"mix {bpw:g} bpw"
        t = time.time()
        r, verification = exported(src, GGUFExportConfig(target_bpw=bpw, ladder=ladder, calib=calib),
                                   work / f"mix-{bpw:g}.gguf", args)
        mix = r.details["mix"]
        files[label] = measure(r.path, texts, args) | {
            "budget_bytes": mix["budget_bytes"], "predicted_loss": mix["predicted_loss"], "types": mix["types"],
            "tensors": mix["tensors"], "mix_seconds": mix["seconds"], "seconds": time.time() - t,
            "verification": verification}
        f = files[label]
        log(f"{label}: {f['bytes']:,} bytes (budget {mix['budget_bytes']:,}), predicted {mix['predicted_loss']:.4g}, "
            f"wikitext {f['wikitext']['perplexity']:.4f}, sst2 {f['sst2']['perplexity']:.4f}, types {mix['types']}")
    finish(args, files, src, t_start)


def finish(args, files: dict, src, t_start: float) -> None:
    n_weights = sum(t.numel() for n, t in src.model.state_dict().items()
                    if not (n == "lm_head.weight" and getattr(src.model.config, "tie_word_embeddings", False)))
    base = files["F32"]
    rows, mixes = [], [k for k in files if k != "F32"]
    for label, f in files.items():
        rise = {t: 100 * (f[t]["perplexity"] / base[t]["perplexity"] - 1) for t in ("wikitext", "sst2")}
        rows.append({"file": label, "size MB": round(f["bytes"] / 1e6, 2), "bits/weight": round(8 * f["bytes"] / n_weights, 3),
                     "budget MB": round(f["budget_bytes"] / 1e6, 2) if "budget_bytes" in f else None,
                     "predicted loss": round(f["predicted_loss"], 4) if "predicted_loss" in f else None,
                     "wikitext ppl": round(f["wikitext"]["perplexity"], 4), "wikitext rise %": round(rise["wikitext"], 2),
                     "SST-2 ppl": round(f["sst2"]["perplexity"], 4), "SST-2 rise %": round(rise["sst2"], 2),
                     "types": ", ".join(f"{k}×{v}" for k, v in sorted(f.get("types", f["tensor_types"]).items())),
                     "measured_at": f["measured_at"]})
    pred = [files[k]["predicted_loss"] for k in mixes]
    rank = {t: spearman(pred, [files[k][t]["perplexity"] for k in mixes]) for t in ("wikitext", "sst2")}
    within = all(files[k]["bytes"] <= files[k]["budget_bytes"] for k in mixes)
    notes = [
        f"Spearman(predicted loss, measured perplexity) over {len(mixes)} mixes: wikitext {rank['wikitext']}, "
        f"SST-2 {rank['sst2']} (target ≥ 0.8). Every file within its budget: {within}.",
        "Predicted loss: Σ over tensors of Σ_rows (W − Q(W)) H (W − Q(W))ᵀ, H = 2/n Σ xᵀx of the tensor's inputs on "
        f"{args.calib_samples}×{args.calib_len} wiki.valid tokens (the head: the final norm's outputs; the embedding: "
        "token-count-weighted row error), Q = the RTN the exporter writes (llama.cpp's fallback type on rows a type "
        "cannot tile).",
        f"Perplexity through llama.cpp, ctx {args.ctx}, first {args.max_tokens:,} tokens: wikitext-2 test, and the SST-2 "
        f"{args.sst2_split} sentences joined one per line (a domain the calibration text does not share). Rise against "
        "the F32 GGUF of the same model.",
        "Budgets count the whole file: header, metadata, tokenizer, F32 norms and every tensor padded to GGUF's alignment.",
    ]
    result = {
        "title": "GGUF mixes under a bits-per-weight budget: predicted loss against measured perplexity",
        "description": f"edgellm's budgeted per-tensor type allocation for {args.model}, each mix written into one "
                       "GGUF and measured in llama.cpp on two texts.",
        "tables": [{"title": "Budgeted mixes through llama.cpp", "columns": list(rows[0]), "rows": rows, "notes": notes}],
        "target": {"spearman": rank, "within_budget": within, "met": within and all(v is not None and v >= 0.8
                                                                                   for v in rank.values())},
        "raw": files, "wall_seconds": time.time() - t_start,
    }
    write_result(args.out, result, machine=machine_info())
    for r in rows:
        print(r)
    print(json.dumps(result["target"], indent=1))


if __name__ == "__main__":
    main()
