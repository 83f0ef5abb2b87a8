"""``edgellm rotate MODEL --out DIR``: fold the norm gains and rotate the residual stream (``edgellm.transforms``).

Writes a plain fp32 HF folder (safetensors + tokenizer + manifest) that computes the original's logits
and that ``load`` and every exporter read. Flags are generated from ``RotateConfig`` (``commands/flags.py``).
"""

from __future__ import annotations

import dataclasses

from ..fileio import check_output, dir_bytes
from ..models import load, save
from ..report.table import format_table, human_bytes
from ..transforms import RotateConfig, rotate
from ..transforms.rotate import provenance
from . import add_common, emit_json, load_kwargs
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or .gguf file (a float causal LM)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if edgellm wrote it")
    add_config_flags(p, RotateConfig)
    add_common(p, runtime=False, threads=False)
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")


def run(args) -> int:
    cfg = config_from_args(RotateConfig, args)
    check_output(args.out, args.force, inputs=(args.model,))     # fail before loading, not after
    loaded = load(args.model, **load_kwargs(args))
    rotated, r = rotate(loaded, cfg)
    out = save(rotated, args.out, force=args.force, edgellm_section={"rotation": provenance(r)})
    row = {"model": args.model, "family": r.family, "hidden": r.hidden_size, "rotation": r.rotation,
           "norms folded": r.folded_norms, "untied head": "yes" if r.untied else "no",
           "max |logit diff|": "-" if r.max_logit_diff is None else f"{r.max_logit_diff:.2g}",
           "on disk": human_bytes(dir_bytes(out)), "seconds": round(r.seconds, 1)}
    print(format_table([row]))
    print(f"wrote {out}")
    emit_json(args, {"out": str(out), "config": dataclasses.asdict(cfg), "result": r.to_dict(), "file_bytes": dir_bytes(out)})
    return 0
