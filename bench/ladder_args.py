"""The command line of bench/ladder.py (its docstring says what each step does): the models, llama.cpp's
presets taken as references, the candidate kinds and the protocol's sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench._common import RESULTS, ROOT
from edgellm.exporters.gguf_mix import DEFAULT_LADDER, SENSITIVITIES

MODELS = ("smollm2-135m", "smollm2-135m-rotated")
REFS = ("q4_0", "iq4_nl", "q4_k_s", "q4_k_m", "q5_0")
SYM_LADDER = ("q3_k", "iq4_nl", "q4_0", "q4_k", "q5_0", "q6_k", "q8_0")   # no type whose fallback is Q4_1/Q5_1
GPTQ_TYPE = {4: "q4_0", 5: "q5_0"}          # --gptq BITS (the former QuantizedLinear path): now these grid types
GPTQ_TYPES = ("q4_0", "iq4_nl", "q4_k", "q5_0", "q5_k", "q6_k")
STEPS = ("build", "select", "eval", "speed")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Issue 17's targets: edgellm's GGUF against each of llama.cpp's presets")
    ap.add_argument("--models", default=",".join(MODELS), help="built-in names or model folders, comma-separated")
    ap.add_argument("--model", help="one model (a tiny folder for a dry run); overrides --models")
    ap.add_argument("--only", help="of --models, run only this one")
    ap.add_argument("--refs", default=",".join(REFS), help="llama.cpp presets, comma-separated (Q4_0,Q4_K_M, ...)")
    ap.add_argument("--step", choices=("all",) + STEPS, default="all", help="measure only this kind of step")
    ap.add_argument("--skip-speed", action="store_true", help="no paired speed rounds")
    ap.add_argument("--rtn", default="q4_0,iq4_nl,q4_k,q5_0,q5_k", help="types written RTN onto their own grid")
    ap.add_argument("--gptq-types", default=",".join(GPTQ_TYPES),
                    help="types written by GPTQ onto their own grid (gptq-<type>); empty for none")
    ap.add_argument("--gptq", default="", help="GPTQ bits (4 -> Q4_0, 5 -> Q5_0): added to --gptq-types")
    ap.add_argument("--gptq-linear", default="4,5", help="the QuantizedLinear path (quantize: GPTQ+AWQ+MSE clip, "
                    "int4/5 group 32) exported as Q4_0/Q5_0: gptqlin-<type>; empty for none")
    ap.add_argument("--no-awq-prescale", dest="awq_prescale", action="store_false",
                    help="GPTQ candidates without AWQ's prescale")
    ap.add_argument("--no-layouts", dest="layouts", action="store_false",
                    help="no gptqlay-<ref> (GPTQ onto each reference's own per-tensor types: export --layout-of)")
    ap.add_argument("--head-types", default="", help="output-head types of the GPTQ files and mixes (comma-separated; "
                    "an empty entry is the exporter's default, Q8_0): e.g. ',q5_0' writes each both ways (+hq5_0)")
    ap.add_argument("--mix-refs", default=None, help="references whose file size budgets a mix (default: every one of --refs)")
    ap.add_argument("--no-rtn-mix", dest="rtn_mix", action="store_false", help="no RTN mixes (mix-<ladder>@<ref>)")
    ap.add_argument("--no-gptq-mix", dest="gptq_mix", action="store_false",
                    help="no gptqmix-<ladder>@<ref> (GPTQ into each budgeted mix)")
    ap.add_argument("--sensitivities", default="hessian", help="how each mix predicts a tensor's loss (comma-separated: "
                    "hessian, fisher); every mix is allocated each way, a fisher one named +fisher")
    ap.add_argument("--ladders", default=f"full={','.join(DEFAULT_LADDER)};sym={','.join(SYM_LADDER)}",
                    help="NAME=TYPE,TYPE;... : one budgeted mix per ladder per reference")
    ap.add_argument("--allow-asymmetric", action="store_true", help="let Q4_1/Q5_1 files be picked on SmolLM2 as shipped")
    ap.add_argument("--privileged", default="", help="more models (comma-separated) whose shipped grid is asymmetric block-32")
    ap.add_argument("--verify", action="store_true", help="verify every export in llama.cpp (slower)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=20480)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--select-windows", type=int, default=16, help="held-out wiki.valid windows that choose the pick")
    ap.add_argument("--rounds", type=int, default=12, help="paired speed rounds")
    ap.add_argument("--min-decode", type=float, default=0.97, help="the pick decodes at least this ratio of the reference's "
                    "speed (paired; candidates in held-out order); 0: the held-out best whatever its speed")
    ap.add_argument("--speed-tries", type=int, default=3, help="candidates per reference whose speed the gate measures")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--work", default=None, help="cache folder (default $EDGELLM_CACHE/bench-ladder)")
    ap.add_argument("--out", default=str(RESULTS / "ladder.json"))
    ap.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    a = ap.parse_args(argv)
    if a.work is None:
        from edgellm.models import cache_dir

        a.work = str(cache_dir() / "bench-ladder")
    a.models = [a.model] if a.model else [s for s in a.models.split(",") if s]
    if a.only:
        a.models = [s for s in a.models if s == a.only or Path(s).name == a.only]
        if not a.models:
            ap.error(f"--only {a.only}: not among --models")
    a.refs = [q.strip().lower() for q in a.refs.split(",") if q.strip()]
    a.mix_refs = None if a.mix_refs is None else [q.strip().lower() for q in a.mix_refs.split(",") if q.strip()]
    unknown = sorted(set(a.refs + (a.mix_refs or [])) - set(REFS))
    if unknown:
        ap.error(f"unknown reference {unknown}; choose from {', '.join(REFS)}")
    a.rtn = [t for t in a.rtn.split(",") if t]
    a.gptq = [int(b) for b in a.gptq.split(",") if b]
    a.gptq_linear = [int(b) for b in a.gptq_linear.split(",") if b]
    if set(a.gptq) - set(GPTQ_TYPE) or set(a.gptq_linear) - set(GPTQ_TYPE):
        ap.error("--gptq and --gptq-linear take 4 and/or 5")
    a.gptq_types = list(dict.fromkeys([t for t in a.gptq_types.split(",") if t] + [GPTQ_TYPE[b] for b in a.gptq]))
    from edgellm.exporters.gguf_types import TYPES

    if set(a.gptq_types) - set(TYPES):
        ap.error(f"--gptq-types: unknown {sorted(set(a.gptq_types) - set(TYPES))}; choose from {', '.join(TYPES)}")
    a.ladders = {k: tuple(v.split(",")) for k, _, v in (x.partition("=") for x in a.ladders.split(";") if x)}
    a.privileged = {s for s in a.privileged.split(",") if s}
    a.sensitivities = list(dict.fromkeys(t.strip().lower() for t in a.sensitivities.split(",") if t.strip()))
    if not a.sensitivities or set(a.sensitivities) - set(SENSITIVITIES):
        ap.error(f"--sensitivities: choose from {', '.join(SENSITIVITIES)}")
    a.head_types = list(dict.fromkeys(t.strip().lower() for t in a.head_types.split(",")))
    if set(a.head_types) - set(TYPES) - {""}:
        ap.error(f"--head-types: unknown {sorted(set(a.head_types) - set(TYPES) - {''})}; choose from {', '.join(TYPES)}")
    return a
