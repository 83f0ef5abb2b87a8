"""``edgellm prune MODEL --out DIR``: unstructured / N:M (sparse folder) or structured (plain HF folder).

The method flags are generated from ``PruneConfig`` (``commands/flags.py``): every field has one.
"""

from __future__ import annotations

import dataclasses

from ..fileio import dir_bytes
from ..models import save
from ..pruning import PruneConfig, prune
from ..pruning.storage import NO_KERNEL_NOTE, save_sparse
from ..report.table import format_table, human_bytes
from . import add_transform_arguments, emit_json, start_transform


def add_arguments(p) -> None:
    add_transform_arguments(p, PruneConfig)


def run(args) -> int:
    cfg, loaded = start_transform(args, PruneConfig)
    _, r = prune(loaded, cfg, progress=True)
    section = {"pruned_from": args.model, "prune": {k: v for k, v in r.to_dict().items() if k != "scores"}}
    if cfg.structure is None:
        out = save_sparse(loaded, args.out, force=args.force, edgellm_section=section)
    else:
        out = save(loaded, args.out, force=args.force, edgellm_section=section)   # no "format": a plain HF folder
    row = {"model": args.model, "method": cfg.method, "structure": cfg.structure or "-", "pattern": cfg.pattern or "-",
           "sparsity": round(r.achieved_sparsity, 4) if r.achieved_sparsity is not None else "-",
           "params": f"{r.params_before / 1e6:.2f}M -> {r.params_after / 1e6:.2f}M",
           "non-zero": f"{r.nonzero_params / 1e6:.2f}M", "on disk": human_bytes(dir_bytes(out)),
           "seconds": round(r.seconds, 1)}
    print(format_table([row]))
    if cfg.structure is None:
        print(f"note: {NO_KERNEL_NOTE}")
    else:
        print("a standard HF model: loads with transformers' from_pretrained; smaller and faster on every runtime")
    print(f"wrote {out}")
    emit_json(args, {"out": str(out), "config": dataclasses.asdict(cfg), "result": r.to_dict(), "file_bytes": dir_bytes(out)})
    return 0
