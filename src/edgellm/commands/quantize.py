"""``edgellm quantize MODEL --out DIR``: RTN / GPTQ / AWQ onto packed integer weights, saved as a folder.

The method flags are generated from ``QuantConfig`` (``commands/flags.py``): every field has one.
"""

from __future__ import annotations

import dataclasses

from ..fileio import dir_bytes
from ..quantization import QuantConfig, quantize
from ..quantization.storage import save_quantized
from ..report.table import format_table, human_bytes
from . import add_transform_arguments, emit_json, start_transform


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
    import argparse

    add_transform_arguments(p, QuantConfig, types={"group_size": _group})
    p.add_argument("--sym", dest="symmetric", action="store_true", default=argparse.SUPPRESS, help="= --symmetric")
    p.add_argument("--asym", dest="symmetric", action="store_false", default=argparse.SUPPRESS, help="= --no-symmetric")


def run(args) -> int:
    cfg, loaded = start_transform(args, QuantConfig)
    _, r = quantize(loaded, cfg, progress=True)
    out = save_quantized(loaded, args.out, force=args.force)
    row = {"model": args.model, "recipe": cfg.describe(), "linears": r.n_linears,
           "bits/weight": round(r.bits_per_weight, 3),
           "linear weights": f"{human_bytes(r.bytes_before)} -> {human_bytes(r.bytes_after)}",
           "on disk": human_bytes(dir_bytes(out)), "kernels": ", ".join(f"{k}:{v}" for k, v in r.kernels.items()),
           "seconds": round(r.seconds, 1)}
    print(format_table([row]))
    print(f"wrote {out}")
    emit_json(args, {"out": str(out), "config": dataclasses.asdict(cfg), "result": r.to_dict(), "file_bytes": dir_bytes(out)})
    return 0
