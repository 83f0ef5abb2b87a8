"""``edgellm finetune MODEL --task causal-lm|classification --data FILE --out DIR``: fine-tune for a task.

    edgellm finetune smollm2-135m --task causal-lm --data train.jsonl --out out/ft            # LoRA, merged
    edgellm finetune out/ft-pruned --task causal-lm --data train.jsonl --teacher out/ft --alpha 0.5 --out out/rec
    edgellm finetune minilm-l6 --task classification --data sst-2/train.tsv --out out/cls

``--task causal-lm`` reads JSONL examples (``{"messages": [...]}`` or ``{"prompt", "completion"}``)
and trains LoRA adapters on the completion tokens (``distillation.finetune_lm``, flags from
``TuneConfig``); the output is a plain HF folder (``--no-merge``: the adapter folder).
``--task classification`` is the distillation loop with α = 1 and no teacher on a fresh head with
``--num-labels`` outputs (flags from ``DistillConfig``). Flags both configs have (``--lr``,
``--batch-size``, ``--steps``, ...) are shared; each task starts from its own defaults.
"""

from __future__ import annotations

from ..data import resolve_data_path
from ..distillation import DistillConfig, TuneConfig, finetune, finetune_lm
from ..distillation.config import FINETUNE
from ..errors import EdgeLLMError
from ..models import load
from ..report.table import format_table
from . import emit_json
from .distill import summary_row
from .flags import add_config_flags, config_fields, config_from_args

CLASSIFIER_ONLY = ("alpha", "hidden_loss")      # DistillConfig fields finetune never exposes


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name or model folder")
    p.add_argument("--task", default="classification", choices=["causal-lm", "classification"])
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--data", required=True,
                   help="JSONL examples (causal-lm) or sentence<TAB>label TSV (classification)")
    p.add_argument("--eval-data", default=None, help="validation set in the same format (default: causal-lm holds "
                   "out --val-rows examples; classification reads sst-2/dev.tsv beside --data)")
    p.add_argument("--teacher", default=None, help="causal-lm: a model to distil from on the completions (with --alpha)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", default=None, metavar="DIR")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    add_config_flags(p, TuneConfig, title="training (defaults shown are --task causal-lm's)")
    add_config_flags(p, DistillConfig, exclude=CLASSIFIER_ONLY, base=DistillConfig(**FINETUNE),
                     title=f"--task classification only (it starts from lr {FINETUNE['lr']}, batch "
                           f"{FINETUNE['batch_size']}, {DistillConfig().steps} steps)")


def run(args) -> int:
    from pathlib import Path

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tune = {dest for _, dest, _, _ in config_fields(TuneConfig)}
    cls = {dest for _, dest, _, _ in config_fields(DistillConfig, exclude=CLASSIFIER_ONLY)}
    stray = sorted(d for d in (cls - tune if args.task == "causal-lm" else tune - cls) if hasattr(args, d))
    if stray:
        other = "classification" if args.task == "causal-lm" else "causal-lm"
        raise EdgeLLMError(f"--{stray[0].replace('_', '-')} applies to --task {other}, not {args.task}",
                           f"drop it, or use --task {other}")
    if args.task == "causal-lm":
        cfg = config_from_args(TuneConfig, args)
        r = finetune_lm(args.model, args.data, cfg, out=args.out, teacher=args.teacher, eval_data=args.eval_data,
                        resume=args.resume, progress=not args.quiet, force=args.force)
    else:
        if args.teacher:
            raise EdgeLLMError("--teacher applies to --task causal-lm", "use edgellm distill to distil a classifier")
        eval_data = args.eval_data
        if eval_data is None:
            dev = resolve_data_path(args.data).with_name("dev.tsv")
            eval_data = str(dev) if dev.exists() and dev.name != Path(args.data).name else None
        model = load(args.model, task=args.task, num_labels=args.num_labels)
        cfg = config_from_args(DistillConfig, args, exclude=CLASSIFIER_ONLY, base=DistillConfig(**FINETUNE))
        r = finetune(model, args.data, cfg, out=args.out, resume=args.resume, eval_data=eval_data,
                     progress=not args.quiet, force=args.force)
    if r.is_main:
        print(format_table([summary_row(r)]))
        emit_json(args, r.to_dict())
    return 130 if r.interrupted else 0
