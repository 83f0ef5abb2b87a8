"""``edgellm bench MODEL``: size, peak RSS (fresh subprocess), prefill/TTFT/decode, bandwidth use."""

from __future__ import annotations

from . import add_common, emit_json, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or artifact (.gguf, .onnx, .pte)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5, help="measured runs (median, min, max); at least 5 recommended")
    p.add_argument("--warmup", type=int, default=1)
    add_common(p)
    from . import pipeline

    pipeline.add_arguments(p)


def run(args) -> int:
    if getattr(args, "pipeline", None):
        from . import pipeline

        return pipeline.run(args)
    from ..measure import bench
    from ..report.table import format_table, human_bytes

    r = bench(args.model, runtime=args.runtime, threads=args.threads, prompt_len=args.prompt_len,
              new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup, device=args.device,
              load_kwargs=load_kwargs(args))
    s, m = r["speed"], r["machine"]
    print(format_table([{
        "model": args.model, "runtime": r["runtime"], "threads": r["threads"],
        "file": human_bytes(r["file_bytes"]), "params in memory": human_bytes(r["param_bytes"]),
        "peak RSS": human_bytes(r["peak_rss_bytes"]),
        "prefill tok/s": s["prefill_tok_s"]["median"], "TTFT ms": s["ttft_ms"]["median"],
        "decode tok/s": s["decode_tok_s"]["median"],
        "decode min-max": f"{s['decode_tok_s']['min']:.1f}-{s['decode_tok_s']['max']:.1f}",
        "BW util": f"{100 * r['bandwidth_utilisation']:.1f}%",
    }]))
    print(f"machine: {m['cpu_model']}, {m['logical_cores']} cores, {human_bytes(m['ram_bytes'])} RAM, "
          f"ISA {' '.join(m['isa_flags'])}, measured bandwidth {m['measured_bandwidth_GBps']:.1f} GB/s; "
          f"runs={s['runs']} prompt={s['prompt_tokens']} new={s['new_tokens']} (median shown)")
    emit_json(args, r)
    return 0
