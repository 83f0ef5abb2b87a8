"""Distillation benchmark: LM KD (SmolLM2-135M → 15 layers), its α=1 ablation, MiniLM SST-2 classifier KD
(6 → 3 layers), and W4 recovery. Writes bench/results/distill.json, curves in docs/img/distill-*.png.

Phases run separately (each under the heavy lock, from the repository root), results accumulate in the
JSON; each phase keeps its own command, machine and measured_at, and its table rows carry that time (while
phases measured before the envelope remain, the record's "provenance" names them, "partly legacy"):
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.distill --phase lm
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.distill --phase cls
    flock /tmp/edgellm-heavy.lock .venv/bin/python -m bench.distill --phase recovery
    .venv/bin/python -m bench.distill --phase render
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench._common import PARTLY_LEGACY, RESULTS, ROOT, invocation, now_utc, repo_relative, stamp, write_result
from edgellm.api import evaluate
from edgellm.data import SST2, WIKI_VALID, data_file, read_tsv
from edgellm.distillation import DistillConfig, distill, finetune, student_from_teacher
from edgellm.measure import machine_info
from edgellm.models import Loaded, cache_dir, load

RESULT = RESULTS / "distill.json"
IMG = ROOT / "docs" / "img"
WORK = cache_dir() / "bench-distill"      # the trained models, which optimize_cls/optimize_multi then searched
PHASES = ("lm", "cls", "recovery", "recovery-2:4", "recovery-50%")      # keys of "raw", in the order they run


def pick_threads(model, n_tokens: int) -> dict:
    """Time a forward at 1 and 2 threads, alternately; the shared CPU sometimes makes 1 thread faster."""
    ids = (torch.arange(n_tokens).view(1, -1) * 7 + 100) % model.config.vocab_size
    times = {1: [], 2: []}
    with torch.no_grad():
        for _ in range(2):
            for n in (1, 2):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                model(input_ids=ids)
                times[n].append(time.perf_counter() - t0)
    best = min(times, key=lambda n: min(times[n]))
    torch.set_num_threads(best)
    return {"chosen": best, "seconds_1": times[1], "seconds_2": times[2]}


def test_nll(loaded, tokens: int) -> dict:
    p = evaluate(loaded, ctx=512, max_tokens=tokens, threads=torch.get_num_threads()).perplexity.to_dict()
    return {"mean_nll": p["mean_nll"], "perplexity": p["perplexity"], "tokens": p["n_tokens"], "ctx": p["ctx"],
            "seconds": p["seconds"]}


def copy_png(src, name) -> str | None:
    if not src:
        return None
    IMG.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, IMG / name)
    return f"docs/img/{name}"


def run_summary(r) -> dict:
    return {"steps": r.steps, "tokens_seen": r.tokens_seen, "examples_seen": r.examples_seen,
            "train_seconds": round(r.wall_seconds, 1), "evals": r.evals, "final_loss": r.final_loss, "config": r.config}


def phase_lm(a) -> dict:
    t0 = time.time()
    teacher = load("smollm2-135m")
    threads = pick_threads(teacher.model, 256)
    student0 = student_from_teacher(teacher, keep_layers=15)
    ev = {"teacher": test_nll(teacher, a.eval_tokens), "untrained": test_nll(student0, a.eval_tokens)}
    cfg = DistillConfig(alpha=a.alpha, temperature=a.temperature, steps=max(1, a.steps), lr=a.lr,
                        batch_size=a.batch_size, seq_len=a.seq_len, val_tokens=1024, seed=0)
    probe = None
    if a.steps <= 0:                                     # fill --run-minutes per run, from a timed probe of KD steps
        probe = seconds_per_step(teacher, student0, cfg)
        steps = max(10, int(a.run_minutes * 60 / probe["seconds_per_step"]))
        cfg = cfg.replace(steps=steps)
    cfg = cfg.replace(warmup=max(1, cfg.steps // 20), eval_every=max(1, cfg.steps // 6))
    runs = {}
    for name, c in (("kd", cfg), ("hard", cfg.replace(alpha=1.0))):
        s = student_from_teacher(teacher, keep_layers=15)
        out = WORK / f"lm-{name}"
        r = distill(teacher, s, data_file(WIKI_VALID), c, out=out, force=True)
        runs[name] = {**run_summary(r), "png": copy_png(r.plot, f"distill-lm-{name}.png")}
        ev[name] = test_nll(r.student, a.eval_tokens)
        del s, r
    gap0 = ev["untrained"]["mean_nll"] - ev["teacher"]["mean_nll"]
    gaps = {k: ev[k]["mean_nll"] - ev["teacher"]["mean_nll"] for k in ("kd", "hard")}
    return {"threads": threads, "eval": ev, "runs": runs, "kept_layers": student0.meta.edgellm["kept_layers"],
            "gap_untrained": gap0, "gap_kd": gaps["kd"], "gap_hard": gaps["hard"],
            "gap_shrink_kd": 1 - gaps["kd"] / gap0, "gap_shrink_hard": 1 - gaps["hard"] / gap0,
            "wall_seconds": time.time() - t0, "eval_tokens": a.eval_tokens, "probe": probe}


def seconds_per_step(teacher: Loaded, student: Loaded, cfg: DistillConfig, n: int = 4) -> dict:
    """Median wall seconds of one KD optimizer step (steps 2..n of a throw-away run on a copy of the student)."""
    stamps = []
    s = Loaded(copy.deepcopy(student.model), student.tokenizer, copy.copy(student.meta))
    distill(teacher, s, data_file(WIKI_VALID), cfg.replace(steps=n, warmup=1, eval_every=0), out=WORK / "probe",
            force=True, progress=False, on_step=lambda step, rec: stamps.append(time.perf_counter()))
    per = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"steps": n, "step_seconds": per, "seconds_per_step": statistics.median(per)}


def throughput(teacher: Loaded, student: Loaded, rows, rounds: int = 3) -> dict:
    """examples/s of teacher and student on the same rows, measured alternately."""
    from edgellm.evaluation import accuracy
    from edgellm.runtimes.torch import TorchRuntime

    rts = {"teacher": TorchRuntime(teacher, device="cpu"), "student": TorchRuntime(student, device="cpu")}
    accuracy(rts["student"], rows[:64], batch_size=32)   # warm-up
    accuracy(rts["teacher"], rows[:64], batch_size=32)
    eps = {"teacher": [], "student": []}
    for _ in range(rounds):
        for k in ("teacher", "student"):
            eps[k].append(accuracy(rts[k], rows, batch_size=32).examples_per_s)
    ratios = [s / t for s, t in zip(eps["student"], eps["teacher"])]
    return {"examples_per_s": eps, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "rows": len(rows)}


def phase_cls(a) -> dict:
    from edgellm.evaluation import accuracy
    from edgellm.runtimes.torch import TorchRuntime

    t0 = time.time()
    train = read_tsv(data_file(SST2.format(split="train")))[: a.train_rows]
    dev = read_tsv(data_file(SST2.format(split="dev")))[: a.dev_rows]
    model = load("minilm-l6", task="classification")
    threads = pick_threads(model.model, 32)
    ft = DistillConfig(alpha=1.0, steps=a.cls_steps, lr=a.cls_lr, batch_size=32, warmup=max(1, a.cls_steps // 10),
                       eval_every=max(1, a.cls_steps // 3), seed=0)
    val = dev[: min(500, len(dev))]
    rt = finetune(model, train, ft, out=WORK / "minilm-sst2", eval_data=val, force=True)
    teacher = load(WORK / "minilm-sst2", task="classification")
    student = student_from_teacher(teacher, keep_layers=3)
    kd = ft.replace(alpha=a.cls_alpha, temperature=a.cls_temperature)
    rs = distill(teacher, student, train, kd, out=WORK / "minilm-sst2-l3", eval_data=val, force=True)
    acc_t = accuracy(TorchRuntime(teacher, device="cpu"), dev, batch_size=32).accuracy
    acc_s = accuracy(TorchRuntime(rs.student, device="cpu"), dev, batch_size=32).accuracy
    acc_u = accuracy(TorchRuntime(student_from_teacher(teacher, keep_layers=3), device="cpu"), dev, batch_size=32).accuracy
    tp = throughput(teacher, rs.student, dev[: a.speed_rows])
    return {"threads": threads, "train_rows": len(train), "dev_rows": len(dev),
            "teacher_finetune": {**run_summary(rt), "png": copy_png(rt.plot, "distill-cls-teacher.png")},
            "student_kd": {**run_summary(rs), "png": copy_png(rs.plot, "distill-cls-student.png")},
            "kept_layers": student.meta.edgellm["kept_layers"], "acc_teacher": acc_t, "acc_student": acc_s,
            "acc_student_untrained": acc_u, "retention": acc_s / acc_t, "throughput": tp,
            "wall_seconds": time.time() - t0}


def compressed_copy(teacher: Loaded, kind: str, group: int, source: str | None = None) -> tuple[Loaded, dict]:
    """The model to recover: W4 RTN (symmetric, *group*), SparseGPT 2:4 or 50% (reused from bench/prune.py's
    cache, or the sparse folder *source*)."""
    from edgellm.distillation.fakequant import block_linears, fake_quantize

    if kind == "w4":
        w4 = Loaded(copy.deepcopy(teacher.model), teacher.tokenizer, copy.copy(teacher.meta))
        with torch.no_grad():
            for lin in block_linears(w4.model):
                lin.weight.copy_(fake_quantize(lin.weight, 4, group))
        return w4, {"fake_quant_bits": 4, "fake_quant_group": group}
    pattern = "2:4" if kind == "2:4" else None
    if source:
        return load(source), {"keep_sparsity": True, "source": source}
    cached = cache_dir() / "bench-prune" / "models" / f"sparsegpt-{'2of4' if pattern else '50'}"
    if (cached / "config.json").exists():
        return load(cached), {"keep_sparsity": True}
    from edgellm.calibconfig import CalibConfig
    from edgellm.pruning import PruneConfig, prune
    pruned = Loaded(copy.deepcopy(teacher.model), teacher.tokenizer, copy.copy(teacher.meta))
    prune(pruned, PruneConfig(method="sparsegpt", sparsity=0.5, pattern=pattern, calib=CalibConfig(samples=32)))
    return pruned, {"keep_sparsity": True}


REC_LABEL = {"w4": "W4 g{g} symmetric RTN", "2:4": "SparseGPT 2:4", "50%": "SparseGPT 50% unstructured"}


def phase_recovery(a) -> dict:
    t0 = time.time()
    teacher = load("smollm2-135m")
    threads = pick_threads(teacher.model, 256)
    student, extra = compressed_copy(teacher, a.rec_kind, a.rec_group, a.rec_source)
    source = extra.pop("source", None)
    prev = (json.loads(RESULT.read_text()).get("raw", {}) if RESULT.exists() else {})
    prev_teacher = next((v["eval"]["teacher"] for v in prev.values() if isinstance(v, dict)
                         and v.get("eval_tokens") == a.eval_tokens and "teacher" in v.get("eval", {})), None)
    ev = {"teacher": prev_teacher or test_nll(teacher, a.eval_tokens),   # same model, same tokens: reuse
          "before": test_nll(student, a.eval_tokens)}
    cfg = DistillConfig(alpha=0.0, temperature=1.0, steps=a.rec_steps, lr=a.rec_lr, batch_size=a.batch_size,
                        seq_len=a.seq_len, warmup=max(1, a.rec_steps // 10), eval_every=max(1, a.rec_steps // 4),
                        val_tokens=1024, seed=0, **extra)
    slug = a.rec_kind.replace(":", "of").replace("%", "pct")
    r = distill(teacher, student, data_file(WIKI_VALID), cfg, out=WORK / f"recovery-{slug}", force=True)
    ev["after"] = test_nll(r.student, a.eval_tokens)
    loss0 = ev["before"]["mean_nll"] - ev["teacher"]["mean_nll"]
    loss1 = ev["after"]["mean_nll"] - ev["teacher"]["mean_nll"]
    return {"threads": threads, "kind": a.rec_kind, "eval": ev,
            "run": {**run_summary(r), "png": copy_png(r.plot, f"distill-recovery-{slug}.png")},
            "group_size": a.rec_group, "source": source, "nll_loss_before": loss0, "nll_loss_after": loss1,
            "recovered_fraction": 1 - loss1 / loss0 if loss0 > 0 else None, "wall_seconds": time.time() - t0,
            "eval_tokens": a.eval_tokens}


def r4(x):
    return None if x is None else round(float(x), 4)


def _at(rows: list[dict], phase: dict) -> list[dict]:
    """*rows* stamped with the time their phase was measured (phases run before the envelope have none)."""
    return [stamp(r, phase["measured_at"]) for r in rows] if phase.get("measured_at") else rows


def tables(raw: dict) -> tuple[list, list]:
    out, plots = [], []
    lm = raw.get("lm")
    if lm:
        ev, runs = lm["eval"], lm["runs"]
        rows = [{"model": "teacher SmolLM2-135M (30 layers)", "test mean NLL": r4(ev["teacher"]["mean_nll"]),
                 "ppl": r4(ev["teacher"]["perplexity"])},
                {"model": "15-layer student, untrained (layers dropped)", "test mean NLL": r4(ev["untrained"]["mean_nll"]),
                 "ppl": r4(ev["untrained"]["perplexity"]), "gap to teacher": r4(lm["gap_untrained"])}]
        for k, label in (("kd", f"KD α={runs['kd']['config']['alpha']}, T={runs['kd']['config']['temperature']}"),
                         ("hard", "ablation α=1 (hard labels only)")):
            rows.append({"model": f"15-layer student, {label}", "test mean NLL": r4(ev[k]["mean_nll"]),
                         "ppl": r4(ev[k]["perplexity"]), "gap to teacher": r4(lm[f"gap_{k}"]),
                         "gap shrink": f"{100 * lm[f'gap_shrink_{k}']:.1f}%", "steps": runs[k]["steps"],
                         "tokens seen": runs[k]["tokens_seen"], "train s": runs[k]["train_seconds"], "curves": runs[k]["png"]})
            plots.append(runs[k]["png"])
        out.append({"title": "LM: SmolLM2-135M → 15-layer student, distilled on wiki.valid.tokens",
                    "columns": ["model", "test mean NLL", "ppl", "gap to teacher", "gap shrink", "steps", "tokens seen",
                                "train s", "curves"], "rows": _at(rows, lm),
                    "notes": [f"wikitext-2 test, ctx {ev['teacher']['ctx']}, {ev['teacher']['tokens']} predicted tokens",
                              f"kept layers {lm['kept_layers']}; threads {lm['threads']['chosen']} (faster of 1/2, measured)",
                              f"target gap shrink ≥ 50%: KD {100 * lm['gap_shrink_kd']:.1f}% → "
                              f"{'met' if lm['gap_shrink_kd'] >= 0.5 else 'NOT met'}",
                              f"ablation: KD gap {lm['gap_kd']:.3f} vs α=1 gap {lm['gap_hard']:.3f} at the same steps → "
                              f"{'KD wins' if lm['gap_kd'] < lm['gap_hard'] else 'KD does NOT win'}",
                              f"phase wall time {lm['wall_seconds']:.0f} s"]})
    c = raw.get("cls")
    if c:
        tp = c["throughput"]
        eps_t, eps_s = statistics.median(tp["examples_per_s"]["teacher"]), statistics.median(tp["examples_per_s"]["student"])
        rows = [{"model": "teacher minilm-l6 + 2-label head (fine-tuned)", "layers": 6, "dev accuracy": r4(c["acc_teacher"]),
                 "examples/s": round(eps_t, 1), "steps": c["teacher_finetune"]["steps"],
                 "examples seen": c["teacher_finetune"]["examples_seen"], "train s": c["teacher_finetune"]["train_seconds"],
                 "curves": c["teacher_finetune"]["png"]},
                {"model": "3-layer student, untrained (layers dropped)", "layers": 3, "dev accuracy": r4(c["acc_student_untrained"])},
                {"model": f"3-layer student, KD α={c['student_kd']['config']['alpha']}, T={c['student_kd']['config']['temperature']}",
                 "layers": 3, "dev accuracy": r4(c["acc_student"]), "retention": f"{100 * c['retention']:.1f}%",
                 "examples/s": round(eps_s, 1), "speed-up": f"{tp['ratio_median']:.2f}× ({tp['ratio_min']:.2f}-{tp['ratio_max']:.2f})",
                 "steps": c["student_kd"]["steps"], "examples seen": c["student_kd"]["examples_seen"],
                 "train s": c["student_kd"]["train_seconds"], "curves": c["student_kd"]["png"]}]
        plots += [c["teacher_finetune"]["png"], c["student_kd"]["png"]]
        ok = c["retention"] >= 0.97 and tp["ratio_median"] >= 1.8
        out.append({"title": "Classifier: MiniLM-L6 on SST-2 → 3-layer student",
                    "columns": ["model", "layers", "dev accuracy", "retention", "examples/s", "speed-up", "steps",
                                "examples seen", "train s", "curves"], "rows": _at(rows, c),
                    "notes": [f"trained on the first {c['train_rows']} rows of sst-2/train.tsv; accuracy on the first "
                              f"{c['dev_rows']} rows of sst-2/dev.tsv; kept layers {c['kept_layers']}",
                              f"throughput: batch 32, {tp['rows']} dev rows, teacher and student alternately, "
                              f"{len(tp['examples_per_s']['teacher'])} rounds, median ratio (min-max)",
                              f"target ≥ 97% retention at ≥ 1.8×: {'met' if ok else 'NOT met'}",
                              f"phase wall time {c['wall_seconds']:.0f} s"]})
    for key in ("recovery", "recovery-2:4", "recovery-50%"):
        rec = raw.get(key)
        if not rec:
            continue
        ev, run = rec["eval"], rec["run"]
        before, after = ev.get("before", ev.get("w4_before")), ev.get("after", ev.get("w4_after"))
        label = REC_LABEL[rec.get("kind", "w4")].format(g=rec["group_size"])
        if rec.get("source"):
            label += f" ({Path(rec['source']).name})"
        rows = [{"model": "teacher SmolLM2-135M fp32", "test mean NLL": r4(ev["teacher"]["mean_nll"]), "ppl": r4(ev["teacher"]["perplexity"])},
                {"model": f"{label}, before", "test mean NLL": r4(before["mean_nll"]),
                 "ppl": r4(before["perplexity"]), "NLL loss": r4(rec["nll_loss_before"])},
                {"model": f"{label}, after KD recovery", "test mean NLL": r4(after["mean_nll"]),
                 "ppl": r4(after["perplexity"]), "NLL loss": r4(rec["nll_loss_after"]),
                 "recovered": None if rec["recovered_fraction"] is None else f"{100 * rec['recovered_fraction']:.1f}%",
                 "steps": run["steps"], "tokens seen": run["tokens_seen"], "train s": run["train_seconds"], "curves": run["png"]}]
        plots.append(run["png"])
        how = ("straight-through fake-quant, weights stay on the 4-bit grid" if rec.get("kind", "w4") == "w4"
               else "pruned weights held at zero, so the sparsity pattern is kept")
        out.append({"title": f"Recovery: {label} SmolLM2-135M, KD from the fp32 original",
                    "columns": ["model", "test mean NLL", "ppl", "NLL loss", "recovered", "steps", "tokens seen", "train s", "curves"],
                    "rows": _at(rows, rec), "notes": [f"wikitext-2 test, ctx 512, {ev['teacher']['tokens']} predicted tokens; {how}; "
                                            f"phase wall time {rec['wall_seconds']:.0f} s"]})
    return out, [p for p in plots if p]


def legacy_phases(raw: dict) -> list[str]:
    """The phases of *raw* measured before the envelope (no ``measured_at``), in the order they run."""
    return [k for k in PHASES if k in raw and not raw[k].get("measured_at")]


def modular(command: str) -> str:
    """*command* as it runs today: ``python bench/distill.py`` became ``python -m bench.distill``."""
    return re.sub(r"python bench/distill\.py", "python -m bench.distill", command)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["lm", "cls", "recovery", "render"], required=True)
    ap.add_argument("--eval-tokens", type=int, default=20480)
    ap.add_argument("--steps", type=int, default=0, help="LM steps per run; 0 = as many as fit --run-minutes")
    ap.add_argument("--run-minutes", type=float, default=12.0, help="LM: training minutes per run (KD and α=1)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--train-rows", type=int, default=2400)
    ap.add_argument("--dev-rows", type=int, default=1500)
    ap.add_argument("--speed-rows", type=int, default=512)
    ap.add_argument("--cls-steps", type=int, default=60)
    ap.add_argument("--cls-lr", type=float, default=1e-4)
    ap.add_argument("--cls-alpha", type=float, default=0.3)
    ap.add_argument("--cls-temperature", type=float, default=2.0)
    ap.add_argument("--rec-steps", type=int, default=12)
    ap.add_argument("--rec-lr", type=float, default=5e-5)
    ap.add_argument("--rec-group", type=int, default=128)
    ap.add_argument("--rec-source", default=None, help="sparse model folder to recover (default: bench/prune.py's SparseGPT)")
    ap.add_argument("--rec-kind", choices=sorted(REC_LABEL), default="w4", help="recover a W4 RTN or a SparseGPT 2:4 model")
    a = ap.parse_args()
    torch.manual_seed(0)
    result = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    raw, old_machine = result.get("raw", {}), result.get("machine")
    if a.phase != "render":
        key = a.phase if a.phase != "recovery" or a.rec_kind == "w4" else f"recovery-{a.rec_kind}"
        raw[key] = {**{"lm": phase_lm, "cls": phase_cls, "recovery": phase_recovery}[a.phase](a),
                    "command": shlex.join(invocation()), "machine": machine_info(), "measured_at": now_utc()}
    tabs, plots = tables(raw)
    command = "; ".join(modular(raw[k]["command"]) for k in PHASES if k in raw)
    result = {"title": "Distillation: LM KD, classifier KD, recovery",
              "description": "L = α·CE + (1−α)·T²·KL(teacher‖student) (docs/distillation.md). Gap = student's minus "
                             "teacher's wikitext-2 test mean NLL. Training data: wiki.valid.tokens (LM), sst-2/train.tsv "
                             "(classifier). On the shared 2-core CPU every heavy phase ran under the heavy lock.",
              "tables": tabs, "plots": plots, "raw": raw}
    old = legacy_phases(raw)
    if old:
        result["provenance"] = PARTLY_LEGACY + (
            f"phase{'s' if len(old) > 1 else ''} {', '.join(old)} measured before the envelope (their rows carry no "
            "measured_at, and the machine above is the last phase's); re-run with " + "; ".join(
                repo_relative(modular(raw[k]["command"])) for k in old))
    write_result(RESULT, result, machine=machine_info() if a.phase != "render" else old_machine or machine_info(),
                 command=command)
    for t in tabs:
        print(t["title"])
        for r in t["rows"]:
            print("  ", r)
        for n in t["notes"]:
            print("   -", n)


if __name__ == "__main__":
    main()
