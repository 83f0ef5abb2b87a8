"""Smart-home commands → device actions, scored by exact match, through the OpenAI-compatible server.

Each of the 30 spoken-style commands in ``commands.jsonl`` has one expected action (device, action, room,
value; ``schema.json``). The model gets a short system prompt and three worked examples (none of them from
the test set) as chat turns, then the command; greedy decoding (``--zero-shot``: the command alone, for a
model fine-tuned on ``generate.py``'s data, which was trained on exactly that). Two modes:

* ``free``: the reply is parsed as JSON (the first ``{`` to the last ``}``); unparsable replies score 0;
* ``constrained``: the same request with ``response_format`` = the JSON schema, so the reply always parses.

Score one running server:
    python examples/smart_home/score.py --url http://127.0.0.1:8000/v1 --model smollm2-135m
Score artifacts (each served in turn by ``edgellm serve`` in a child process) and write a bench result:
    python examples/smart_home/score.py --artifact q4_1=/path/SmolLM2.Q4_1.gguf --artifact fp32=smollm2-135m@torch \\
        --threads 2 --json bench/results/smart_home.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = ("You control a smart home. Turn the user's command into one JSON object with the keys device, action, "
          "room and value. device is one of: light, speaker, thermostat, tv, fan, blinds, door_lock, vacuum, "
          "coffee_maker. action is one of: turn_on, turn_off, set_brightness, set_temperature, set_volume, "
          "play_music, pause, open, close, lock, unlock. room is one of: living_room, kitchen, bedroom, bathroom, "
          "office, hallway, garage, or null when no room is named. value is the number for brightness, temperature "
          "or volume, the genre for music (jazz, classical, rock, pop, light), otherwise null. Reply with the JSON "
          "object only.")
SHOTS = [
    ("Switch on the lamp in the bedroom.", {"device": "light", "action": "turn_on", "room": "bedroom", "value": None}),
    ("Set the kitchen speaker volume to 55.", {"device": "speaker", "action": "set_volume", "room": "kitchen", "value": 55}),
    ("Play pop music.", {"device": "speaker", "action": "play_music", "room": None, "value": "pop"}),
]
FIELDS = ("device", "action", "room", "value")


def load_commands() -> tuple[dict, list[dict]]:
    schema = json.loads((HERE / "schema.json").read_text())
    commands = [json.loads(line) for line in (HERE / "commands.jsonl").read_text().splitlines() if line.strip()]
    return schema, commands


def messages_for(text: str, shots: bool = True) -> list[dict]:
    """The chat for *text*: the system prompt and the three worked examples, or (``shots=False``, a model
    fine-tuned on ``generate.py``'s data) the command alone, as the model was trained."""
    if not shots:
        return [{"role": "user", "content": text}]
    msgs = [{"role": "system", "content": SYSTEM}]
    for q, a in SHOTS:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": json.dumps(a)}]
    return msgs + [{"role": "user", "content": text}]


def parse_reply(reply: str):
    """The JSON object in *reply*, or None when there is none."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(reply[start:end + 1])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def score(url: str, model: str, constrained: bool, api_key: str = "none", max_tokens: int = 64,
          shots: bool = True) -> dict:
    """Send the 30 commands to the server at *url*; exact-match and per-field accuracy, validity, latency."""
    import jsonschema
    import openai

    schema, commands = load_commands()
    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=300)
    fmt = {"type": "json_schema", "json_schema": {"name": "device_action", "schema": schema, "strict": True}}
    rows, latencies, tokens = [], [], 0
    for cmd in commands:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=messages_for(cmd["text"], shots), max_tokens=max_tokens,
                                           temperature=0, **({"response_format": fmt} if constrained else {}))
        latencies.append(time.perf_counter() - t0)
        tokens += r.usage.completion_tokens
        reply = r.choices[0].message.content
        got = parse_reply(reply)
        try:
            schema_ok = got is not None and jsonschema.validate(got, schema) is None
        except jsonschema.ValidationError:
            schema_ok = False
        rows.append({"text": cmd["text"], "reply": reply, "parsed": got, "expected": cmd["expected"],
                     "json_ok": got is not None, "schema_ok": schema_ok, "exact": got == cmd["expected"]})
    n = len(rows)
    return {
        "mode": "constrained" if constrained else "free", "n": n,
        "exact_match": sum(r["exact"] for r in rows), "json_valid": sum(r["json_ok"] for r in rows),
        "schema_valid": sum(r["schema_ok"] for r in rows),
        "field_accuracy": {f: sum(1 for r in rows if r["parsed"] and r["parsed"].get(f) == r["expected"][f]) / n
                           for f in FIELDS},
        "mean_latency_s": sum(latencies) / n, "completion_tokens": tokens, "rows": rows, "shots": 3 if shots else 0,
    }


def score_artifacts(specs: list[str], threads: int, shots: bool = True) -> list[dict]:
    """``label=spec[@runtime]`` each: serve it in a child process, score both modes, stop it."""
    from edgellm.serving.server import spawn_server

    out = []
    for item in specs:
        label, _, spec = item.partition("=")
        spec, _, runtime = spec.partition("@")
        args = ["--threads", threads, "--model-name", label, "--max-queue", 2]
        if runtime:
            args += ["--runtime", runtime]
        try:
            proc, url = spawn_server(spec, args)
        except Exception as e:                       # one artifact that will not serve must not lose the others
            print(f"{label}: could not serve {spec}: {e}", flush=True)
            continue
        try:
            health = json.loads(__import__("urllib.request").request.urlopen(url[:-3] + "/health").read())
            for constrained in (False, True):
                r = score(url, label, constrained, shots=shots)
                r.update(label=label, artifact=spec, runtime=health["runtime"])
                print(f"{label:>12} {health['runtime']:>9} {r['mode']:>11}: exact {r['exact_match']}/{r['n']}, "
                      f"json {r['json_valid']}/{r['n']}, schema {r['schema_valid']}/{r['n']}, "
                      f"{r['mean_latency_s']:.2f} s/command", flush=True)
                out.append(r)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server's base URL (…/v1)")
    ap.add_argument("--model", help="the model id that server serves")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--mode", choices=["free", "constrained", "both"], default="both")
    ap.add_argument("--artifact", action="append", default=[], help="label=spec[@runtime]; repeatable")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zero-shot", action="store_true",
                    help="send the command alone, no system prompt or worked examples (a model fine-tuned on generate.py's data)")
    ap.add_argument("--json", dest="json_out", help="write a bench result JSON here")
    ap.add_argument("--note", action="append", default=[], help="extra note for the result table; repeatable")
    ap.add_argument("--merge", action="store_true", help="add to the results already in --json instead of replacing them")
    args = ap.parse_args()
    t0 = time.time()
    if args.artifact:
        results = score_artifacts(args.artifact, args.threads, shots=not args.zero_shot)
    elif args.url and args.model:
        modes = [False, True] if args.mode == "both" else [args.mode == "constrained"]
        results = [dict(score(args.url, args.model, c, args.api_key, shots=not args.zero_shot), label=args.model,
                        runtime="?") for c in modes]
        for r in results:
            print(f"{r['mode']}: exact {r['exact_match']}/{r['n']}, json {r['json_valid']}/{r['n']}")
    else:
        ap.error("give --url and --model, or one or more --artifact")
    if args.json_out and results:
        write_result(args, results, time.time() - t0)
    elif args.json_out:
        sys.exit("nothing was scored: no result written")


def write_result(args, results: list[dict], wall: float) -> None:
    from edgellm.measure import machine_info
    from edgellm.fileio import write_json

    commands = []
    if args.merge and Path(args.json_out).exists():
        old = json.loads(Path(args.json_out).read_text())
        results = old["raw"] + results
        args.note = old["tables"][0].get("notes", []) + args.note
        commands = [old["command"]]
        wall += old.get("wall_seconds", 0)
    rows = [{"model": r["label"], "runtime": r["runtime"], "decoding": r["mode"], "worked examples": r.get("shots", 3),
             "exact match": f"{r['exact_match']}/{r['n']}", "valid JSON": f"{r['json_valid']}/{r['n']}",
             "schema-valid": f"{r['schema_valid']}/{r['n']}",
             **{f: round(r["field_accuracy"][f], 3) for f in FIELDS},
             "s/command": round(r["mean_latency_s"], 2)} for r in results]
    cmd = "python examples/smart_home/score.py " + " ".join(f"--artifact {a}" for a in args.artifact) + \
          f" --threads {args.threads} --json {args.json_out}" + (" --merge" if args.merge else "") + \
          (" --zero-shot" if args.zero_shot else "")
    cmd = "; ".join(commands + [cmd])
    record = {
        "title": "Smart-home commands through the OpenAI-compatible server",
        "command": cmd,
        "description": "30 spoken-style commands (examples/smart_home/commands.jsonl) → one device action each "
                       "(device, action, room, value); exact match of all four fields; greedy, 3 worked examples "
                       "and a system prompt in the prompt (none with --zero-shot: the command alone, for a model "
                       "fine-tuned on generate.py's data), max_tokens 64. 'constrained' sends the JSON schema as response_format.",
        "machine": machine_info(),
        "tables": [{"title": "Exact-match actions (of 30)", "columns": list(rows[0]), "rows": rows,
                    "notes": args.note}],
        "raw": results, "wall_seconds": round(wall, 1),
    }
    try:    # inside the repository: the bench envelope (commit, argv, time), as every bench/results file has
        sys.path.insert(0, str(HERE.parents[1]))
        from bench._common import write_result as write_bench_result
    except ImportError:     # the example copied elsewhere: the record alone
        write_json(args.json_out, record)
    else:
        write_bench_result(args.json_out, record, machine=record["machine"], command=cmd)
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    main()
