"""SIGKILL sweep (issue 20, item 5): kill quantize, prune, export, distill and optimize at random moments, many times.

The commands, the judging and the harness are the test suite's (tests/test_kill.py, tests/killharness.py):
each command runs once uninterrupted on a tiny random Llama (hidden 96, 3 layers), then is sent
SIGKILL at delays drawn uniformly (fixed seed) across that duration, again and again on the same
output path; after each kill the output must be absent or complete, valid and equal to the
uninterrupted run's, only the documented temporaries may lie beside it, and every few kills a
re-run (distill: --resume; optimize: the same cache) must finish with the same result and leave no
temporary. ``--scale`` multiplies the test suite's kill counts; ``--exec`` starts every child as a
fresh ``edgellm`` process instead of a fork of a pre-imported zygote; ``--children-src DIR`` runs
the children on another source tree (how the counts before the fixes were taken, on a ``git
archive`` of the older commit). Writes bench/results/kill_sweep.json. Deliberately absent: kills
of the real bundled models (the tiny model exercises the same writers in seconds).

    python -m bench.kill_sweep --scale 3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT, stamp, write_result


def _test_module(name: str):
    """Load tests/NAME.py as module NAME (registered, so the next test module's imports of it resolve)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="kills per command = the test suite's count x SCALE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", default=None, help="commands (default: all of tests/test_kill.py's)")
    ap.add_argument("--exec", dest="exec_children", action="store_true", help="each child a fresh edgellm process")
    ap.add_argument("--children-src", default=None, metavar="DIR", help="the src/ tree the children import")
    ap.add_argument("--out", default="kill_sweep", help="results name or path (default bench/results/kill_sweep.json)")
    args = ap.parse_args(argv)

    # the harness and the command table are the test suite's: loaded from their files, in import order
    conftest, killharness, test_kill = (_test_module(n) for n in ("conftest", "killharness", "test_kill"))
    make_tiny_llama, synthetic_text = conftest.make_tiny_llama, conftest.synthetic_text
    Zygote, exec_run, sweep = killharness.Zygote, killharness.exec_run, killharness.sweep
    KILLS, commands = test_kill.KILLS, test_kill.commands

    names = args.only or list(KILLS)
    env = {"PYTHONPATH": str(Path(args.children_src).resolve())} if args.children_src else {}
    rows, t0 = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgellm-kill-") as tmp:
        tmp = Path(tmp)
        model = make_tiny_llama(tmp / "llama")
        text = tmp / "text.txt"
        text.write_text(synthetic_text(600, seed=1))
        cmds = commands(model, text)
        if args.exec_children:
            import os

            os.environ.update(env)
            runner, ctx = exec_run, None
        else:
            ctx = Zygote(env=env).__enter__()
            runner = ctx.run
        try:
            for i, name in enumerate(names):
                n = max(1, round(KILLS[name] * args.scale))
                t = time.monotonic()
                tally = sweep(runner, cmds[name], tmp / "runs", kills=n, seed=args.seed * 1000 + i)
                d = tally.to_dict()
                print(f"{name}: {d['kills']} kills, {d['failures']} failures", flush=True)
                for msg in d.pop("failure_messages")[:5]:
                    print("   ", msg[:300], flush=True)
                rows.append(stamp({**d, "wall_seconds": round(time.monotonic() - t, 1)}))
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    total = {"command": "total", "kills": sum(r["kills"] for r in rows), "failures": sum(r["failures"] for r in rows),
             "reruns": sum(r["reruns"] for r in rows), "wall_seconds": round(time.monotonic() - t0, 1)}
    cols = ["command", "kills", "finished_before_kill", "reruns", "failures", "reference_seconds", "wall_seconds"]
    write_result(args.out, {
        "title": "SIGKILL sweep: a killed run loses nothing",
        "description": ("Kills injected per command into the real edgellm CLI on a tiny random Llama, and the failures "
                        "found (an invalid or different output after a kill, an undocumented file beside it, a re-run "
                        "that does not reproduce the uninterrupted result or leaves a temporary)."),
        "children": "fresh edgellm processes" if args.exec_children else "forks of a pre-imported zygote",
        "children_src": "given (--children-src)" if args.children_src else "this checkout",
        "tables": [{"title": "Kills and failures per command", "columns": cols, "rows": [*rows, total]}],
    })
    print(f"{total['kills']} kills, {total['failures']} failures, {total['wall_seconds']} s")
    return 1 if total["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
