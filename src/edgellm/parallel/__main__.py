"""Rank-side entry point: ``torchrun --nproc-per-node N -m edgellm.parallel COMMAND MODEL ...``.

Every rank runs this same command. Commands:

* ``generate``: greedy ids for ``--prompt TEXT`` or ``--prompt-ids 1,2,3`` (``--batch`` copies of it),
  printed by rank 0; ``--json OUT`` writes them (and per-rank facts) as JSON;
* ``logits``: rank 0 writes the prompt's logits to ``--out FILE.safetensors``;
* ``bench``: decode speed at batch 1 (``measure_speed``, docs/design.md §4) and batch throughput with
  micro-batching; rank 0 prints one JSON line with every rank's peak RSS.

The world comes from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); without them it is one process. Errors print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..errors import EdgeLLMError
from ..fileio import write_json
from ..measure.latency import Stat, fixed_prompt, measure_speed
from ..measure.peak import peak_rss_bytes
from ..placed import plain_folder
from .pipeline import PipelineEngine, PipelineRuntime, env_rank_world, init_distributed
from .stage import load_stage, plan_stages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgellm.parallel", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("generate", "logits", "bench"):
        s = sub.add_parser(name)
        s.add_argument("model", help="built-in name or plain HF folder (safetensors)")
        s.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: torch's)")
        s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the other ranks")
        s.add_argument("--backend", default=None, help="gloo (CPU, default) or nccl (CUDA)")
        s.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK with nccl)")
        s.add_argument("--json", dest="json_out", default=None, help="rank 0 writes the result here")
        if name in ("generate", "logits"):
            s.add_argument("--prompt", default=None, help="text (needs the model's tokenizer)")
            s.add_argument("--prompt-ids", default=None, help="comma-separated token ids")
            s.add_argument("--batch", type=int, default=1, help="copies of the prompt in the batch")
        if name == "generate":
            s.add_argument("--new-tokens", type=int, default=32)
            s.add_argument("--micro-batches", type=int, default=1)
        if name == "logits":
            s.add_argument("--out", required=True, help="safetensors file for the logits [batch, T, vocab]")
        if name == "generate":
            s.add_argument("--prompt-seeds", type=int, default=None, metavar="T",
                           help="instead of --prompt: --batch distinct seeded prompts of T tokens (benchmark prompts)")
            s.add_argument("--logits-out", default=None, help="also write the prompts' logits here (safetensors)")
        if name == "bench":
            s.add_argument("--new-tokens", type=int, default=128)
            s.add_argument("--micro-batches", default="1",
                           help="comma-separated micro-batch counts for --batch, measured alternately (e.g. 1,2,4)")
            s.add_argument("--prompt-len", type=int, default=128)
            s.add_argument("--runs", type=int, default=5)
            s.add_argument("--warmup", type=int, default=1)
            s.add_argument("--batch", type=int, default=0, help="also measure throughput at this batch size")
            s.add_argument("--batch-runs", type=int, default=None, help="runs of the batch workload (default --runs)")
            s.add_argument("--no-decode", action="store_true", help="skip the batch-1 decode measurement")
    return p


def _prompt_ids(args, tokenizer_path) -> torch.Tensor:
    if getattr(args, "prompt_seeds", None):
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(tokenizer_path).vocab_size
        return torch.stack([fixed_prompt(vocab, args.prompt_seeds, seed=i) for i in range(max(args.batch, 1))])
    if args.prompt_ids:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError as e:
            raise EdgeLLMError(f"--prompt-ids '{args.prompt_ids}' is not a list of integers", "write e.g. 1,2,3") from e
    elif args.prompt:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(tokenizer_path)(args.prompt)["input_ids"]
    else:
        raise EdgeLLMError("no prompt given", "pass --prompt TEXT or --prompt-ids 1,2,3")
    if not ids or args.batch < 1:
        raise EdgeLLMError("the prompt is empty or --batch < 1", "pass a non-empty prompt and --batch >= 1")
    return torch.tensor([ids] * args.batch, dtype=torch.int64)


def run_rank(args) -> int:
    rank, world, local = env_rank_world()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = args.backend or ("nccl" if (args.device or "").startswith("cuda") else "gloo")
    device = args.device or (f"cuda:{local}" if backend == "nccl" else "cpu")
    if device == "cuda":
        device = f"cuda:{local}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    folder = plain_folder(args.model)
    slices, rank_bytes, args.read_bytes = plan_stages(args.model, world)   # bad world sizes fail here, before connecting
    init_distributed(rank, world, backend, args.timeout)
    t0 = time.perf_counter()
    stage = load_stage(args.model, rank, world, device=device)
    load_s = time.perf_counter() - t0
    engine = PipelineEngine(stage)
    result: dict = {}
    try:
        if rank == 0:
            result = _rank0(args, engine, stage, folder, world)
        else:
            engine.serve()
    finally:
        if rank == 0:
            engine.shutdown()
    emb = stage.model.model.embed_tokens if stage.first else None
    facts = {"rank": rank, "layers": [stage.layers.start, stage.layers.stop], "weight_bytes": stage.weight_bytes,
             "embedding_bytes": (emb.weight.numel() * emb.weight.element_size()) if emb is not None else 0,
             "load_seconds": round(load_s, 3), "peak_rss_bytes": peak_rss_bytes(), "threads": torch.get_num_threads()}
    ranks = _gather(facts, world)
    if rank == 0:
        result.update({"world_size": world, "backend": backend if world > 1 else None, "device": device,
                       "model": args.model, "ranks": ranks, "planned_rank_bytes": rank_bytes})
        if args.json_out:
            write_json(args.json_out, result)
        print(json.dumps(result))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _rank0(args, engine, stage, folder, world) -> dict:
    from safetensors.torch import save_file

    if args.command == "generate":
        prompts = _prompt_ids(args, folder)
        out = {}
        if args.logits_out:
            save_file({"logits": engine.logits(prompts).contiguous()}, args.logits_out)
            out["logits_file"] = args.logits_out
        t0 = time.perf_counter()
        ids = engine.generate_batch(prompts, args.new_tokens, args.micro_batches)
        return {**out, "tokens": ids.tolist(), "prompts": prompts.tolist(), "seconds": time.perf_counter() - t0}
    if args.command == "logits":
        prompts = _prompt_ids(args, folder)
        save_file({"logits": engine.logits(prompts).contiguous()}, args.out)
        return {"logits_file": args.out, "prompts": prompts.tolist()}
    return _bench(args, engine, stage, world)


def _bench(args, engine, stage, world) -> dict:
    out: dict = {}
    if not args.no_decode:
        rt = PipelineRuntime(engine, args.read_bytes)
        out["speed"] = measure_speed(rt, args.prompt_len, args.new_tokens, args.runs, args.warmup,
                                     vocab_size=stage.vocab_size).to_dict()
    if args.batch:
        try:
            micros = [int(m) for m in str(args.micro_batches).split(",") if m.strip()]
        except ValueError as e:
            raise EdgeLLMError(f"--micro-batches '{args.micro_batches}' is not a list of integers", "e.g. 1,2,4") from e
        if not micros or any(not 1 <= m <= args.batch for m in micros):
            raise EdgeLLMError(f"micro-batch counts {micros} must lie between 1 and --batch {args.batch}",
                               "use at most one micro-batch per sequence")
        prompts = torch.stack([fixed_prompt(stage.vocab_size, args.prompt_len, seed=i) for i in range(args.batch)])
        for _ in range(args.warmup):
            engine.generate_batch(prompts, args.new_tokens, micros[0])
        secs: dict[int, list] = {m: [] for m in micros}
        for _ in range(args.batch_runs or args.runs):
            for m in micros:            # alternate, so machine noise hits every setting alike
                t0 = time.perf_counter()
                engine.generate_batch(prompts, args.new_tokens, m)
                secs[m].append(time.perf_counter() - t0)
        out["batch"] = [{"batch_size": args.batch, "micro_batches": m, "prompt_tokens": args.prompt_len,
                         "new_tokens": args.new_tokens, "runs": len(v), "seconds": Stat.of(v).__dict__,
                         "throughput_tok_s": Stat.of(args.batch * args.new_tokens / x for x in v).__dict__}
                        for m, v in secs.items()]
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_rank(args)
    except EdgeLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:      # a peer died or the connection broke mid-run (gloo/nccl errors)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: pipeline communication failed: {msg} (check that every rank is running; see the "
              f"other ranks' output)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
