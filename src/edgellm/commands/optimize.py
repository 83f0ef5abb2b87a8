"""``edgellm optimize``: search models × recipes × runtimes for the best artifact that fits a device."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="base model or distilled/pruned student (repeatable; default smollm2-135m, or minilm-l6 "
                        "for classification)")
    p.add_argument("--device", default="host", help="host, a built-in profile (edgellm device) or a profile YAML")
    p.add_argument("--task", default="text-generation", choices=["text-generation", "classification"])
    p.add_argument("--recipes", nargs="+", default=None, metavar="YAML", help="recipe files (default: the built-in search space)")
    p.add_argument("--runtimes", nargs="+", default=None, help="restrict the runtimes tried (torch, llama.cpp; classifiers: torch, onnxruntime)")
    p.add_argument("--max-quality-loss", default=None, help="e.g. 10%% (perplexity increase / relative accuracy drop)")
    p.add_argument("--min-decode-tok-s", type=float, default=None, help="minimum decode tok/s (examples/s for classifiers)")
    p.add_argument("--max-ram", default=None, help="peak RAM limit, e.g. 1GiB (default: the device's)")
    p.add_argument("--max-ttft-ms", type=float, default=None)
    p.add_argument("--objective", default="speed", choices=["speed", "size", "quality"], help="what the pick maximises")
    p.add_argument("--budget-minutes", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--screen-tokens", type=int, default=2048)
    p.add_argument("--full-tokens", type=int, default=20480)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--eval-text", default=None, help="text for perplexity (default wikitext-2 test)")
    p.add_argument("--tsv", default=None, help="classification rows (default SST-2 dev)")
    p.add_argument("--task-data", default=None, metavar="FILE.jsonl",
                   help="judge LMs by exact match on this task instead of perplexity: --max-quality-loss is then in "
                        "points of accuracy (5%% = 5 points) below the best base model")
    p.add_argument("--schema", default=None, metavar="FILE.json", help="the task's JSON schema: answers are decoded "
                                                                        "constrained to it")
    p.add_argument("--screen-examples", type=int, default=10, help="task examples in the screen")
    p.add_argument("--screen-rows", type=int, default=256)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--speed-runs", type=int, default=5)
    p.add_argument("--speed-in-process", action="store_true",
                   help="measure speed in this process, not a fresh subprocess (faster; peak RAM is then predicted)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-finalists", type=int, default=4)
    p.add_argument("--paired-rounds", type=int, default=10,
                   help="paired speed rounds that decide between the two best when their measured spreads overlap")
    p.add_argument("--dominance-margin", type=float, default=1.25,
                   help="skip a candidate whose same weights on another runtime are predicted this many times faster "
                        "and no larger (a large value evaluates every runtime)")
    p.add_argument("--cache", default=None, help="result cache for resuming (default ~/.cache/edgellm/optimize)")
    p.add_argument("--fresh", action="store_true",
                   help="measure every figure again instead of reusing the cache (built artifacts are still reused)")
    p.add_argument("--ladder", action="store_true",
                   help="also try llama.cpp's GGUF types written round-to-nearest (Q5_K, Q5_0, Q4_K, IQ4_NL) and a "
                        "budgeted per-tensor mix (needs a larger --budget-minutes than the default 15 on 2 cores)")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out llama.cpp's own Q4_K_M and Q4_0 with an importance matrix, which are otherwise "
                        "measured beside the candidates as reference rows (never picked) when a causal LM is searched "
                        "on llama.cpp by perplexity")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where candidates run: local (this process) or ray (a Ray cluster; pip install 'edgellm[ray]')")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="with --executor ray: join the cluster at HOST:PORT or 'auto' (default $RAY_ADDRESS, else a "
                        "private Ray instance on 127.0.0.1)")
    p.add_argument("--out", required=True, help="output folder (report.html, results.json, model/)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args):
    from ..devices.profiles import parse_fraction, parse_size
    from ..optimization import OptimizeConfig

    models = tuple(args.model or (["minilm-l6"] if args.task == "classification" else ["smollm2-135m"]))
    return OptimizeConfig(
        models=models, device=args.device, task=args.task, recipes=tuple(args.recipes or ()),
        runtimes=tuple(args.runtimes or ()),
        max_quality_loss=parse_fraction(args.max_quality_loss, "--max-quality-loss") if args.max_quality_loss else None,
        min_decode_tok_s=args.min_decode_tok_s,
        max_ram=parse_size(args.max_ram, "--max-ram") if args.max_ram else None, max_ttft_ms=args.max_ttft_ms,
        objective=args.objective, budget_minutes=args.budget_minutes, threads=args.threads, ctx=args.ctx,
        screen_tokens=args.screen_tokens, full_tokens=args.full_tokens, eval_text=args.eval_text, tsv=args.tsv,
        screen_rows=args.screen_rows, max_rows=args.max_rows, speed_runs=args.speed_runs,
        speed_in_process=args.speed_in_process, prompt_len=args.prompt_len,
        new_tokens=args.new_tokens, max_finalists=args.max_finalists, cache=args.cache,
        dominance_margin=args.dominance_margin, fresh=args.fresh, paired_rounds=args.paired_rounds,
        task_data=args.task_data, schema=args.schema, screen_examples=args.screen_examples,
        reference=False if args.no_reference else None, ladder=args.ladder, executor=args.executor, ray_address=args.ray_address)


def run(args) -> int:
    import os
    import sys

    from ..optimization import optimize
    from ..report.html import cache_note, comparison_line, confidence_line, summary_rows
    from ..report.table import format_table

    cfg = config_from_args(args)
    result = optimize(cfg, args.out, force=args.force, progress=not args.no_progress)
    print(format_table(summary_rows(result), title=f"device: {result['device']['name']} — {result['figures']}"))
    ch = result.get("chosen")
    if ch:
        vb = result.get("vs_base")
        msg = f"chosen: {ch['label']} (quality loss {100 * ch['quality_loss']:+.2f}%"
        if vb:
            msg += f", {vb['size_ratio']:.2f}x smaller and {vb['speed_ratio']:.2f}x faster than {vb['base']}"
        print(msg + f") -> {result['export']['path']}")
        if result.get("pick_confidence"):
            print(confidence_line(result["pick_confidence"]))
        for c in result.get("vs_reference") or []:
            print(comparison_line(c))
    else:
        inf = result["infeasible"]
        c = inf["constraints"].get(inf["binding"], {})
        print(f"error: no candidate meets the constraints; binding constraint: {inf['binding']} (limit {c.get('limit')}, "
              f"{c.get('only_this_fails', 0)} candidate(s) miss only this one). Closest:", file=sys.stderr)
        for r in inf["closest"]:
            print(f"  {r['label']}: misses " + ", ".join(f"{k} by {100 * v:.1f}%" for k, v in r["shortfalls"].items()),
                  file=sys.stderr)
    if result.get("host_decode_error_max") is not None or result.get("host_decode_loo_error_max") is not None:
        seq, loo = result.get("host_decode_error_max"), result.get("host_decode_loo_error_max")
        print("cost model on this host, max |decode prediction error|: "
              f"{'-' if seq is None else f'{100 * seq:.1f}%'} predicted before each measurement (calibrated ones), "
              f"{'-' if loo is None else f'{100 * loo:.1f}%'} leave-one-out")
    if cache_note(result):
        print(cache_note(result))
    for s in result["budget"]["skipped"]:
        print(f"skipped: {s}")
    print(f"elapsed {result['elapsed_s'] / 60:.1f} min; report: {os.path.join(result['out'], 'report.html')}")
    return 0 if ch else 2
