"""LiteRT (TFLite) against ExecuTorch, llama.cpp and ONNX Runtime: SmolLM2 and the MiniLM SST-2 classifier.

One part per invocation (``--part``), so a long series can be stopped and resumed; each part stores its
rows in ``<work>/parts.json`` and the result file is rewritten from every part done so far (``--part report``
rewrites it without measuring anything).

- ``lm-export``: SmolLM2-135M to ``.tflite`` fp32 and int8 (dynamic-range; ``edgellm export --format litert``,
  verified), and the same model to ``.pte`` fp32 / int8 (8da8w) and GGUF F32 / Q8_0 (those unverified here:
  their own benches verify them). Export seconds, file size, weight bytes read per token.
- ``lm-ppl``: perplexity of each ``.tflite`` on the interpreter, standard protocol (wikitext-2 test,
  windows of 512, the first ``--ppl-tokens`` tokens, 20,480 by default), next to PyTorch fp32.
- ``lm-speed``: prefill and decode tok/s of LiteRT, ExecuTorch and llama.cpp at the same bit width (fp32 /
  int8 / F32-Q8_0), loaded side by side and measured in paired rounds (``edgellm.measure.measure_paired``);
  the ratios are medians of per-round ratios to LiteRT.
- ``lm-noise``: the int8 files against the ``int8-act`` verification limits: each file (the output head's input
  rounded to int8, and the default, head input fp32) against its modelled PyTorch reference (FC inputs rounded
  per row as the kernel does), next to the same reference against itself with its inputs scaled by
  1 + 1e-6·N(0, 1) before each rounding (two seeds: the rounding's own noise floor) and against the
  weights-only reference; on the verification text (4,096 wikitext-2 test tokens, windows of 512),
  KL(reference ‖ other) and top-1 agreement per token.
- ``cls``: MiniLM-L6 fine-tuned on SST-2 (the folder bench.classifier_onnx makes, fine-tuned here the same
  way when missing), exported to ``.tflite`` and ``.onnx`` fp32 / int8; accuracy on all 872 dev rows and
  throughput at batch 1 and 32 (end to end through ``classify``), alternating rounds.
Run from the repository root, under the heavy-job lock:
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.litert --part lm-export --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

from bench._common import invocation, repo_relative, stamp, write_result

PARTS = ("lm-export", "lm-ppl", "lm-speed", "lm-noise", "cls")
LM_ARTIFACTS = {  # label -> (format, options, file name)
    "litert fp32": ("litert", {"variant": "fp32", "max_len": 512, "prefill_len": 128}, "smollm2-fp32.tflite"),
    "litert int8": ("litert", {"variant": "int8", "max_len": 512, "prefill_len": 128}, "smollm2-int8.tflite"),
    "litert int8, head input int8": ("litert", {"variant": "int8", "max_len": 512, "prefill_len": 128,
                                                "quantize_head_input": True}, "smollm2-int8-headq.tflite"),
    "executorch fp32": ("executorch", {"variant": "fp32", "max_len": 512}, "smollm2-fp32.pte"),
    "executorch int8": ("executorch", {"variant": "int8", "max_len": 512}, "smollm2-int8.pte"),
    "llama.cpp F32": ("gguf", {"gguf_type": "f32"}, "smollm2-f32.gguf"),
    "llama.cpp Q8_0": ("gguf", {"gguf_type": "q8_0"}, "smollm2-q8_0.gguf"),
}


def _parts(work: Path) -> dict:
    p = work / "parts.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _save(work: Path, name: str, value) -> dict:
    parts = _parts(work)
    parts[name] = value
    (work / "parts.json").write_text(json.dumps(parts, indent=1))
    return parts


def lm_export(args, work: Path) -> dict:
    import resource

    from edgellm.errors import EdgeLLMError
    from edgellm.exporters import export
    from edgellm.models import load

    base = load("smollm2-135m")
    rows = []
    for label, (fmt, opts, name) in LM_ARTIFACTS.items():
        if args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        failed = None
        try:
            r = export(base, fmt, work / name, force=True, verify=fmt == "litert", threads=args.threads, **opts)
        except EdgeLLMError as e:              # a verification failure is a finding: record it, keep the artifact
            if "verification failed" not in str(e):
                raise
            failed = str(e)
            r = export(base, fmt, work / name, force=True, verify=False, threads=args.threads, **opts)
        v = r.verification or {}
        rows.append(stamp({"artifact": label, "export s": round(time.perf_counter() - t0, 1),
                           "size MB": round(r.file_bytes / 1e6, 1),
                           "weight MB/token": round(r.details.get("weight_bytes", 0) / 1e6, 1) or None,
                           "verified KL": v.get("ppl", {}).get("kl"), "verified top-1": v.get("ppl", {}).get("top1"),
                           "verification failure": failed,
                           "peak RSS MB so far (main / converter)": "%d / %d" % (
                               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3)}))
        print(rows[-1])
    done = _parts(work).get("lm-export") or {}         # a part is saved as {"rows": [...]}
    old = {r["artifact"]: r for r in (done.get("rows", []) if isinstance(done, dict) else done)}
    old.update({r["artifact"]: r for r in rows})
    return {"rows": list(old.values())}


def lm_ppl(args, work: Path) -> dict:
    from edgellm.data import WIKI_TEST, tokenize_file
    from edgellm.evaluation.perplexity import evaluate_lm
    from edgellm.models import load
    from edgellm.runtimes import open_runtime

    ref = open_runtime(load("smollm2-135m"), threads=args.threads, device="cpu")
    ids = tokenize_file(ref.tokenizer, WIKI_TEST, max_tokens=args.ppl_tokens)
    rows = []
    for label in ("torch fp32", "litert fp32", "litert int8", "litert int8, head input int8"):
        if label != "torch fp32" and not (work / LM_ARTIFACTS[label][2]).exists():
            continue
        rt = ref if label == "torch fp32" else open_runtime(work / LM_ARTIFACTS[label][2], threads=args.threads)
        t0 = time.perf_counter()
        r = evaluate_lm(rt, ids, ctx=512, max_tokens=args.ppl_tokens)
        rows.append(stamp({"runtime": label, "perplexity": round(r.perplexity, 3), "tokens": args.ppl_tokens,
                           "ctx": 512, "seconds": round(time.perf_counter() - t0, 1)}))
        print(rows[-1])
    return {"rows": rows}


def lm_noise(args, work: Path) -> dict:
    import math

    import torch

    from edgellm.exporters.litert import LiteRTExportConfig
    from edgellm.exporters.litert_verify import fake_quantize_rows_asymmetric, reference_for
    from edgellm.exporters.verify import Tolerance, verify_artifact
    from edgellm.models import load

    loose = Tolerance(max_kl=math.inf, min_top1=0.0, max_ppl_rel=math.inf)      # the figures, never a failure
    loaded = load("smollm2-135m")

    def jittered(seed: int, head: bool = True):
        """The modelled int8 reference (the head's input rounded if *head*) with each input it rounds scaled by
        1 + 1e-6·N(0, 1) first: the linears ``reference_for`` hooks get the jittered rounding instead."""
        ref = reference_for(loaded, LiteRTExportConfig(variant="int8", quantize_head_input=head))
        gen = torch.Generator().manual_seed(seed)
        for mod in ref.model.modules():
            if mod._forward_pre_hooks:
                mod._forward_pre_hooks.clear()
                mod.register_forward_pre_hook(lambda m, a: (fake_quantize_rows_asymmetric(
                    a[0] * (1 + 1e-6 * torch.randn(a[0].shape, generator=gen))),) + a[1:])
        return ref

    weights_only = reference_for(loaded, LiteRTExportConfig(variant="w8"))
    with_head = reference_for(loaded, LiteRTExportConfig(variant="int8", quantize_head_input=True))
    default = reference_for(loaded, LiteRTExportConfig(variant="int8"))
    file_q, file_d = (work / LM_ARTIFACTS[k][2] for k in ("litert int8, head input int8", "litert int8"))
    cases = [("int8 file, head input int8: interpreter", "its modelled reference", with_head, file_q, "litert"),
             ("that reference, inputs jittered (seed 1)", "that reference", with_head, jittered(1), "torch"),
             ("that reference, inputs jittered (seed 2)", "that reference", with_head, jittered(2), "torch"),
             ("that reference", "weights-only reference", weights_only, with_head, "torch"),
             ("int8 file, head input fp32 (default): interpreter", "its modelled reference", default, file_d, "litert"),
             ("that reference, inputs jittered (seed 1)", "that reference", default, jittered(1, head=False), "torch"),
             ("that reference, inputs jittered (seed 2)", "that reference", default, jittered(2, head=False), "torch"),
             ("that reference", "weights-only reference", weights_only, default, "torch")]
    rows = []
    for label, against, ref, art, runtime in cases:
        t0 = time.perf_counter()
        r = verify_artifact(art, ref, runtime, loose, threads=args.threads)["ppl"]
        rows.append(stamp({"compared": label, "against": against, "KL": round(r["kl"], 4), "top-1": round(r["top1"], 4),
                           "ppl": round(r["artifact"], 3), "ppl against": round(r["reference"], 3),
                           "ppl diff %": round(100 * r["relative_diff"], 2), "tokens": r["n_tokens"],
                           "seconds": round(time.perf_counter() - t0, 1)}))
        print(rows[-1])
    return {"rows": rows}


def lm_speed(args, work: Path) -> dict:
    from edgellm.measure import measure_paired
    from edgellm.runtimes import open_runtime

    rows, raw = [], {}
    for width, labels in (("fp32", ("litert fp32", "executorch fp32", "llama.cpp F32")),
                          ("int8", ("litert int8", "litert int8, head input int8", "executorch int8", "llama.cpp Q8_0"))):
        labels = [label for label in labels if (work / LM_ARTIFACTS[label][2]).exists()]   # the exports made so far
        if len(labels) < 2:
            continue
        rts = {label: open_runtime(work / LM_ARTIFACTS[label][2], threads=args.threads) for label in labels}
        r = measure_paired(rts, rounds=args.rounds, prompt_len=args.prompt_len, new_tokens=args.new_tokens)
        raw[width] = r
        for label in labels:
            runs = r["runs"][label]
            row = {"bits": width, "runtime": label, "prefill tok/s": round(statistics.median(runs["prefill"]), 1),
                   "decode tok/s": round(statistics.median(runs["decode"]), 1)}
            if label in r.get("ratios", {}):
                row["prefill × litert"] = round(r["ratios"][label]["prefill"]["median"], 2)
                row["decode × litert"] = round(r["ratios"][label]["decode"]["median"], 2)
            rows.append(stamp(row))
            print(rows[-1])
        del rts
    return {"rows": rows, "raw": raw}


def cls(args, work: Path) -> dict:
    import torch

    from bench.classifier_onnx import throughput
    from edgellm.data import SST2, data_file, read_tsv
    from edgellm.distillation import DistillConfig, finetune
    from edgellm.evaluation import accuracy
    from edgellm.exporters import export
    from edgellm.models import cache_dir, load
    from edgellm.runtimes import open_runtime

    torch.set_num_threads(args.threads)
    ft = cache_dir() / "bench" / "classifier_onnx" / "minilm-sst2-s200-b32"
    train, dev = data_file(SST2.format(split="train")), data_file(SST2.format(split="dev"))
    if not (ft / "config.json").exists():
        cfg = DistillConfig(steps=200, lr=1e-4, batch_size=32, max_length=64, warmup=20, eval_every=0)
        finetune(load("minilm-l6", task="classification", num_labels=2), train, cfg, out=ft, eval_data=dev,
                 progress=False, force=True)
    arts, export_s = {}, {}
    for label, fmt, opts in (("litert fp32", "litert", {"variant": "fp32", "seq_len": 64}),
                             ("litert int8", "litert", {"variant": "int8", "seq_len": 64}),
                             ("onnx fp32", "onnx", {"variant": "fp32"}), ("onnx int8", "onnx", {"variant": "int8"})):
        t0 = time.perf_counter()
        suffix = ".tflite" if fmt == "litert" else ".onnx"
        arts[label] = export(load(ft, task="classification"), fmt, work / f"minilm-{label.replace(' ', '-')}{suffix}",
                             force=True, threads=args.threads, **opts)
        export_s[label] = time.perf_counter() - t0
    rts = {label: open_runtime(a.path, threads=args.threads) for label, a in arts.items()}
    rows_dev = read_tsv(dev)
    acc = {label: accuracy(rt, rows_dev, batch_size=32).accuracy for label, rt in rts.items()}
    texts = [r.text for r in rows_dev]
    tok = rts["litert fp32"].tokenizer
    truncated = sum(len(tok(t)["input_ids"]) > 64 for t in texts)   # LiteRT's static seq_len cuts these
    speed = {(label, b): [] for label in rts for b in (1, 32)}
    for rt in rts.values():
        throughput(rt, texts[:8], 1), throughput(rt, texts[:64], 32)
    for i in range(args.rounds):
        for b, n in ((1, 64), (32, 256)):
            for label in (list(rts) if i % 2 == 0 else list(rts)[::-1]):
                speed[(label, b)].append(throughput(rts[label], texts[:n], b))
    rows = []
    for label in rts:
        row = {"runtime": label, "SST-2 dev accuracy": round(100 * acc[label], 2),
               "size MB": round(arts[label].file_bytes / 1e6, 1), "export s": round(export_s[label], 1)}
        for b in (1, 32):
            ratios = [v / o for v, o in zip(speed[(label, b)], speed[("onnx " + label.split()[1], b)])]
            row[f"batch {b} sent/s"] = round(statistics.median(speed[(label, b)]), 1)
            row[f"batch {b} × onnx same bits"] = round(statistics.median(ratios), 2)
        rows.append(stamp(row))
        print(row)
    return {"rows": rows, "raw": {"speed": {f"{k[0]} b{k[1]}": v for k, v in speed.items()}, "accuracy": acc,
                                  "dev_rows_over_64_tokens": truncated,
                                  "finetuned_folder": repo_relative(str(ft))}}


TITLES = {"lm-export": "SmolLM2-135M exports: size and weight bytes per token",
          "lm-ppl": "SmolLM2-135M perplexity on the LiteRT interpreter (wikitext-2 test, ctx 512)",
          "lm-speed": "SmolLM2-135M speed, paired rounds: LiteRT vs ExecuTorch vs llama.cpp at the same bit width",
          "lm-noise": "SmolLM2-135M int8: the file against its modelled reference, and the reference against itself "
                      "with inputs moved by 1e-6 (verification text, 4,096 tokens; int8-act limits: KL 0.02, top-1 0.90)",
          "cls": "MiniLM-L6 SST-2 classifier: LiteRT vs ONNX Runtime"}


def main() -> None:
    from edgellm.models import cache_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--part", required=True, choices=PARTS + ("report",),
                    help="one part to measure, or 'report': rewrite the result file from the parts done so far")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="lm-export: only these artifact labels")
    ap.add_argument("--ppl-tokens", type=int, default=20480)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--work", default=str(cache_dir() / "bench" / "litert"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.part == "report":
        parts = _parts(work)
    else:
        value = {"lm-export": lm_export, "lm-ppl": lm_ppl, "lm-speed": lm_speed, "lm-noise": lm_noise,
                 "cls": cls}[args.part](args, work)
        value["command"] = shlex.join(invocation())
        value["seconds"] = round(time.time() - t0, 1)
        parts = _save(work, args.part, value)

    def columns(rows: list) -> list:       # every key of every row, first seen first (the ratio columns skip LiteRT)
        return list(dict.fromkeys(k for r in rows for k in r))

    tables = [{"title": TITLES[p], "columns": columns(parts[p]["rows"]), "rows": parts[p]["rows"],
               "notes": [f"command: {parts[p]['command']}"]} for p in PARTS if p in parts and parts[p]["rows"]]
    write_result("litert", {
        "title": "LiteRT (TFLite) export and runtime",
        "description": ("`edgellm export --format litert` (litert-torch 0.10.0 in its own environment, ai-edge-litert "
                        "2.3.0 interpreter with XNNPACK) against ExecuTorch (XNNPACK), llama.cpp and ONNX Runtime "
                        f"on this machine, {args.threads} threads. int8 = dynamic-range int8 weights (LiteRT), 8da8w "
                        "(ExecuTorch), Q8_0 (llama.cpp), dynamic int8 (ONNX). One part per run; see each table's "
                        "command."),
        "tables": tables,
        "commands": [parts[p]["command"] for p in PARTS if p in parts],
        "raw": {p: parts[p].get("raw") for p in PARTS if p in parts},
    }, command="; ".join(parts[p]["command"] for p in PARTS if p in parts))


if __name__ == "__main__":
    main()
