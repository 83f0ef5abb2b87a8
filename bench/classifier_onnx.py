"""Classifier path: MiniLM-L6 fine-tuned on SST-2, exported to ONNX int8, against PyTorch fp32.

1. Fine-tune ``minilm-l6`` with a fresh 2-label head on SST-2 train (``edgellm.distillation.finetune``,
   labels only; ``--steps`` × ``--batch`` sentences), unless the folder already exists.
2. Export it to ONNX fp32 and int8 (encoder fused for onnxruntime, dynamic int8, verified on fixed
   sentences), and int8 without the fusion for comparison.
3. Accuracy on the whole SST-2 dev set (872 rows) for PyTorch fp32 and every ONNX graph.
4. Throughput at batch 1 and batch 32, end to end through ``runtime.classify`` (tokenizer
   included, the same for all), every runtime on the same threads, measured alternately in
   ``--rounds`` rounds; the speed-up is the median of the per-round ratios.
5. The int8 ceiling: onnxruntime's fp32 MatMul against its int8 kernels (MatMulInteger, MatMulNBits
   8/4-bit with int8 compute) on one FFN-sized GEMM (``--gemm-only`` re-measures just this).
Writes bench/results/classifier_onnx.json. Run from the repository root, under the heavy-job lock:
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.classifier_onnx --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

from bench._common import RESULTS, invocation, repo_relative, stamp, write_result


def throughput(rt, texts: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        rt.classify(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - t0)


def gemm_ceiling(work: Path, threads: int, m: int = 1312, k: int = 384, n: int = 1536, reps: int = 30) -> list[dict]:
    """onnxruntime's int8 kernels against its fp32 MatMul on one FFN-sized GEMM (m = 32 sentences × 41 tokens,
    SST-2 dev's mean padded batch): the most an int8 export can gain over fp32 here, before any other op.
    Kernels: dynamic int8 MatMulInteger (what ``--variant int8`` uses), and MatMulNBits with 8-bit and 4-bit
    weights in blocks of 32 and int8 compute (accuracy_level 4)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                          [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")])
    paths = {"fp32 MatMul": work / "gemm-fp32.onnx", "dynamic int8 MatMulInteger": work / "gemm-int8.onnx"}
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(paths["fp32 MatMul"]))
    quantize_dynamic(paths["fp32 MatMul"], paths["dynamic int8 MatMulInteger"], weight_type=QuantType.QInt8)
    for bits in (8, 4):
        q = MatMulNBitsQuantizer(onnx.load(str(paths["fp32 MatMul"])), bits=bits, block_size=32, is_symmetric=True,
                                 accuracy_level=4, algo_config=DefaultWeightOnlyQuantConfig(
                                     block_size=32, is_symmetric=True, accuracy_level=4, bits=bits))
        q.process()
        paths[f"MatMulNBits {bits}-bit g32, int8 compute"] = work / f"gemm-nbits{bits}.onnx"
        q.model.save_model_to_file(str(paths[f"MatMulNBits {bits}-bit g32, int8 compute"]))
    x = rng.standard_normal((m, k), dtype=np.float32)
    gops = {name: [] for name in paths}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    names = list(sessions)
    for r in range(6):                                            # alternating, order flipped every round
        for name in (names if r % 2 == 0 else names[::-1]):
            sessions[name].run(None, {"x": x})
            t0 = time.perf_counter()
            for _ in range(reps):
                sessions[name].run(None, {"x": x})
            gops[name].append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    ref = sessions["fp32 MatMul"].run(None, {"x": x})[0]
    base = statistics.median(gops["fp32 MatMul"])
    rows = []
    for name in names:
        y = sessions[name].run(None, {"x": x})[0]
        rows.append({"kernel": name, "shape [m, k, n]": [m, k, n], "GOP/s": round(statistics.median(gops[name]), 1),
                     "× fp32": round(statistics.median(gops[name]) / base, 2),
                     "mean relative error": round(float(np.abs(y - ref).mean() / np.abs(ref).mean()), 4)})
    return rows


def gemm_notes(machine: dict) -> list[str]:
    """The GEMM table's note, naming the int8 dot-product instructions of the CPU the figures came from."""
    flags = set(machine.get("isa_flags") or [])
    isa = ("this CPU has AVX-512 VNNI (vpdpbusd: a 4-way int8 dot product per lane)" if "avx512_vnni" in flags else
           "this CPU has AVX-VNNI (vpdpbusd on 256-bit registers)" if "avx_vnni" in flags else
           "this CPU has AVX2 without VNNI (no vpdpbusd int8 dot product)")
    return ["at batch 32 the encoder is GEMM-bound: end to end, int8 cannot beat fp32 by more than its GEMMs do "
            f"(median of 6 alternating rounds); {isa}"]


def gemm_only(args) -> None:
    """Re-measure only the GEMM table, into the saved result (the accuracy table keeps its rows and times)."""
    from edgellm.measure import machine_info

    path = RESULTS / "classifier_onnx.json"
    result = json.loads(path.read_text())
    rows = gemm_ceiling(Path(args.work), args.threads)
    machine = machine_info()
    result["tables"][1] = {"title": GEMM_TITLE, "columns": list(rows[0]), "rows": [stamp(r) for r in rows],
                           "notes": gemm_notes(machine)}
    result["commands"] = (result.get("commands") or [result["command"]]) + [shlex.join(invocation())]
    write_result(path, result, machine=machine, command="; ".join(result["commands"]))
    for r in rows:
        print(r)


GEMM_TITLE = "the int8 ceiling: one FFN GEMM in onnxruntime, fp32 vs its int8 kernels"


def main() -> None:
    import torch

    from edgellm.data import SST2, data_file, read_tsv
    from edgellm.distillation import DistillConfig, finetune
    from edgellm.evaluation import accuracy
    from edgellm.exporters import export
    from edgellm.measure import machine_info
    from edgellm.models import cache_dir, load
    from edgellm.runtimes import open_runtime

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--b1-sentences", type=int, default=64)
    ap.add_argument("--b32-sentences", type=int, default=256)
    ap.add_argument("--work", default=str(cache_dir() / "bench" / "classifier_onnx"))
    ap.add_argument("--gemm-only", action="store_true", help="re-measure only the GEMM-ceiling table")
    args = ap.parse_args()
    if args.gemm_only:
        return gemm_only(args)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    work = Path(args.work)
    ft = work / f"minilm-sst2-s{args.steps}-b{args.batch}"
    train, dev = data_file(SST2.format(split="train")), data_file(SST2.format(split="dev"))
    ft_seconds = None
    if not (ft / "config.json").exists():
        t0 = time.time()
        cfg = DistillConfig(steps=args.steps, lr=args.lr, batch_size=args.batch, max_length=64, warmup=20,
                            eval_every=0)
        finetune(load("minilm-l6", task="classification", num_labels=2), train, cfg, out=ft, eval_data=dev,
                 progress=False, force=True)
        ft_seconds = time.time() - t0
    arts = {}
    for name, variant, fuse in (("onnx fp32", "fp32", True), ("onnx int8", "int8", True),
                                ("onnx int8, unfused", "int8", False)):
        arts[name] = export(load(ft, task="classification"), "onnx", work / f"minilm-sst2-{variant}{'' if fuse else '-plain'}.onnx",
                            variant=variant, fuse=fuse, force=True, threads=args.threads)
    rts = {"torch fp32": open_runtime(load(ft, task="classification"), threads=args.threads, device="cpu"),
           **{name: open_runtime(r.path, threads=args.threads) for name, r in arts.items()}}
    rows_dev = read_tsv(dev)
    acc = {name: accuracy(rt, rows_dev, batch_size=32).accuracy for name, rt in rts.items()}
    texts = [r.text for r in rows_dev]
    speed = {(name, b): [] for name in rts for b in (1, 32)}
    for name, rt in rts.items():                                     # warm-up
        throughput(rt, texts[:8], 1), throughput(rt, texts[:64], 32)
    for _ in range(args.rounds):
        for b, n in ((1, args.b1_sentences), (32, args.b32_sentences)):
            for name, rt in rts.items():
                speed[(name, b)].append(throughput(rt, texts[:n], b))
    table = []
    for name in rts:
        row = {"runtime": name, "SST-2 dev accuracy": round(100 * acc[name], 2),
               "Δacc vs torch (points)": round(100 * (acc[name] - acc["torch fp32"]), 2),
               "size MB": round((arts[name].file_bytes if name in arts
                                 else rts[name].meta.param_bytes) / 1e6, 1)}
        for b in (1, 32):
            vals = speed[(name, b)]
            ratios = [v / t for v, t in zip(vals, speed[("torch fp32", b)])]
            row[f"batch {b} sent/s"] = round(statistics.median(vals), 1)
            row[f"batch {b} × torch"] = round(statistics.median(ratios), 2)
        table.append(row)
    int8 = next(r for r in table if r["runtime"] == "onnx int8")
    gemm = gemm_ceiling(work, args.threads)
    verdict = (f"ONNX int8 vs PyTorch fp32 ({args.threads} threads): {int8['batch 1 × torch']}× at batch 1, "
               f"{int8['batch 32 × torch']}× at batch 32 (target ≥ 2.5×); accuracy {int8['Δacc vs torch (points)']:+} "
               f"points (target ≥ −1)")
    result = {
        "title": "Classifier: MiniLM-L6 SST-2, ONNX Runtime int8 vs PyTorch fp32",
        "description": (f"all-MiniLM-L6-v2 with a fresh 2-label head fine-tuned on SST-2 train ({args.steps} steps × "
                        f"{args.batch} sentences, lr {args.lr}, max 64 tokens; edgellm.distillation.finetune), exported "
                        "with `edgellm export --format onnx --variant int8` (encoder fused into onnxruntime's Attention, "
                        "SkipLayerNormalization and BiasGelu ops, then dynamic int8: QAttention and MatMulInteger; "
                        "verified); `unfused` is the plain traced graph with dynamic int8 MatMuls. Accuracy "
                        "on all 872 SST-2 dev rows. Throughput end to end through `classify` (tokenizer included) "
                        f"on {args.b1_sentences} dev sentences one at a time and {args.b32_sentences} in batches of 32, "
                        f"the runtimes measured alternately in {args.rounds} rounds; × torch is the median per-round "
                        "ratio."),
        "tables": [{"title": "accuracy and throughput", "columns": list(table[0]), "rows": [stamp(r) for r in table],
                    "notes": [verdict]},
                   {"title": GEMM_TITLE, "columns": list(gemm[0]), "rows": [stamp(r) for r in gemm],
                    "notes": gemm_notes(machine_info())}],
        "commands": [shlex.join(invocation())],
        "raw": {"speed": {f"{k[0]} b{k[1]}": v for k, v in speed.items()}, "accuracy": acc,
                "exports": {k: v.to_dict() for k, v in arts.items()}, "finetune_seconds": ft_seconds,
                "finetuned_folder": repo_relative(str(ft))},
        "wall_seconds": time.time() - t_start,
    }
    write_result("classifier_onnx", result)
    for row in table:
        print(row)
    print(verdict)


if __name__ == "__main__":
    main()
