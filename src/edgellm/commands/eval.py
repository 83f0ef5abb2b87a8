"""``edgellm eval MODEL``: perplexity (docs/design.md §4), KL/top-1 against --reference, accuracy on --tsv."""

from __future__ import annotations

from . import add_common, emit_json, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name, model folder or artifact (.gguf, .onnx, .pte)")
    p.add_argument("--ppl", default=None, metavar="FILE", help="text file (default: wikitext-2/wiki.test.raw)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--max-tokens", type=int, default=20480, help="tokens to score (default 20480; 0 = all)")
    p.add_argument("--reference", default=None, metavar="MODEL", help="report KL and top-1 agreement against it")
    p.add_argument("--tsv", default=None, metavar="FILE", help="sentence<TAB>label file: report accuracy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-rows", type=int, default=None)
    add_common(p)


def run(args) -> int:
    from ..api import evaluate
    from ..report.table import format_table

    kw = load_kwargs(args)
    if args.tsv and "task" not in kw:
        kw["task"] = "classification"
    res = evaluate(args.model, ppl=args.ppl, ctx=args.ctx, max_tokens=args.max_tokens or None, reference=args.reference,
                   tsv=args.tsv, runtime=args.runtime, threads=args.threads, device=args.device,
                   batch_size=args.batch_size, max_rows=args.max_rows, progress=True, load_kwargs=kw)
    if "classification" in res:
        c = res["classification"]
        row = {"model": args.model, "runtime": res["runtime"], "accuracy": c["accuracy"], "rows": c["n"],
               "examples/s": c["examples_per_s"], "batch": c["batch_size"]}
    else:
        p = res["perplexity"]
        row = {"model": args.model, "runtime": res["runtime"], "threads": res["threads"], "perplexity": p["perplexity"],
               "mean NLL": p["mean_nll"], "ctx": p["ctx"], "tokens": p["n_tokens"], "seconds": p["seconds"]}
        if p.get("agreement"):
            row["KL(ref||model)"] = round(p["agreement"]["kl"], 5)
            row["top-1 agree"] = p["agreement"]["top1"]
    print(format_table([row]))
    emit_json(args, res)
    return 0
