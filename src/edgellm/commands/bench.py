"""``edgellm bench MODEL``: size, peak RSS (fresh subprocess), prefill/TTFT/decode, bandwidth use.

The workload flags are generated from ``BenchConfig`` (``commands/flags.py``), so each default is stated
there; ``--pipeline`` hands over to ``commands/pipeline.py``.
"""

from __future__ import annotations

from ..measure import BenchConfig, bench
from ..placed import parse_max_memory
from ..report.table import format_table, human_bytes
from . import add_common, emit_json, load_kwargs, pipeline
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or artifact (.gguf, .onnx, .pte)")
    add_config_flags(p, BenchConfig)
    add_common(p)
    pipeline.add_arguments(p)


def run(args) -> int:
    import dataclasses

    pipeline.check_flags(args)            # before any process starts
    if getattr(args, "max_memory", None):
        parse_max_memory(args.max_memory)
    cfg = config_from_args(BenchConfig, args)
    if getattr(args, "pipeline", None):
        vars(args).update(dataclasses.asdict(cfg))    # the workload flags, defaults filled in
        return pipeline.run(args)
    r = bench(args.model, cfg, runtime=args.runtime, threads=args.threads, device=args.device,
              load_kwargs=load_kwargs(args))
    s, m = r.speed, r.machine
    row = {"model": args.model, "runtime": r.runtime, "threads": r.threads, "file": human_bytes(r.file_bytes),
           "params in memory": human_bytes(r.param_bytes), "peak RSS": human_bytes(r.peak_rss_bytes),
           "prefill tok/s": s.prefill_tok_s.median, "TTFT ms": s.ttft_ms.median, "decode tok/s": s.decode_tok_s.median,
           "decode min-max": f"{s.decode_tok_s.min:.1f}-{s.decode_tok_s.max:.1f}"}
    if m is not None:
        row["BW util"] = f"{100 * r.bandwidth_utilisation:.1f}%"
    print(format_table([row]))
    workload = f"runs={s.runs} prompt={s.prompt_tokens} new={s.new_tokens} (median shown)"
    if m is not None:
        workload = (f"machine: {m['cpu_model']}, {m['logical_cores']} cores, {human_bytes(m['ram_bytes'])} RAM, "
                    f"ISA {' '.join(m['isa_flags'])}, measured bandwidth {m['measured_bandwidth_GBps']:.1f} GB/s; "
                    + workload)
    print(workload)
    emit_json(args, r.to_dict())
    return 0
