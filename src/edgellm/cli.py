"""The ``edgellm`` command: parse flags, call the API, print tables/JSON, map errors to exit 2.

Each subcommand lives in ``edgellm/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; the table below is the whole dispatch. An ``EdgeLLMError`` prints one
line (``error: ...``) and exits 2; ``--debug`` shows the traceback. Ctrl-C exits 130.

Third-party noise (torchao's failed optional kernels, torch's deprecation notes, onnxruntime's and
ExecuTorch's C++ log lines, other libraries' warnings) is hidden while a command runs
(``noise.quiet_third_party``); ``--debug`` shows it. edgellm's own warnings always show.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import EdgeLLMError
from .noise import quiet_third_party

COMMANDS = {
    "distill": ("edgellm.commands.distill", "distil a teacher into a student (KD), or recover a pruned/quantized model"),
    "finetune": ("edgellm.commands.finetune", "fine-tune on labels only (e.g. a classification head on SST-2)"),
    "eval": ("edgellm.commands.eval", "measure perplexity, KL/top-1 agreement, accuracy, or exact match on a task"),
    "bench": ("edgellm.commands.bench", "measure size, peak RSS, prefill/decode speed and bandwidth use"),
    "export": ("edgellm.commands.export", "export to GGUF (llama.cpp) and other runtimes, verified on the runtime"),
    "serve": ("edgellm.commands.serve", "serve a model with an OpenAI-compatible API on localhost"),
    "quantize": ("edgellm.commands.quantize", "quantize: RTN/GPTQ/AWQ to packed 8/4/3/2-bit weights, W8A8, integer kernels"),
    "prune": ("edgellm.commands.prune", "prune: magnitude/Wanda/SparseGPT (unstructured, N:M) or depth/width/heads"),
    "plan": ("edgellm.commands.plan", "device map and bytes per device under memory budgets, or a pipeline split"),
    "device": ("edgellm.commands.device", "detect and measure this host; list and show device profiles"),
    "rotate": ("edgellm.commands.rotate", "fold norm gains and rotate the residual stream (same logits, no privileged grid)"),
    "optimize": ("edgellm.commands.optimize", "search models x recipes x runtimes for the best fit to a device, with a report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgellm", description="Make an LLM fit one device, and prove it.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and third-party warnings and logs")
    parser.add_argument("--version", action="version", version="edgellm 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and third-party warnings and logs")
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``edgellm`` command line; returns the exit code.

    >>> main(["device", "--show", "raspberry-pi-5-8gb"])          # doctest: +SKIP
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv:                 # decided before parsing: building the parser imports torch
        return _main(argv)

    with quiet_third_party():
        return _main(argv)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        check_numbers(args)
        return importlib.import_module(args._module).run(args) or 0
    except EdgeLLMError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


def check_numbers(args) -> None:
    """Every numeric flag is finite and at most 10^15 in size, and ``--threads`` is at least 1.

    A backstop under the configs' own checks (which bound each field by its meaning), so that nan, inf
    or 10^30 never reaches torch as a seed, a size or a thread count.

    >>> check_numbers(argparse.Namespace(threads=2, lr=1e-4))
    """
    import math

    for dest, v in vars(args).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise EdgeLLMError(f"{flag} {v} is not a finite number", f"give {flag} a real number")
        if abs(v) > 1e15:
            raise EdgeLLMError(f"{flag} {v:.3g} is absurdly large", f"give {flag} a realistic value")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise EdgeLLMError(f"--threads must be at least 1 (got {threads})", "pass --threads N with N ≥ 1, or leave it out")


if __name__ == "__main__":
    sys.exit(main())
