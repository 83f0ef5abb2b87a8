"""``edgellm distill``: train a student to match a teacher (KD), or recover a pruned/quantized model.

    edgellm distill --teacher smollm2-135m --student-from smollm2-135m --keep-layers 15 \\
        --data wikitext-2/wiki.valid.tokens --out out/s15 --steps 300
    edgellm distill --teacher T --student S --data FILE --out DIR --resume DIR.run

The training flags are generated from ``DistillConfig`` (``commands/flags.py``).
Runs under ``accelerate launch -m edgellm.distillation ...`` too (each process trains a replica).
"""

from __future__ import annotations

from ..distillation import DistillConfig, distill, student_from_teacher
from ..errors import EdgeLLMError
from ..models import load
from ..report.table import format_table
from . import emit_json
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("--teacher", required=True, help="teacher: built-in name or model folder")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", help="student: model folder or name (pruned/quantized for recovery)")
    who.add_argument("--student-from", metavar="MODEL", help="build the student from MODEL by keeping evenly spaced layers")
    p.add_argument("--keep-layers", type=int, default=None, help="with --student-from: layers to keep")
    p.add_argument("--prune-ratio", type=float, default=None, help="with --student-from: fraction of layers to drop")
    p.add_argument("--data", required=True, help="training text (LM) or sentence<TAB>label TSV (classifier)")
    p.add_argument("--eval-data", default=None, help="classifier: labelled TSV for validation (default: hold out rows)")
    p.add_argument("--out", required=True, help="output HF folder (logs and curves in OUT/distill/)")
    p.add_argument("--resume", default=None, metavar="DIR", help="checkpoint folder (or OUT.run) of this run")
    p.add_argument("--cache-dir", default=None, help="folder for the teacher's top-k logits (reused across runs)")
    p.add_argument("--task", default=None, choices=["causal-lm", "classification"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the result as JSON")
    add_config_flags(p, DistillConfig)


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(DistillConfig, args)
    kw = {"task": args.task} if args.task else {}
    teacher = load(args.teacher, **kw)
    if args.student_from:
        if args.keep_layers is None and args.prune_ratio is None:
            raise EdgeLLMError("--student-from needs --keep-layers or --prune-ratio", "e.g. --keep-layers 15")
        src = teacher if args.student_from == args.teacher else load(args.student_from, **kw)
        student = student_from_teacher(src, keep_layers=args.keep_layers, prune_ratio=args.prune_ratio)
    else:
        if args.keep_layers is not None or args.prune_ratio is not None:
            raise EdgeLLMError("--keep-layers/--prune-ratio only apply with --student-from", "drop them or use --student-from")
        student = load(args.student, **kw)
    r = distill(teacher, student, args.data, cfg, out=args.out, resume=args.resume, eval_data=args.eval_data,
                cache_dir=args.cache_dir, progress=not args.quiet, force=args.force)
    if r.is_main:
        print(format_table([summary_row(r)]))
        emit_json(args, r.to_dict())
    return 130 if r.interrupted else 0


def summary_row(r) -> dict:
    first, last = (r.evals[0] if r.evals else {}), (r.evals[-1] if r.evals else {})
    metric = "val_accuracy" if "val_accuracy" in last else "val_nll"
    return {"out": r.out or r.checkpoint, "steps": r.steps, "tokens seen": r.tokens_seen,
            "seconds": round(r.wall_seconds, 1), f"{metric} start": first.get(metric), f"{metric} end": last.get(metric),
            "curves": r.plot, "interrupted": r.interrupted}
