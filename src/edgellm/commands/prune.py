"""``edgellm prune MODEL --out DIR``: unstructured / N:M (sparse folder) or structured (plain HF folder)."""

from __future__ import annotations

from . import add_common, emit_json, load_kwargs


def add_arguments(p) -> None:
    from ..data import WIKI_VALID

    p.add_argument("model", help="built-in name or model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt (structured: wanda or magnitude)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights zeroed per linear (default 0.5)")
    p.add_argument("--pattern", default=None, metavar="N:M", help="semi-structured, e.g. 2:4")
    p.add_argument("--structure", default=None, choices=["depth", "width", "heads"],
                   help="remove whole layers, MLP channels or attention heads")
    p.add_argument("--ratio", type=float, default=None, help="structured: fraction of layers/channels/heads removed")
    p.add_argument("--max-params", type=float, default=None, help="structured: parameter budget (e.g. 100e6)")
    p.add_argument("--max-bytes", type=float, default=None, help="structured: byte budget for the parameters")
    p.add_argument("--calib", default=WIKI_VALID, metavar="FILE", help=f"calibration text (default {WIKI_VALID})")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="prune only matching linears")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave matching linears dense")
    p.add_argument("--sequential", action="store_true",
                   help="wanda/sparsegpt: calibrate each block stage by stage (q/k/v, then o, then gate/up, then down)")
    add_common(p, runtime=False)
    p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")


def run(args) -> int:
    import torch

    from ..models import load, save
    from ..pruning import PruneConfig, prune
    from ..pruning.storage import NO_KERNEL_NOTE, save_sparse
    from ..report.table import format_table, human_bytes

    cfg = PruneConfig(method=args.method, sparsity=args.sparsity, pattern=args.pattern, structure=args.structure,
                      ratio=args.ratio, max_params=int(args.max_params) if args.max_params else None,
                      max_bytes=int(args.max_bytes) if args.max_bytes else None, calib=args.calib,
                      calib_samples=args.calib_samples, calib_len=args.calib_len, seed=args.seed,
                      include=tuple(args.include), exclude=tuple(args.exclude), sequential=args.sequential)
    from ..fileio import check_writable_target

    check_writable_target(args.out, args.force)   # fail before the (slow) pruning, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(args.model, **load_kwargs(args))
    _, r = prune(loaded, cfg, progress=True)
    section = {"pruned_from": args.model, "prune": {k: v for k, v in r.to_dict().items() if k != "scores"}}
    if cfg.structure is None:
        out = save_sparse(loaded, args.out, force=args.force, edgellm_section=section)
    else:
        out = save(loaded, args.out, force=args.force, edgellm_section=section)   # no "format": a plain HF folder
    from ..fileio import dir_bytes

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
    emit_json(args, {"out": str(out), "config": cfg.__dict__, "result": r.to_dict(), "file_bytes": dir_bytes(out)})
    return 0
