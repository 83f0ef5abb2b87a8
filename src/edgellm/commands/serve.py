"""``edgellm serve ARTIFACT``: an OpenAI-compatible server (chat, completions, models, health) on localhost."""

from __future__ import annotations

import os

from . import add_common, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("artifact", help="built-in name, model folder or artifact (.gguf, ...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("EDGELLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $EDGELLM_API_KEY, else no key)")
    p.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait; more get 429")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt (default: context - 1)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request, queueing included")
    p.add_argument("--model-name", default=None, help="the id clients pass as 'model' (default: the file name)")
    add_common(p, json_out=False)


def run(args) -> int:
    from ..serving.server import serve

    serve(args.artifact, runtime=args.runtime, host=args.host, port=args.port, api_key=args.api_key,
          max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
          timeout_s=args.timeout, threads=args.threads, model_id=args.model_name, device=args.device,
          load_kwargs=load_kwargs(args))
    return 0
