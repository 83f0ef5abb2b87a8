"""``edgellm eval MODEL``: perplexity (docs/design.md §4), KL/top-1 against --reference, accuracy on --tsv.

The measurement flags are generated from ``EvalConfig`` (``commands/flags.py``), so each default is stated there.
"""

from __future__ import annotations

from ..api import EvalConfig, evaluate
from ..report.table import format_table
from . import add_common, emit_json, load_kwargs
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or artifact (.gguf, .onnx, .pte)")
    add_config_flags(p, EvalConfig)
    add_common(p)


def run(args) -> int:
    cfg = config_from_args(EvalConfig, args)
    kw = load_kwargs(args)
    if cfg.tsv and "task" not in kw:
        kw["task"] = "classification"
    res = evaluate(args.model, cfg, runtime=args.runtime, threads=args.threads, device=args.device, progress=True,
                   load_kwargs=kw)
    if res.classification is not None:
        c = res.classification
        row = {"model": args.model, "runtime": res.runtime, "accuracy": c.accuracy, "rows": c.n,
               "examples/s": c.examples_per_s, "batch": c.batch_size}
    else:
        p = res.perplexity
        row = {"model": args.model, "runtime": res.runtime, "threads": res.threads, "perplexity": p.perplexity,
               "mean NLL": p.mean_nll, "ctx": p.ctx, "tokens": p.n_tokens, "seconds": p.seconds}
        if p.agreement:
            row["KL(ref||model)"] = round(p.agreement.kl, 5)
            row["top-1 agree"] = p.agreement.top1
    print(format_table([row]))
    emit_json(args, res.to_dict())
    return 0
