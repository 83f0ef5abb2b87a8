"""``edgellm device``: detect and measure the host, list the built-in profiles, ``--show NAME`` prints one."""

from __future__ import annotations

from ..devices import builtin_profiles, get_profile
from ..report.table import format_table, human_bytes, key_values
from . import emit_json


def add_arguments(p) -> None:
    p.add_argument("--show", default=None, metavar="NAME", help="print one profile: host, a built-in name or a YAML file")
    p.add_argument("--threads", type=int, default=None, help="threads for the host measurements (default: all)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the profile(s) as JSON")


def _row(p) -> dict:
    return {"name": p.name, "RAM for model": human_bytes(p.ram_bytes_for_model), "storage": human_bytes(p.storage_bytes),
            "bandwidth GB/s": p.mem_bandwidth_GBps, "fp32 GFLOP/s": p.fp32_gflops, "int8 GOP/s": p.int8_gops,
            "runtimes": ",".join(p.runtimes), "figures": "measured" if p.measured else "datasheet (predictions)"}


def run(args) -> int:
    if args.show:
        p = get_profile(args.show, threads=args.threads)
        d = p.to_dict()
        shown = {k: (human_bytes(v) if k in ("ram_bytes_for_model", "storage_bytes") else v)
                 for k, v in d.items() if k != "details" and v is not None}
        shown["runtimes"] = ", ".join(p.runtimes)
        print(key_values(shown, title=f"device profile '{p.name}'"))
        for k, v in (p.details or {}).items():
            print(f"  {k}: {v if not isinstance(v, list) else ', '.join(map(str, v)) or '-'}")
        emit_json(args, d)
        return 0
    host = get_profile("host", threads=args.threads)
    profiles = [host, *builtin_profiles().values()]
    print(format_table([_row(p) for p in profiles]))
    d = host.details
    print(f"host: {d['cpu_model']}, {d['logical_cores']} logical cores, ISA {' '.join(d['isa_flags']) or '-'}, "
          f"RAM {human_bytes(d['ram_bytes'])}, GPU {', '.join(g['name'] for g in d['gpus']) or 'none'}; "
          f"bandwidth and fp32 matmul measured with {host.threads} threads")
    print("other profiles come from datasheets: anything computed for them is a prediction (edgellm device --show NAME)")
    emit_json(args, {p.name: p.to_dict() for p in profiles})
    return 0
