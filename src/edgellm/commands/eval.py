"""``edgellm eval MODEL``: perplexity (docs/design.md §4), KL/top-1 against --reference, accuracy on --tsv, or a task.

The measurement flags are generated from ``EvalConfig`` (``commands/flags.py``), so each default is stated there.
A task (``--task-data FILE.jsonl``, or ``--task FILE.jsonl``; ``evaluation/taskdata.py`` gives the format) is
answered on the model's runtime and scored by exact match with its 95% Wilson interval (``evaluation/task.py``);
``--schema`` makes answers JSON checked against it, ``--constrained`` decodes under it.
"""

from __future__ import annotations

from pathlib import Path

from ..api import EvalConfig, evaluate
from ..errors import EdgeLLMError
from ..evaluation.task import evaluate_task
from ..evaluation.taskdata import read_task
from ..report.table import format_table
from ..runtimes import open_runtime
from . import add_common, emit_json, load_kwargs
from .flags import add_config_flags, config_from_args

MODEL_TASKS = ("causal-lm", "classification", "encoder")
TASK_FLAGS = ("task_data", "schema", "constrained", "max_new_tokens", "limit")


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or artifact (.gguf, .onnx, .pte)")
    add_config_flags(p, EvalConfig)
    p.add_argument("--task-data", default=None, metavar="FILE.jsonl",
                   help="task examples with expected outputs: report exact match (and per-field accuracy, validity)")
    p.add_argument("--schema", default=None, metavar="FILE.json", help="the task's JSON schema: answers are JSON checked against it")
    p.add_argument("--constrained", action="store_true", help="decode task answers constrained to --schema")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest task answer in tokens")
    p.add_argument("--limit", type=int, default=None, help="score only the first N task examples")
    add_common(p)
    for action in p._actions:              # --task also takes a task file: `edgellm eval M --task cmds.jsonl`
        if action.dest == "task":
            action.choices = None
            action.metavar = "{causal-lm,classification,encoder} | FILE.jsonl"
            action.help = "the model's kind, or a task file (same as --task-data)"


def run(args) -> int:
    if args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):    # checked even without a task file
        raise EdgeLLMError("--max-new-tokens and --limit must be at least 1", "fix the flag")
    if args.task and args.task not in MODEL_TASKS:
        if not (args.task.endswith(".jsonl") or Path(args.task).is_file()):
            raise EdgeLLMError(f"--task '{args.task}' is neither a model kind nor a task file",
                               f"use one of {', '.join(MODEL_TASKS)}, or a FILE.jsonl of examples")
        if args.task_data:
            raise EdgeLLMError("give the task file once", "use --task-data FILE.jsonl (or --task FILE.jsonl)")
        args.task_data, args.task = args.task, None
    if args.task_data:
        return run_task(args)
    if args.schema or args.constrained or args.limit is not None:
        raise EdgeLLMError("--schema, --constrained and --limit go with a task file", "add --task-data FILE.jsonl")
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


def run_task(args) -> int:
    """Answer the task's examples on the model's runtime and print the scores (one row)."""
    if any(getattr(args, f, None) for f in ("ppl", "reference", "tsv")):      # config flags are absent unless given
        raise EdgeLLMError("a task file does not go with --ppl, --reference or --tsv", "evaluate one thing at a time")
    if args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise EdgeLLMError("--max-new-tokens and --limit must be at least 1", "fix the flag")
    task = read_task(args.task_data, args.schema)
    rt = open_runtime(args.model, runtime=args.runtime, threads=args.threads, device=args.device, **load_kwargs(args))
    try:
        r = evaluate_task(rt, task, constrained=args.constrained, max_new_tokens=args.max_new_tokens,
                          limit=args.limit, progress=True)
    finally:
        if hasattr(rt, "close"):
            rt.close()
    print(format_table([task_row(args.model, r)]))
    emit_json(args, r.to_dict())
    return 0


def task_row(model: str, r) -> dict:
    """One table row of a ``TaskResult``: counts, accuracy [95% interval], per-field accuracy, latency."""
    lo, hi = r.interval
    row = {"model": model, "runtime": r.runtime, "decoding": "constrained" if r.constrained else "free",
           "exact match": f"{r.exact_match}/{r.n}", "accuracy [95% CI]": f"{r.accuracy:.3f} [{lo:.3f}, {hi:.3f}]"}
    if r.schema_valid is not None:
        row["schema-valid"] = f"{r.schema_valid}/{r.n}"
    elif r.json_valid is not None:
        row["valid JSON"] = f"{r.json_valid}/{r.n}"
    for f, v in (r.field_accuracy or {}).items():
        row[f] = round(v["accuracy"], 3)
    if r.mean_similarity is not None:
        row["edit similarity"] = round(r.mean_similarity, 3)
    row.update({"s/example": round(r.mean_latency_s, 3), "prompt tokens": round(r.mean_prompt_tokens, 1)})
    return row
