"""What the output head costs at each GGUF type, by RTN, importance-weighted RTN and GPTQ (issue 17).

A GGUF of SmolLM2 keeps the tied token embedding / output head at Q8_0: 30 MB, a third of a Q4_0 file.
Moving it lower frees bytes for the linears, if the head survives. This isolates the head: every other
weight stays fp32 (torch), and only the head (with a tied embedding, the lookups too) is replaced by each
type's reconstruction:
  rtn       ``gguf_types.rtn``: round-to-nearest on the type's grid, what the exporter wrote before;
  rtn-imp   the same with ``importance = diag(H)`` (llama.cpp's importance matrix for the head);
  gptq      ``gguf_gptq.gptq_onto_grid(W, H, type)``, what the GGUF exporter's ``--quantizer gptq`` does now.
``H`` is the covariance of the final norm's outputs on the calibration windows (``--calib-samples`` x 512 of
wiki.valid, seed 0). Perplexity on two held-out texts that no step reads otherwise: the tiles of wiki.valid
that no calibration window drew, and SST-2 *train* sentences (another domain; the ladder's evaluation texts,
wikitext-2 test and SST-2 dev+test, are left alone). Writes bench/results/head_gptq.json.

Run from the repository root (heavy: under the lock):
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.head_gptq --types q8_0,q5_0,iq4_nl,q4_0
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench._common import stamp, write_result
from bench.ladder_model import heldout_tiles


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch: int = 4) -> float:
    nll, n = 0.0, 0
    for i in range(0, len(windows), batch):
        b = windows[i:i + batch]
        logits = model(b).logits[:, :-1]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b[:, 1:].reshape(-1), reduction="sum").item()
        n += b[:, 1:].numel()
    return float(torch.exp(torch.tensor(nll / n)))


@torch.no_grad()
def head_hessian(model, windows: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """``2/n Σ xᵀx`` over the head's inputs (the final norm's outputs) on *windows*."""
    from edgellm.calibrate import HessianStats

    head, stats = model.get_output_embeddings(), HessianStats(model.get_output_embeddings().in_features)
    hook = head.register_forward_pre_hook(lambda mod, args: stats.add(args[0].reshape(-1, args[0].shape[-1])))
    try:
        for i in range(0, len(windows), batch):
            model(windows[i:i + batch])
    finally:
        hook.remove()
    return stats.H


def texts(tok, cal: torch.Tensor, n: int, L: int) -> dict:
    from edgellm.data import SST2, WIKI_VALID, data_file, read_tsv, tokenize_file, tokenize_text

    held = torch.stack(heldout_tiles(tokenize_file(tok, data_file(WIKI_VALID)), cal, L, n))
    sst = "\n".join(r.text.strip() for r in read_tsv(data_file(SST2.format(split="train")), limit=8 * n * L // 10)) + "\n"
    return {"wiki.valid held-out": held, "SST-2 train": tokenize_text(tok, sst, n * L)[: n * L].view(n, L)}


def main(argv=None) -> None:
    import edgellm
    from edgellm.data import WIKI_VALID, calibration_windows, data_file
    from edgellm.exporters.gguf_gptq import gptq_onto_grid
    from edgellm.exporters.gguf_types import TYPES, bits_per_weight, rtn
    from edgellm.measure import machine_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--types", default="q8_0,q5_0,iq4_nl,q4_0")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--windows", type=int, default=16, help="windows per evaluation text")
    ap.add_argument("--len", type=int, default=512, help="tokens per window (calibration and evaluation)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="head_gptq", help="result name in bench/results/, or a path")
    a = ap.parse_args(argv)
    types = [t for t in a.types.split(",") if t]
    if set(types) - set(TYPES):
        ap.error(f"--types: unknown {sorted(set(types) - set(TYPES))}; choose from {', '.join(TYPES)}")
    torch.set_num_threads(a.threads)
    m = edgellm.load(a.model)
    model, tok = m.model.float().eval(), m.tokenizer
    cal = calibration_windows(tok, data_file(WIKI_VALID), a.calib_samples, a.len, 0)
    evals = texts(tok, cal, a.windows, a.len)
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    H, W0 = head_hessian(model, cal), head.weight.detach().clone()
    base = {k: perplexity(model, v) for k, v in evals.items()}
    rows = []

    def measure(qtype, how, Wq, seconds):
        head.weight.copy_(Wq)
        try:
            ppl = {k: perplexity(model, v) for k, v in evals.items()}
        finally:
            head.weight.copy_(W0)
        row = {"type": qtype, "bits/weight": round(bits_per_weight(qtype), 3), "quantizer": how, "quantize s": round(seconds, 1)}
        for k, p in ppl.items():
            row[f"{k} ppl"], row[f"{k} rise"] = round(p, 4), f"{100 * (p / base[k] - 1):+.2f}%"
        rows.append(stamp(row))
        print(row, flush=True)

    with torch.no_grad():
        for t in types:
            for how, fn in (("rtn", lambda: rtn(W0, t)), ("rtn-imp", lambda: rtn(W0, t, torch.diag(H))),
                            ("gptq", lambda: gptq_onto_grid(W0, H, t))):
                t0 = time.perf_counter()
                w = fn().dequantize()
                measure(t, how, w, time.perf_counter() - t0)
    cols = list(rows[0]) if rows else []
    write_result(a.out, {
        "title": f"The output head alone at each GGUF type: RTN, importance-weighted RTN, GPTQ ({a.model})",
        "description": f"Only the output head{' (tied: the token embedding too)' if tied else ''} is replaced; every other "
                       f"weight stays fp32 (torch, {a.threads} threads). H from the final norm's outputs on "
                       f"{a.calib_samples}×{a.len} calibration tokens of wiki.valid (seed 0); perplexity on {a.windows}×{a.len} "
                       "tokens of each held-out text. fp32: " + ", ".join(f"{k} {v:.4f}" for k, v in base.items()),
        "tables": [{"title": "Head type and quantizer", "columns": [c for c in cols if c != "measured_at"], "rows": rows,
                    "notes": [f"tied embedding/head: {tied}", "quantize s: the head's quantization alone (49,152 x 576)"]}],
        "base_ppl": base,
    }, machine=machine_info(bandwidth=False))


if __name__ == "__main__":
    main()
