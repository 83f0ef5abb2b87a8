"""``edgellm plan MODEL``: where each part of a model goes under memory budgets, or across pipeline ranks.

``--max-memory cpu=2GiB,cuda:0=4GiB[,disk]`` prints Accelerate's device map and the weight bytes
per device (a budget that cannot hold the model is an error stating the bytes needed);
``--pipeline N`` prints each rank's contiguous slice of decoder layers, balanced by bytes.
Nothing is loaded: the model is built on the meta device from its config.
"""

from __future__ import annotations

from ..errors import EdgeLLMError
from ..parallel.placement import plan_placement
from ..parallel.stage import plan_stages
from ..report.table import format_table, human_bytes
from . import emit_json


def add_arguments(p) -> None:
    p.add_argument("model", help="built-in name or plain HF model folder")
    p.add_argument("--max-memory", default=None, metavar="BUDGET",
                   help="per-device weight budgets, e.g. cpu=2GiB,cuda:0=4GiB[,disk]")
    p.add_argument("--pipeline", type=int, default=None, metavar="N", help="split the layers over N pipeline ranks")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the plan as JSON")


def run(args) -> int:
    if not args.max_memory and not args.pipeline:
        raise EdgeLLMError("nothing to plan", "pass --max-memory cpu=2GiB,cuda:0=4GiB[,disk] and/or --pipeline N")
    out: dict = {"model": args.model}
    if args.max_memory:
        pl = plan_placement(args.model, args.max_memory)
        out["placement"] = pl.to_dict()
        print(format_table([{"module": n, "device": d} for n, d in pl.device_map.items()],
                           title="device map"))
        print()
        print(format_table([{"device": d, "weights": human_bytes(b), "bytes": b,
                             "budget": human_bytes(pl.budgets.get(d)) if pl.budgets.get(d) else "unlimited"}
                            for d, b in pl.bytes_per_device.items()]))
        print(f"total {pl.total_bytes} bytes ({human_bytes(pl.total_bytes)}); largest block "
              f"{pl.largest_block_bytes} bytes")
    if args.pipeline:
        slices, rank_bytes, _ = plan_stages(args.model, args.pipeline)
        out["pipeline"] = [{"rank": r, "layers": [s.start, s.stop], "bytes": b}
                           for r, (s, b) in enumerate(zip(slices, rank_bytes))]
        if args.max_memory:
            print()
        print(format_table([{"rank": r, "layers": f"{s.start}-{s.stop - 1}", "weights": human_bytes(b), "bytes": b}
                            for r, (s, b) in enumerate(zip(slices, rank_bytes))]))
    emit_json(args, out)
    return 0
