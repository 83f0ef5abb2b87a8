"""``edgellm quantize MODEL --out DIR``: RTN / GPTQ / AWQ onto packed integer weights, saved as a folder."""

from __future__ import annotations

from . import add_common, emit_json, load_kwargs


def _group(value: str):
    v = value.strip().lower()
    if v in ("channel", "none", "per-channel"):
        return None
    if v in ("tensor", "per-tensor", "-1"):
        return -1
    try:
        return int(v)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"'{value}' is not a group size (use 32, 64, 128, channel or tensor)") from None


def add_arguments(p) -> None:
    from ..data import WIKI_VALID

    p.add_argument("model", help="built-in name or model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq", "awq"])
    p.add_argument("--bits", type=int, default=8, help="weight bits, 2..8 (default 8)")
    p.add_argument("--group-size", type=_group, default=None, metavar="G",
                   help="32, 64, 128 (any positive int; ragged last group), 'channel' (default) or 'tensor'")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="symmetric", action="store_true", default=True, help="symmetric grid (default)")
    sym.add_argument("--asym", dest="symmetric", action="store_false", help="asymmetric min-max grid with zero points")
    p.add_argument("--act-bits", type=int, default=None, choices=[8], help="8 = W8A8 (dynamic per-token int8 activations)")
    p.add_argument("--calib", default=WIKI_VALID, metavar="FILE", help=f"calibration text (default {WIKI_VALID})")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing Hessian diagonal")
    p.add_argument("--static-groups", action="store_true", help="GPTQ with --act-order: group grids fixed up front")
    p.add_argument("--mse-clip", action="store_true", help="MSE-optimal clipping of each group's range")
    p.add_argument("--awq-prescale", action="store_true", help="GPTQ: AWQ's activation-aware scaling first")
    p.add_argument("--no-clip-search", dest="clip_search", action="store_false", help="AWQ: skip the clipping search")
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="quantize only matching linears")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave matching linears in float")
    p.add_argument("--quantize-embeddings", action="store_true", help="also store embeddings and LM head in 8-bit")
    add_common(p, runtime=False)
    p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")


def run(args) -> int:
    import torch

    from ..fileio import check_writable_target, dir_bytes
    from ..models import load
    from ..quantization import QuantConfig, quantize
    from ..quantization.storage import save_quantized
    from ..report.table import format_table, human_bytes

    cfg = QuantConfig(method=args.method, bits=args.bits, group_size=args.group_size, symmetric=args.symmetric,
                      act_bits=args.act_bits, include=tuple(args.include), exclude=tuple(args.exclude),
                      quantize_embeddings=args.quantize_embeddings, calib=args.calib, calib_samples=args.calib_samples,
                      calib_len=args.calib_len, seed=args.seed, act_order=args.act_order,
                      static_groups=args.static_groups, mse_clip=args.mse_clip, awq_prescale=args.awq_prescale,
                      clip_search=args.clip_search)
    check_writable_target(args.out, args.force)   # fail before the (slow) quantization, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(args.model, **load_kwargs(args))
    _, r = quantize(loaded, cfg, progress=True)
    out = save_quantized(loaded, args.out, force=args.force)
    row = {"model": args.model, "recipe": cfg.describe(), "linears": r.n_linears,
           "bits/weight": round(r.bits_per_weight, 3),
           "linear weights": f"{human_bytes(r.bytes_before)} -> {human_bytes(r.bytes_after)}",
           "on disk": human_bytes(dir_bytes(out)), "kernels": ", ".join(f"{k}:{v}" for k, v in r.kernels.items()),
           "seconds": round(r.seconds, 1)}
    print(format_table([row]))
    print(f"wrote {out}")
    emit_json(args, {"out": str(out), "config": cfg.__dict__, "result": r.to_dict(), "file_bytes": dir_bytes(out)})
    return 0
