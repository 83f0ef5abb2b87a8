"""``edgellm bench MODEL --pipeline N``: the pipeline flags of ``edgellm bench`` and the table it prints.

The ranks are launched by ``parallel.launch.bench_pipeline``; this module only adds the flags and
prints per-rank memory, the batch-1 speed and the batch throughput.
"""

from __future__ import annotations

from ..errors import EdgeLLMError
from ..parallel.launch import bench_pipeline
from ..report.table import format_table, human_bytes
from . import emit_json


def add_arguments(p) -> None:
    """``edgellm bench`` flags for the pipeline mode."""
    p.add_argument("--pipeline", type=int, default=None, metavar="N",
                   help="run the model as an N-process pipeline (torch.distributed, gloo) on this machine; "
                        "--threads is then the total, split over the ranks")
    p.add_argument("--batch", type=int, default=0, help="with --pipeline: also measure throughput at this batch size")
    p.add_argument("--micro-batches", default="1", help="with --pipeline --batch: micro-batches in flight (list: 1,2,4)")


def check_flags(args) -> None:
    """``--pipeline`` N ≥ 2, ``--batch`` ≥ 0 and ``--micro-batches`` positive integers: checked before any process starts.

    >>> from argparse import Namespace
    >>> check_flags(Namespace(pipeline=2, batch=4, micro_batches="1,2"))
    """
    if args.pipeline is not None and not 2 <= args.pipeline <= 64:
        raise EdgeLLMError(f"--pipeline must be 2 to 64 processes (got {args.pipeline})",
                           "use --pipeline 2 or more (at most one per layer), or leave it out")
    if args.batch < 0:
        raise EdgeLLMError(f"--batch cannot be negative (got {args.batch})", "use --batch 0 (no batch run) or a batch size")
    for part in str(args.micro_batches).split(","):
        if not (part.strip().isdigit() and 1 <= int(part) <= 1024):
            raise EdgeLLMError(f"--micro-batches '{args.micro_batches}' is not a list of integers from 1 to 1024",
                               "use e.g. --micro-batches 1,2,4")


def run(args) -> int:
    """``edgellm bench MODEL --pipeline N``: print per-rank memory and the speed table."""
    r = bench_pipeline(args.model, args.pipeline, threads=args.threads, prompt_len=args.prompt_len,
                       new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup, batch=args.batch,
                       micro_batches=args.micro_batches)
    print(format_table([{"rank": x["rank"], "layers": f"{x['layers'][0]}-{x['layers'][1] - 1}",
                         "weights": human_bytes(x["weight_bytes"]), "peak RSS": human_bytes(x["peak_rss_bytes"]),
                         "threads": x["threads"]} for x in r["ranks"]]))
    name = f"pipeline x{r['world_size']} ({r['backend'] or 'one process'})"
    if "speed" in r:
        s = r["speed"]
        print(format_table([{"model": args.model, "runtime": name, "prefill tok/s": s["prefill_tok_s"]["median"],
                             "TTFT ms": s["ttft_ms"]["median"], "decode tok/s": s["decode_tok_s"]["median"],
                             "decode min-max": f"{s['decode_tok_s']['min']:.1f}-{s['decode_tok_s']['max']:.1f}"}]))
    if r.get("batch"):
        print(format_table([{"model": args.model, "runtime": name, "batch": b["batch_size"],
                             "micro-batches": b["micro_batches"], "batch tok/s": b["throughput_tok_s"]["median"],
                             "min-max": f"{b['throughput_tok_s']['min']:.1f}-{b['throughput_tok_s']['max']:.1f}"}
                            for b in r["batch"]]))
    emit_json(args, r)
    return 0
