"""The LiteRT converter step, run as a script inside the separate converter environment.

``litert-torch`` (Google's PyTorch → ``.tflite`` converter) pins ``xdsl==0.28.0``, which pins
``typing-extensions<4.13``; the main environment needs ≥ 4.16 (pydantic, anyio, openai), so the
converter cannot live beside the rest of edgellm. ``exporters.litert_env`` builds a virtual
environment with the same torch and ``litert-torch``; ``exporters.litert`` exports the signatures
with ``torch.export`` in the main environment (where the model, the family registry and the cache
wrapper live), saves each ``ExportedProgram`` with ``torch.export.save`` (same torch version on both
sides), and runs this file there as ``python litert_convert.py --serve``, which converts one job per
line of stdin (``serve``; ``python litert_convert.py job.json`` converts one job and exits).

This script imports only torch, ``litert_torch`` and ``ai_edge_quantizer``; never edgellm (it is not
installed there). The job names the programs (one signature each), the output file, and the
variant: ``fp32``; ``int8`` = dynamic-range int8 (int8 weights per channel, activations quantized at
run time, ``ai_edge_quantizer``'s dynamic int8 config); ``int4`` = dynamic-range with 4-bit
weights per block of ``group_size`` (32-256); ``w8`` = weight-only int8 (weights de-quantized to fp32
before the op). All symmetric. The recipe names its ops: the fully-connected ops (and constant
batch-matmuls), plus the token embedding's ``EMBEDDING_LOOKUP`` when the job sets
``quantize_embeddings`` (edgellm's default, as ``ai_edge_quantizer``'s stock ``dynamic_wi8_afp32`` does;
without it the table stays fp32, as ONNX and ExecuTorch keep it). With ``weight_only_rows`` (int8 causal LMs,
edgellm's default) the FC ops with that many output rows, the output head, are weight-only int8 instead
(int8 weights, fp32 input; ``head_scopes`` finds them in the converted flatbuffer). Weight-only int4 per block is refused
by ``ai_edge_quantizer`` 0.10 ("Unsupported op for ComputePrecision.FLOAT: FULLY_CONNECTED"), so
there is no ``w4``.
Quantization runs on the converted fp32 flatbuffer. Deliberately absent: static (calibrated) activation quantization and the
converter's experimental V2 path.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _sample_args(ep) -> tuple:
    """Zero tensors shaped like the program's user inputs (the shapes are static)."""
    import torch

    names = set(ep.graph_signature.user_inputs)
    args = []
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta["val"]
            args.append(torch.zeros(tuple(int(d) for d in val.shape), dtype=val.dtype))
    return tuple(args)


def head_scopes(path: str, rows: int) -> list[str]:
    """The scopes (output tensor names, as ``ai_edge_quantizer`` matches them) of every FULLY_CONNECTED op, in every
    signature's subgraph, whose weight has *rows* output rows: a causal LM's output head (rows = vocabulary)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(Path(path))
    found = []
    for sg in model.subgraphs:
        for op in sg.operators:
            name = fu.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            if name == qtyping.TFLOperationName.FULLY_CONNECTED:
                weight = sg.tensors[op.inputs[1]]
                if len(weight.shape) == 2 and int(weight.shape[0]) == rows:
                    found.append(fu.get_op_scope(op, sg.tensors))
    return found


def _recipe(variant: str, group_size: int, embeddings: bool = False, weight_only: tuple = ()):
    """The quantization recipe of *variant*: FC (and constant BATCH_MATMUL) weights, the embedding table if *embeddings*;
    the FC ops of the scopes in *weight_only* (int8) keep int8 weights with fp32 input (the recipe's last match wins)."""
    import re

    from ai_edge_quantizer import qtyping, recipe_manager

    op = qtyping.TFLOperationName
    rm = recipe_manager.RecipeManager()
    if variant == "int4":
        block = qtyping.QuantGranularity(f"BLOCKWISE_{group_size}")
        for name in (op.FULLY_CONNECTED,) + ((op.EMBEDDING_LOOKUP,) if embeddings else ()):
            rm.add_dynamic_config(regex=".*", operation_name=name, num_bits=4, granularity=block)
        return rm.get_quantization_recipe()
    if variant not in ("int8", "w8"):
        raise ValueError(f"unknown variant {variant}")
    add = rm.add_dynamic_config if variant == "int8" else rm.add_weight_only_config
    for name in (op.FULLY_CONNECTED, op.BATCH_MATMUL) + ((op.EMBEDDING_LOOKUP,) if embeddings else ()):
        add(regex=".*", operation_name=name, num_bits=8)
    for scope in weight_only:
        rm.add_weight_only_config(regex=f"^{re.escape(scope)}$", operation_name=op.FULLY_CONNECTED, num_bits=8)
    return rm.get_quantization_recipe()


def convert(job: dict) -> dict:
    """Convert the job's programs into one ``.tflite`` with one signature each; return timings."""
    import litert_torch
    import torch

    t0 = time.perf_counter()
    converter = None
    for sig in job["signatures"]:
        ep = torch.export.load(sig["program"])
        module, args = ep.module(), _sample_args(ep)
        converter = (litert_torch.signature if converter is None else converter.signature)(sig["name"], module, args)
    model = converter.convert()
    fp32 = Path(job["out"]) if job["variant"] == "fp32" else Path(job["out"]).with_suffix(".fp32.tflite")
    model.export(str(fp32))
    t1 = time.perf_counter()
    if job["variant"] != "fp32":
        from ai_edge_quantizer import quantizer

        rows = job.get("weight_only_rows")
        keep = tuple(head_scopes(str(fp32), int(rows))) if rows else ()
        if rows and not keep:
            raise RuntimeError(f"no fully-connected op with {rows} output rows (the output head) in the converted model")
        qt = quantizer.Quantizer(str(fp32))
        qt.load_quantization_recipe(_recipe(job["variant"], int(job.get("group_size", 32)),
                                             bool(job.get("quantize_embeddings", False)), keep))
        qt.quantize().export_model(job["out"], overwrite=True)
        fp32.unlink()
    import ai_edge_quantizer

    return {"convert_seconds": t1 - t0, "quantize_seconds": time.perf_counter() - t1,
            "weight_only_fc": len(keep) if job["variant"] != "fp32" else 0,
            "litert_torch": litert_torch.__version__, "torch": torch.__version__,
            "ai_edge_quantizer": getattr(ai_edge_quantizer, "__version__", None)}


def run_job(path: str) -> None:
    """Convert the job in the file *path*; its report (with the converter's peak RSS so far) goes where it says."""
    import resource

    job = json.loads(Path(path).read_text())
    report = convert(job)
    report["converter_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    Path(job["report"]).write_text(json.dumps(report))


def serve() -> int:
    """Convert one job per line of stdin (a job file's path) until stdin closes; answer each with one JSON line
    on stdout, ``{"ok": true}`` or ``{"ok": false, "error": "<the exception's last line>"}`` (its traceback on
    stderr). The libraries' own prints are sent to stderr, so stdout carries the answers alone."""
    import os
    import traceback

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import ai_edge_quantizer  # noqa: F401  (imported before the first job: that is what the process is kept for)
    import litert_torch  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            run_job(line.strip())
            answer = {"ok": True}
        except Exception as e:  # noqa: BLE001 - any failure is the job's, reported to the caller
            traceback.print_exc()
            answer = {"ok": False, "error": traceback.format_exception_only(type(e), e)[-1].strip()}
        sys.stderr.flush()
        answers.write(json.dumps(answer) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--serve"]:
        return serve()
    run_job(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
