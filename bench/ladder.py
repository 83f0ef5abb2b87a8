"""Issue 17's targets: edgellm's GGUF against each of llama.cpp's presets (with an importance matrix), per model.

For each model in ``--models`` (default SmolLM2 as shipped and the built-in ``smollm2-135m-rotated``, which
has no GGUF of its own and is exported F32 here like the other):
  build   an F32 GGUF (edgellm's exporter), the base; llama.cpp's references (``--refs``: Q4_0, IQ4_NL,
          Q4_K_S, Q4_K_M, Q5_0) by ``llama_model_quantize`` with an importance matrix; edgellm's
          candidates: RTN onto each type's own grid (``--rtn``), GPTQ after AWQ's prescale onto each type's
          own grid (``gptq-<type>``, ``--gptq-types``; ``exporters.gguf_gptq``, the K-quants and IQ4_NL
          included; ``--gptq 4,5`` adds Q4_0/Q5_0 to them), the former path (``quantize``'s GPTQ after AWQ
          with MSE clipping into int4/int5 group-32 linears, exported as Q4_0/Q5_0 as they are:
          ``gptqlin-<type>``, ``--gptq-linear``), and budgeted mixes (``gguf_mix``) with
          each reference's (``--mix-refs``) file size as the byte budget, one per ladder (``--ladders``), each written twice:
          RTN (``mix-<ladder>@<ref>``) and GPTQ onto every tensor's allocated type (``gptqmix-...``), and
          GPTQ onto each reference's own per-tensor types (``gptqlay-<ref>``: ``export --layout-of``; on
          SmolLM2 as shipped its Q4_1/Q5_1 tensors become Q4_0/Q5_0). ``--head-types`` writes the GPTQ files
          and GPTQ mixes with the output head (a tied one is the token embedding) pinned to each type, GPTQ'd
          on the final norm's outputs (``+h<type>`` in the name; an empty entry is the default Q8_0 head);
          ``--no-rtn-mix`` leaves the RTN mixes out; ``--sensitivities hessian,fisher`` allocates each mix both
          ways (``gguf_sensitivity``; ``+fisher`` in the name). The command line is ``bench/ladder_args.py``.
          Imatrix, GPTQ/AWQ and mixes read the same calibration windows of wiki.valid
          (``--calib-samples`` x ``--calib-len``, seed 0);
  select  every file's perplexity through llama.cpp on a held-out slice of wiki.valid: ``--select-windows``
          tiles of the calibration tiling that no calibration window drew. For each reference, edgellm's
          pick is the file no larger on disk with the lowest held-out perplexity that decodes at least
          ``--min-decode`` (0.97) times as fast as the reference (paired rounds, the ``speed`` step, trying
          candidates in held-out order, at most ``--speed-tries``; 0 turns the gate off). The evaluation texts are
          never used to choose; on SmolLM2 as shipped files holding asymmetric block-32 types (Q4_1, Q5_1)
          are left out of the pick (they can hold its shipped Q4_1 grid), unless ``--allow-asymmetric``;
  eval    the protocol through llama.cpp for the F32 base, each reference and each pick: wikitext-2 test
          and the SST-2 dev+test sentences joined one per line (another domain), ctx 512, first 20,480
          tokens (or all there are), both tokenized once by the source model's tokenizer;
  speed   paired decode rounds (``measure_paired``, order flipped every round) of each pick against its
          reference, both loaded in this process.
The verdict per (model, reference): no larger, decode ratio >= 0.97, rise <= half the reference's on both
texts; the tensor types of each file (gguf-py), and whether the pick relies on asymmetric block-32 types on a
model whose shipped grid is one (then it is not evidence). Every step is cached per model, file and step in
``--work`` (default $EDGELLM_CACHE/bench-ladder), so runs resume; ``--step`` runs one kind of step, the rest
are read from the cache. Each run writes bench/results/ladder.json (``write_result``; rows still missing
show "-") and docs/img/ladder_<model>.png (size against rise, symlog). Progress goes to stderr.

Run from the repository root (heavy: under the lock, one step at a time):
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.ladder --step build --only smollm2-135m
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.ladder --step select
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.ladder --step eval --refs Q4_0,Q4_K_M
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.ladder --step speed
A dry run on a tiny folder: ``--model DIR --ctx 64 --max-tokens 512 --calib-samples 4 --calib-len 64 ...``
(tests/bench_scripts/test_ladder.py).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from bench._common import repo_relative, write_result
from bench.ladder_args import GPTQ_TYPE, MODELS, REFS, STEPS, parse_args
from bench.ladder_model import Model, fingerprint, heldout_tiles, log
from bench.ladder_report import ASYMMETRIC_B32, TEXTS, plot, report, summarize

LAYOUT_TYPE = {"q4_0": "q4_0", "iq4_nl": "iq4_nl", "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_0": "q5_0"}   # main type
SYMMETRIC = {"q4_1": "q4_0", "q5_1": "q5_0"}


def calib_windows(m: Model):
    from edgellm.data import WIKI_VALID, calibration_windows, data_file

    return calibration_windows(m.tokenizer(), data_file(WIKI_VALID), m.args.calib_samples, m.args.calib_len, 0)


def heldout_windows(m: Model) -> list:
    """The first ``--select-windows`` tiles of wiki.valid's calibration tiling that no calibration window drew,
    each cut to ``--ctx`` tokens."""
    from edgellm.data import WIKI_VALID, data_file, tokenize_file

    ids = tokenize_file(m.tokenizer(), data_file(WIKI_VALID))
    return [t[: m.args.ctx] for t in heldout_tiles(ids, calib_windows(m), m.args.calib_len, m.args.select_windows)]


def record(m: Model, name: str, path: Path, t0: float, **extra) -> dict:
    from edgellm.exporters.llamacpp_quant import tensor_types

    e = {"file": path.name, "bytes": path.stat().st_size, "fingerprint": fingerprint(path),
         "tensor_types": tensor_types(path), "seconds": round(time.time() - t0, 2), **extra}
    log(f"{m.label}: built {name}: {e['bytes']:,} bytes, {e['tensor_types']}")
    return m.store.put(f"build:{name}", e)


def embedding_pin(m: Model, qtype: str) -> tuple[str, ...]:
    """llama.cpp's rule for the token embedding: with an untied output head it takes the file's main type
    (the head alone stays Q8_0, Q6_K's fallback for 576-wide rows); a tied one is the head and stays Q8_0."""
    cfg = m.src().model.config
    return () if getattr(cfg, "tie_word_embeddings", False) else (f"model.embed_tokens.weight={qtype}",)


def symmetric_pins(m: Model, ref: Path) -> tuple[str, ...]:
    """On a model whose shipped grid is asymmetric block-32, a layout's Q4_1/Q5_1 tensors pinned to Q4_0/Q5_0
    (same block, one bit-per-weight less or equal), so the layout-matched file stays evidence."""
    from edgellm.exporters.gguf_names import layout_of

    if not m.privileged or m.args.allow_asymmetric:
        return ()
    return tuple(f"{k}={SYMMETRIC[t]}" for k, t in layout_of(ref, m.src().model).items() if t in SYMMETRIC)


def head_pin(m: Model, qtype: str) -> tuple[str, ...]:
    """The output head pinned to *qtype* (a tied head is the token embedding); () for the exporter's default."""
    from edgellm.exporters.gguf_gptq import head_name

    return (f"{head_name(m.src().model)}={qtype}",) if qtype else ()


def same_as_a_gptq_file(m: Model, ref: Path, have: dict) -> bool:
    """Whether the layout-matched file of *ref* would hold exactly the types of a ``gptq-<type>`` file already
    built (a uniform preset, Q4_0 or IQ4_NL): then it is that file, and is not built twice."""
    from edgellm.exporters.gguf_names import file_types

    sym = SYMMETRIC if m.privileged and not m.args.allow_asymmetric else {}
    want = {n: sym.get(t, t) for n, (t, shape) in file_types(ref).items() if len(shape) == 2}
    return any(n.startswith("gptq-") and {k: t for k, (t, shape) in file_types(m.folder / e["file"]).items()
                                          if len(shape) == 2} == want for n, e in have.items())


def build(m: Model, refs: list) -> None:
    from edgellm.calibconfig import CalibConfig
    from edgellm.errors import EdgeLLMError
    from edgellm.exporters import export
    from edgellm.exporters.gguf import GGUFExportConfig
    from edgellm.exporters.llamacpp_quant import importance_matrix, llama_quantize
    from edgellm.models import load
    from edgellm.quantization import QuantConfig, quantize

    a, have = m.args, m.built()
    calib = CalibConfig(samples=a.calib_samples, seq_len=a.calib_len, seed=0)

    def out(name):
        return m.folder / f"{name}.gguf"

    def gguf(name, src, cfg, **extra):
        if name in have or "failed" in (m.store.get(f"build:{name}") or {}):
            return
        t0 = time.time()
        try:
            r = export(src, cfg, out(name), force=True, verify=a.verify, threads=a.threads)
        except EdgeLLMError as e:          # e.g. a budget below the smallest file: recorded, not retried
            log(f"{m.label}: {name}: {e}")
            m.store.put(f"build:{name}", {"failed": str(e)})
            return
        mix = r.details.get("mix") if isinstance(r.details, dict) else None
        have[name] = record(m, name, out(name), t0, **extra, **(
            {"predicted_loss": mix["predicted_loss"], "budget_bytes": mix["budget_bytes"]} if mix else {}))

    if "f32" not in have:
        t0 = time.time()
        export(m.src(), GGUFExportConfig(gguf_type="f32"), out("f32"), force=True, verify=a.verify, threads=a.threads)
        have["f32"] = record(m, "f32", out("f32"), t0, kind="base")
    todo = [q for q in refs if f"ref-{q}" not in have]
    if todo:
        t0 = time.time()
        imatrix = importance_matrix(m.src().model, calib_windows(m))
        for q in todo:
            llama_quantize(out("f32"), out(f"ref-{q}"), q, imatrix=imatrix, threads=a.threads, force=True)
            have[f"ref-{q}"] = record(m, f"ref-{q}", out(f"ref-{q}"), t0, kind="reference", qtype=q)
            t0 = time.time()
    for t in a.rtn:
        gguf(f"rtn-{t}", m.src(), GGUFExportConfig(gguf_type=t, tensor_types=embedding_pin(m, t)), kind="rtn", qtype=t)
    for name in [n for n, e in have.items() if n.startswith("gptq-") and e.get("quantizer") != "gptq-grid"]:
        del have[name]                     # built by the former QuantizedLinear path (now gptqlin-): rebuilt on the grid
    for bits in a.gptq_linear:
        name = f"gptqlin-{GPTQ_TYPE[bits]}"
        if name in have or "failed" in (m.store.get(f"build:{name}") or {}):
            continue
        cfg = QuantConfig(method="gptq", bits=bits, group_size=32, symmetric=True, act_order=True, static_groups=True,
                          mse_clip=True, awq_prescale=True, calib=calib)
        log(f"{m.label}: quantize {cfg.describe()}")
        q = load(m.spec)
        t0 = time.time()
        quantize(q, cfg, progress=False)
        gguf(name, q, GGUFExportConfig(gguf_type=GPTQ_TYPE[bits]), kind="gptq", qtype=GPTQ_TYPE[bits],
             quantizer=cfg.describe(), quantize_seconds=round(time.time() - t0, 2))
        del q
    gptq = dict(quantizer="gptq", awq_prescale=a.awq_prescale, calib=calib)
    heads = [(f"+h{e}" if e else "", e, head_pin(m, e)) for e in a.head_types]
    for t in a.gptq_types:
        for hs, e, pin in heads:
            gguf(f"gptq-{t}{hs}", m.src(), GGUFExportConfig(gguf_type=t, tensor_types=embedding_pin(m, t) + pin, **gptq),
                 kind="gptq", qtype=t, quantizer="gptq-grid", awq_prescale=a.awq_prescale, **({"head": e} if e else {}))
    for q in refs if a.layouts else ():
        if f"ref-{q}" in have and not same_as_a_gptq_file(m, out(f"ref-{q}"), have):
            gguf(f"gptqlay-{q}", m.src(), GGUFExportConfig(gguf_type=LAYOUT_TYPE[q], layout_of=str(out(f"ref-{q}")),
                                                           tensor_types=symmetric_pins(m, out(f"ref-{q}")), **gptq),
                 kind="gptq", qtype=LAYOUT_TYPE[q], layout_of=q, quantizer="gptq-grid", awq_prescale=a.awq_prescale)
    for (lname, ladder), sens in itertools.product(a.ladders.items(), a.sensitivities):
        tag, how = ("", {}) if sens == "hessian" else (f"+{sens}", {"sensitivity": sens})
        for q in [q for q in refs if a.mix_refs is None or q in a.mix_refs]:
            if f"ref-{q}" in have:
                budget = dict(max_bytes=have[f"ref-{q}"]["bytes"], ladder=ladder, calib=calib, **how)
                if a.rtn_mix:
                    gguf(f"mix-{lname}@{q}{tag}", m.src(), GGUFExportConfig(**budget), kind="mix", ladder=list(ladder),
                         budget_of=q, **how)
                for hs, e, pin in heads if a.gptq_mix else ():
                    gguf(f"gptqmix-{lname}@{q}{tag}{hs}", m.src(), GGUFExportConfig(**{**budget, **gptq}, tensor_types=pin),
                         kind="mix", quantizer="gptq-grid", ladder=list(ladder), budget_of=q, awq_prescale=a.awq_prescale,
                         **how, **({"head": e} if e else {}))


def runtime(m: Model, name: str):
    from edgellm.runtimes import open_runtime

    return open_runtime(str(m.folder / f"{name}.gguf"), runtime="llama.cpp", threads=m.args.threads)


def perplexity(m: Model, key: str, name: str, chunks: list, entry: dict) -> dict | None:
    """Cached perplexity of file *name* on *chunks* under *key*; measured unless cached for this very file."""
    from edgellm.evaluation.perplexity import evaluate_lm

    e = m.store.get(key)
    if e and e.get("fingerprint") == entry["fingerprint"]:
        return e
    if not m.args.measure:
        return None
    rt = runtime(m, name)
    try:
        r = evaluate_lm(rt, chunks=chunks)
    finally:
        rt.close()
    log(f"{m.label}: {key}: ppl {r.perplexity:.4f} ({r.n_tokens} tokens, {r.seconds:.0f} s)")
    return m.store.put(key, {"perplexity": r.perplexity, "n_tokens": r.n_tokens, "n_windows": r.n_windows,
                             "seconds": r.seconds, "fingerprint": entry["fingerprint"]})


def select(m: Model, refs: list) -> dict:
    """Held-out perplexity of every built file (measured when ``m.args.measure``), and each reference's pick."""
    files, chunks = m.built(), None
    held = {}
    for name, e in files.items():
        key = f"select:{name}:{m.args.ctx}x{m.args.select_windows}"
        if m.args.measure and not (m.store.get(key) or {}).get("fingerprint") == e["fingerprint"]:
            chunks = chunks or heldout_windows(m)
        r = perplexity(m, key, name, chunks, e)
        if r:
            held[name] = r["perplexity"]
    picks = {}
    for q in refs:
        ref = files.get(f"ref-{q}")
        if ref is None:
            continue
        ok = [n for n, e in files.items() if e.get("kind") in ("rtn", "gptq", "mix") and n in held
              and e["bytes"] <= ref["bytes"] and (m.args.allow_asymmetric or not m.privileged
                                                  or not any(t in ASYMMETRIC_B32 for t in e["tensor_types"]))]
        picks[q] = {"pick": min(ok, key=held.get) if ok else None, "candidates": sorted(ok, key=held.get)}
    return {"heldout_ppl": held, "picks": picks}


def texts(m: Model) -> dict:
    """Protocol windows of each evaluation text, tokenized by the source tokenizer."""
    from edgellm.data import SST2, WIKI_TEST, data_file, read_text, read_tsv, tokenize_text
    from edgellm.evaluation.perplexity import windows

    sst2 = "\n".join(r.text.strip() for s in ("dev", "test") for r in read_tsv(data_file(SST2.format(split=s)))) + "\n"
    raw = {"wikitext": read_text(data_file(WIKI_TEST)), "sst2": sst2}
    return {t: windows(tokenize_text(m.tokenizer(), raw[t], m.args.max_tokens), m.args.ctx) for t in TEXTS}


def evaluate(m: Model, names: list) -> dict:
    files, chunks, out = m.built(), None, {}
    for name in names:
        if name not in files:
            continue
        for t in TEXTS:
            key = f"eval:{t}:{name}:{m.args.ctx}x{m.args.max_tokens}"
            if m.args.measure and (m.store.get(key) or {}).get("fingerprint") != files[name]["fingerprint"]:
                chunks = chunks or texts(m)
            r = perplexity(m, key, name, (chunks or {}).get(t), files[name])
            if r:
                out.setdefault(name, {})[t] = r
    return out


def speed(m: Model, pairs: dict) -> dict:
    from edgellm.measure import measure_paired

    files, out = m.built(), {}
    for q, pick in pairs.items():
        ref, key = f"ref-{q}", f"speed:{q}:{pick}:{m.args.rounds}"
        fp = f"{files[ref]['fingerprint']}|{files[pick]['fingerprint']}"
        e = m.store.get(key)
        if not (e and e.get("fingerprint") == fp) and m.args.measure:
            rts = {ref: runtime(m, ref), pick: runtime(m, pick)}
            try:
                r = measure_paired(rts, rounds=m.args.rounds, prompt_len=m.args.prompt_len, new_tokens=m.args.new_tokens)
            finally:
                for rt in rts.values():
                    rt.close()
            d = r["ratios"][pick]["decode"]
            log(f"{m.label}: paired decode {pick} / {ref}: median {d['median']:.3f} (IQR {d['q1']:.3f}-{d['q3']:.3f})")
            e = m.store.put(key, {"fingerprint": fp, "paired": r, "decode_ratio": d["median"],
                                  "prefill_ratio": r["ratios"][pick]["prefill"]["median"]})
        if e and e.get("fingerprint") == fp:
            out[q] = e
    return out


def speed_gate(m: Model, sel: dict) -> None:
    """The decode condition in the pick: each reference's candidates in held-out order, the first whose paired
    decode ratio against the reference is at least ``--min-decode`` (at most ``--speed-tries`` measured; the
    held-out best when none passes or a speed is unknown). The evaluation texts play no part."""
    for q, p in sel["picks"].items():
        p["speed_checked"] = []
        for cand in p["candidates"][: m.args.speed_tries]:
            r = speed(m, {q: cand}).get(q)
            if r is None:
                break
            p["speed_checked"].append([cand, round(r["decode_ratio"], 4)])
            if r["decode_ratio"] >= m.args.min_decode:
                p["pick"] = cand
                break


def run_model(m: Model, steps: list, refs: list) -> dict:
    a = m.args
    if "build" in steps:
        build(m, refs)
    a.measure = "select" in steps
    sel = select(m, refs)
    if a.min_decode > 0:
        a.measure = "speed" in steps and not a.skip_speed
        speed_gate(m, sel)
    picks = {q: p["pick"] for q, p in sel["picks"].items() if p["pick"]}
    a.measure = "eval" in steps
    ev = evaluate(m, ["f32"] + [f"ref-{q}" for q in refs] + sorted(set(picks.values())))
    a.measure = "speed" in steps and not a.skip_speed
    sp = speed(m, picks)
    a.measure = False                  # figures of other files already in the cache (earlier picks): read, not measured
    return summarize(m, refs, sel, {**evaluate(m, sorted(m.built())), **ev}, sp)




def main(argv=None) -> Path:
    """Run the asked steps for every model, then write the result file and plots from the cache; returns its path.

    >>> main(["--model", "/tmp/tiny", "--ctx", "64", "--max-tokens", "256", "--out", "/tmp/ladder.json"])  # doctest: +SKIP
    PosixPath('/tmp/ladder.json')
    """
    import torch

    from edgellm.measure import machine_info

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = list(STEPS) if a.step == "all" else [a.step]
    t0, models, plots, rows = time.time(), {}, [], []
    for spec in a.models:
        m = Model(spec, a)
        log(f"{m.label}: steps {', '.join(steps)}; work {repo_relative(str(m.folder))}")
        models[m.label] = r = run_model(m, steps, a.refs)
        p = plot(m.label, r, Path(a.img_dir) / f"ladder_{m.label}.png")
        if p:
            plots.append(repo_relative(str(p)))
        rows += [{"model": m.label, **row} for row in r.pop("rows")]
    result = report(a, models, rows, plots, time.time() - t0)
    out = write_result(a.out, result, machine=machine_info())
    log(f"wrote {repo_relative(str(out))}: {result['target']}")
    return out


if __name__ == "__main__":
    main()
