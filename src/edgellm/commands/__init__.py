"""One module per CLI subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import json
import os

import torch

from ..fileio import check_writable_target, write_json
from ..models import load
from .flags import add_config_flags, config_from_args


def add_common(p, threads: bool = True, runtime: bool = True, json_out: bool = True) -> None:
    """Flags shared by subcommands that open a model."""
    if runtime:
        p.add_argument("--runtime", default="auto", help="torch, llama.cpp, onnxruntime, executorch (default: from the file)")
        p.add_argument("--device", default=None, help="torch device: cuda, mps or cpu (default: best present)")
        p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
        p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin/.pt) checkpoints: trusted sources only")
        p.add_argument("--online", action="store_true", help="allow hub ids (edgellm is offline by default)")
        p.add_argument("--max-memory", default=None, metavar="BUDGET",
                       help="place the model under per-device budgets, e.g. cpu=2GiB,cuda:0=4GiB[,disk] (see edgellm plan)")
        p.add_argument("--offload-folder", default=None, help="where --max-memory offloads to disk (default: a temp dir)")
    if threads:
        p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    if json_out:
        p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write results as JSON")


def load_kwargs(args) -> dict:
    kw = {}
    if getattr(args, "task", None):
        kw["task"] = args.task
    if getattr(args, "allow_pickle", False):
        kw["allow_pickle"] = True
    if getattr(args, "online", False):
        kw["online"] = True
    if getattr(args, "max_memory", None):
        kw["max_memory"] = args.max_memory
        if getattr(args, "offload_folder", None):
            kw["offload_folder"] = args.offload_folder
    return kw


def emit_json(args, obj) -> None:
    if getattr(args, "json_out", None):
        if args.json_out == "-":
            print(json.dumps(obj, indent=2, default=str))
        else:
            write_json(args.json_out, obj)
            print(f"wrote {os.path.abspath(args.json_out)}")


def add_transform_arguments(p, config_cls, **flag_options) -> None:
    """The flags of a command that reads one model and writes one folder (quantize, prune): MODEL,
    ``--out``, ``--force``, the flags generated from *config_cls*, ``--threads``/``--json``, ``--task``
    and ``--allow-pickle``. *flag_options* go to ``add_config_flags``."""
    p.add_argument("model", help="built-in name or model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if edgellm wrote it")
    add_config_flags(p, config_cls, **flag_options)
    add_common(p, runtime=False)
    p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")


def start_transform(args, config_cls):
    """``(config, loaded)`` for such a command: the config from the flags, ``--out`` checked before the
    slow work (not after it), the thread count set, the model loaded."""
    cfg = config_from_args(config_cls, args)
    check_writable_target(args.out, args.force, inputs=(args.model,))
    if args.threads:
        torch.set_num_threads(args.threads)
    return cfg, load(args.model, **load_kwargs(args))
