"""``edgellm serve ARTIFACT``: an OpenAI-compatible server (chat, completions, models, health) on localhost.

The server flags are generated from ``ServeConfig`` (``commands/flags.py``); ``--api-key`` falls back
to ``$EDGELLM_API_KEY``.
"""

from __future__ import annotations

import dataclasses
import os

from ..serving.app import ServeConfig
from ..serving.server import serve
from . import add_common, load_kwargs
from .flags import add_config_flags, config_from_args


def add_arguments(p) -> None:
    p.add_argument("artifact", help="built-in name, model folder or artifact (.gguf, ...)")
    add_config_flags(p, ServeConfig)
    add_common(p, json_out=False)


def run(args) -> int:
    config = config_from_args(ServeConfig, args)
    if config.api_key is None and os.environ.get("EDGELLM_API_KEY"):
        config = dataclasses.replace(config, api_key=os.environ["EDGELLM_API_KEY"])
    serve(args.artifact, config, runtime=args.runtime, threads=args.threads, device=args.device,
          load_kwargs=load_kwargs(args))
    return 0
