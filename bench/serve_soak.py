"""Soak test of ``edgellm serve`` with clients that hang up: N requests, many streamed and dropped mid-stream.

The server runs as a child process (``edgellm serve MODEL --runtime torch``) on 127.0.0.1, on a tiny random
Llama built here (or ``--model``). ``--concurrency`` asyncio clients speak raw HTTP/1.1, so each can drop its
connection exactly where it chooses: a random share of the requests stream and disconnect after a random number
of events, some disconnect before the answer starts or while waiting for a whole answer, the rest read their
answer to the end. Afterwards the server's ``/health`` must report no job in flight (waiting or generating):
a dropped client must not leak a slot. Records status codes, client latency percentiles of the completed
requests, the server's RSS after the warm-up and at the end, and the engine's job counts.
Writes bench/results/serve_soak.json. It leaves out throughput claims (``bench/serve_load.py`` measures those).

Run from the repository root:
    .venv/bin/python -m bench.serve_soak [--model PATH] [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from bench._common import RESULTS, repo_relative, stamp, write_result
from bench.serve_load import percentile

WORDS = "turn on off the light kitchen door open close play music warm cold garden window heater one two".split()


def tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 3-layer random Llama (hidden 96) with a byte-level BPE tokenizer trained on random house-command text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(300)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def health(base: str) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=30) as r:
        return json.loads(r.read())


async def one(host: str, port: int, i: int, plan: dict, model: str, max_tokens: int) -> dict:
    """One request over its own connection; *plan* says whether to stream and where to hang up."""
    rng = random.Random(i)
    if i % 2:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=6))}]}
    else:
        path, body = "/v1/completions", {"prompt": " ".join(rng.choices(WORDS, k=6))}
    body.update(model=model, max_tokens=rng.randint(max(1, max_tokens // 4), max_tokens), temperature=0.8, seed=i,
                stream=plan["stream"])
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    out = {"i": i, "kind": plan["kind"], "status": None, "events": 0}
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        if plan["kind"] == "drop_before":
            return out
        if plan["kind"] == "drop_waiting":
            await asyncio.sleep(plan["after_s"])
            return out
        head = await reader.readuntil(b"\r\n\r\n")
        out["status"] = int(head.split(b" ", 2)[1])
        if plan["kind"] == "drop_stream" and out["status"] == 200:
            while out["events"] < plan["after_events"]:
                line = await reader.readline()
                if not line:
                    break
                out["events"] += line.startswith(b"data: ")
            return out
        payload = await reader.read()
        out["events"] = payload.count(b"data: ")
        out["server_error"] = b"server_error" in payload
        out["latency"] = time.perf_counter() - t0
        return out
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        out["error"] = repr(e)[:200]
        return out
    finally:
        if plan["kind"].startswith("drop"):
            writer.transport.abort()                  # hang up at once (RST), the rudest client
        else:
            writer.close()


def plans(n: int, seed: int, stream_share: float, drop_share: float) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        stream = rng.random() < stream_share
        if rng.random() < drop_share:
            kind = rng.choice(["drop_stream"] * 6 + ["drop_before", "drop_waiting"]) if stream else "drop_waiting"
        else:
            kind = "complete"
        out.append({"stream": stream, "kind": kind, "after_events": rng.randint(1, 8), "after_s": rng.uniform(0.0, 0.2)})
    return out


async def run_all(host, port, plan_list, model, max_tokens, concurrency) -> list[dict]:
    sem = asyncio.Semaphore(concurrency)

    async def guarded(i, plan):
        async with sem:
            try:
                return await asyncio.wait_for(one(host, port, i, plan, model, max_tokens), timeout=120)
            except asyncio.TimeoutError:
                return {"i": i, "kind": plan["kind"], "status": None, "events": 0, "error": "no answer in 120 s"}

    return await asyncio.gather(*(guarded(i, p) for i, p in enumerate(plan_list)))


def main() -> None:
    import psutil

    from edgellm.serving.server import spawn_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder to serve (default: a tiny random Llama built here)")
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--stream-share", type=float, default=0.6, help="share of requests that stream")
    ap.add_argument("--drop-share", type=float, default=0.5, help="share of requests whose client hangs up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "serve_soak.json"))
    args = ap.parse_args()
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="edgellm-soak-") as tmp:
        model = args.model or str(tiny_llama(Path(tmp) / "tiny-llama"))
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            proc, url = spawn_server(model, ["--runtime", args.runtime, "--threads", args.threads, "--model-name", "soak",
                                             "--max-queue", args.max_queue, "--max-tokens-limit", args.max_tokens], log=log)
            base = url[:-3]
            host, port = base.split("//")[1].split(":")
            try:
                server = psutil.Process(proc.pid)
                warm = plans(40, args.seed + 1, args.stream_share, args.drop_share)
                asyncio.run(run_all(host, int(port), warm, "soak", args.max_tokens, args.concurrency))
                time.sleep(1.0)
                rss_start, before = server.memory_info().rss, health(base)
                plan_list = plans(args.requests, args.seed, args.stream_share, args.drop_share)
                t0 = time.perf_counter()
                results = asyncio.run(run_all(host, int(port), plan_list, "soak", args.max_tokens, args.concurrency))
                wall = time.perf_counter() - t0
                deadline, after = time.monotonic() + 60, health(base)
                while after["in_flight"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                    after = health(base)
                settle_s = round(time.perf_counter() - t0 - wall, 2)
                rss_end = server.memory_info().rss
                alive = asyncio.run(run_all(host, int(port), [{"stream": False, "kind": "complete"}], "soak", 4, 1))[0]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            errors = [json.loads(x)["exc"][-300:] for x in log_path.read_text().splitlines()
                      if x.startswith("{") and "\"exc\"" in x]

    statuses = Counter(str(r["status"]) for r in results)
    kinds = Counter(r["kind"] for r in results)
    done = [r for r in results if r["kind"] == "complete" and r["status"] == 200]
    lat = [r["latency"] for r in done]
    bad = [r for r in results if (r["status"] or 0) >= 500 and r["status"] != 503 or r.get("server_error")
           or (r["kind"] == "complete" and "error" in r)]
    jobs = {k: after[k] - before[k] for k in ("submitted", "finished", "cancelled")}
    row = {"requests": args.requests, "concurrency": args.concurrency, "streamed": sum(p["stream"] for p in plan_list),
           "dropped mid-stream": kinds["drop_stream"], "dropped before answer": kinds["drop_before"],
           "dropped while waiting": kinds["drop_waiting"], "completed 200": len(done),
           "status codes": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())), "5xx or server errors": len(bad),
           "p50 latency s": round(statistics.median(lat), 3) if lat else None,
           "p95 latency s": round(percentile(lat, 0.95), 3) if lat else None,
           "p99 latency s": round(percentile(lat, 0.99), 3) if lat else None, "wall s": round(wall, 1),
           "jobs submitted": jobs["submitted"], "jobs cancelled": jobs["cancelled"],
           "in flight after": after["in_flight"], "waiting after": after["waiting"], "settle s": settle_s,
           "RSS start MiB": round(rss_start / 2**20, 1), "RSS end MiB": round(rss_end / 2**20, 1),
           "RSS growth": f"{100 * (rss_end - rss_start) / rss_start:+.2f}%", "answers afterwards": alive["status"] == 200,
           "server tracebacks": len(errors)}
    result = {
        "title": "Serving: soak test with clients that hang up",
        "description": f"`edgellm serve` ({args.runtime} runtime, {args.threads} thread) on "
                       f"{'a tiny random Llama (3 layers, hidden 96)' if not args.model else Path(args.model).name} in a "
                       f"child process on 127.0.0.1; {args.requests} chat and text completions (max_tokens up to "
                       f"{args.max_tokens}) from {args.concurrency} raw-HTTP asyncio clients after 40 warm-up requests. "
                       f"About {args.stream_share:.0%} stream; about {args.drop_share:.0%} of the clients hang up (RST) at "
                       "a random point: after 1-8 streamed events, before the answer starts, or while waiting for a "
                       "whole answer. 'in flight after' is the engine's count of jobs waiting or generating once the "
                       "clients are done (target 0: no leaked slot); latency is client-side for the requests read to "
                       "the end; RSS is the server process's, after the warm-up and at the end.",
        "model": repo_relative(args.model) if args.model else "tiny random Llama (built by the script)",
        "tables": [{"title": "Soak", "columns": list(row), "rows": [stamp(row)],
                    "notes": ["targets: no 5xx (503 allowed for overload), 0 jobs in flight afterwards, "
                              "RSS growth < 10%"]}],
        "raw": {"health_before": before, "health_after": after, "errors": errors[:5], "bad": bad[:10]},
        "wall_seconds": round(time.time() - t_start, 1),
    }
    write_result(args.out, result)
    print(json.dumps(row, indent=1))
    if bad or after["in_flight"] or not alive["status"] == 200:
        raise SystemExit(f"targets missed: {len(bad)} bad answers, {after['in_flight']} jobs in flight afterwards")


if __name__ == "__main__":
    main()
