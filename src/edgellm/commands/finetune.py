"""``edgellm finetune MODEL --task classification --data sst-2/train.tsv --out DIR``: train on labels only.

Fine-tuning is the distillation loop with α = 1 and no teacher (same flags, same outputs);
for ``--task classification`` a fresh head with ``--num-labels`` outputs is added to an encoder.
"""

from __future__ import annotations

from ..data import resolve_data_path
from ..distillation import DistillConfig, finetune
from ..distillation.config import FINETUNE
from ..models import load
from ..report.table import format_table
from . import emit_json
from .distill import summary_row
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name or model folder")
    p.add_argument("--task", default="classification", choices=["causal-lm", "classification"])
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--data", required=True, help="sentence<TAB>label TSV (classifier) or text file (LM)")
    p.add_argument("--eval-data", default=None, help="labelled TSV for validation (default: sst-2/dev.tsv beside --data)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", default=None, metavar="DIR")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    add_config_flags(p, DistillConfig, exclude=("alpha", "hidden_loss"), base=DistillConfig(**FINETUNE))


def run(args) -> int:
    from pathlib import Path

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    eval_data = args.eval_data
    if eval_data is None and args.task == "classification":
        dev = resolve_data_path(args.data).with_name("dev.tsv")
        eval_data = str(dev) if dev.exists() and dev.name != Path(args.data).name else None
    model = load(args.model, task=args.task, num_labels=args.num_labels)
    cfg = config_from_args(DistillConfig, args, exclude=("alpha", "hidden_loss"), base=DistillConfig(**FINETUNE))
    r = finetune(model, args.data, cfg, out=args.out, resume=args.resume, eval_data=eval_data,
                 progress=not args.quiet, force=args.force)
    if r.is_main:
        print(format_table([summary_row(r)]))
        emit_json(args, r.to_dict())
    return 130 if r.interrupted else 0
