"""The search's stages, in order: screen, full protocol, speed, final predictions (each a function of the ``Search``).

1. **Screen**: build each surviving (model, recipe) once, into the cache, and score its quality on
   PyTorch over the first windows (rows), rejecting early when the running loss is far beyond the
   budget; a recipe with a ``gguf`` section (a GGUF type written at export) is exported and
   screened on llama.cpp instead, timed as the ``screen|llama.cpp`` stage for the budget.
2. **Full protocol** (docs/design.md §4) for the contenders on each candidate's own runtime (a
   llama.cpp, ONNX Runtime or LiteRT candidate is first exported and verified there, ``deploy.py``,
   ``litert.py``);
   the base comes first (it calibrates), a row whose same weights are predicted to lose on another
   runtime is skipped.
3. **Speed** on the host for the finalists (through the search's executor: here, or alone on the Ray
   cluster's bench node); each measurement is first predicted, so the report holds
   prediction-vs-measurement errors, then it calibrates the cost model.
4. **Final predictions**: every row's (and reference row's) device figures with the final
   calibration (measured rows also get a leave-one-out host prediction).

Every stage reads the cache first and checks the time budget before each unit of work; a failure
is recorded on its row and the search goes on. With the Ray executor the cluster has filled the cache
(``ray_exec.py``), so the stages only read it. Deliberately absent: retrying a failed candidate (Ray
retries a task whose worker died).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from ..devices.costmodel import predict, prediction_error
from ..errors import EdgeLLMError
from ..models import load
from ..runtimes.torch import TorchRuntime
from .build import build_candidate, task_kwargs
from .deploy import exact_stats, llamacpp_quality, llamacpp_screen, onnx_quality
from .litert import litert_quality
from .pick import same_weights_dominator
from .quality import cls_quality, cls_summary, lm_quality, lm_summary, task_quality, task_summary
from .space import base_weights
from .speed import harness_rss


def screen(search) -> None:
    """Build each planned (model, recipe) and screen its quality on PyTorch; rows become screened or rejected."""
    mql = search.constraints.max_quality_loss
    for spec in search.cfg.models:
        for recipe in search.recipes:
            rows = [r for r in search.live() if r.model == spec and r.recipe == recipe.name]
            if not rows:
                continue
            if not search.budget.fits():
                search.budget.skip_rows(rows, "time budget spent before building")
                continue
            t0 = time.monotonic()
            try:
                folder = built_folder(search, spec, recipe)
                if "gguf" in recipe.steps:        # its weights exist only in the GGUF: screened on llama.cpp
                    if not search.budget.fits(search.budget.estimate("screen", "llama.cpp")):
                        search.budget.skip_rows(rows, "time budget: no time to export and screen the GGUF")
                        continue
                    for r in rows:
                        r.artifact = str(folder)
                    res = llamacpp_screen(search, rows[0], recipe)
                    search.budget.record("screen", "llama.cpp", time.monotonic() - t0)
                else:
                    res = torch_quality(search, spec, recipe, folder, full=False)
            except Exception as e:  # one candidate's failure (a bad input or a crash) must not end the search
                for r in rows:
                    r.status, r.reason = "failed", why(e)
                continue
            for r in rows:
                r.build = dict(search.entries.get(spec, recipe).get("build", {}), **rows[0].build)
                r.artifact = rows[0].artifact if "gguf" in recipe.steps else str(folder)
                r.quality = {k: v for k, v in res.items() if k not in ("nlls", "flags")} | {"protocol": "screen"}
                r.quality_loss = res["quality_loss"]
                if screen_rejects(res, mql):
                    r.status = "rejected"
                    r.reason = (f"screen: quality loss {100 * res['quality_loss']:+.1f}% on "
                                f"{res.get('n_tokens', res.get('n_rows'))} {'tokens' if 'n_tokens' in res else 'rows'}"
                                + (" (stopped early)" if res["early_rejected"] else ""))
                else:
                    r.status = "screened"


def screen_rejects(res: dict, max_quality_loss: float) -> bool:
    """Whether a screen's figures reject the candidate: stopped early, or a loss over 1.5 × the budget (a task's
    screen has few examples: judged by the best case its interval allows).

    >>> screen_rejects({"early_rejected": False, "quality_loss": 0.2}, 0.1)
    True
    """
    return bool(res["early_rejected"] or res.get("quality_loss_low", res["quality_loss"]) > max_quality_loss * 1.5)


def built_folder(search, spec: str, recipe) -> Path:
    """The candidate's built model folder in the cache (built now unless cached); the identity recipe is the base."""
    if base_weights(recipe):             # identity, or a GGUF type written from the base's own weights
        return Path(spec)
    folder = search.entries.folder(spec, recipe) / "model"
    e = search.entries.get(spec, recipe)
    if not e.get("build") or not (folder / "config.json").exists():
        search.step(f"build {recipe.name}")
        e["build"] = build_candidate(spec, recipe, folder, search.cfg.task, search.cfg.threads)
        search.entries.save(spec, recipe)
    return folder


def torch_quality(search, spec: str, recipe, folder: Path, full: bool) -> dict:
    """Quality of the built candidate on PyTorch: the screen (``full=False``) or every window/row, resumed from the cache."""
    base, e = search.bases[spec], search.entries.get(spec, recipe)
    key = "nlls" if search.lm and search.task is None else "flags"
    need = len(base.data) if full else base.screen
    if len(e.get(key, [])) < need and not e.get("rejected_at"):
        search.step(f"{'full' if full else 'screen'} {recipe.name} (torch)")
        loaded = base.loaded if recipe.is_identity else load(str(folder), **task_kwargs(search.cfg.task))
        rt = TorchRuntime(loaded, device="cpu", threads=search.cfg.threads)
        score = lm_quality if search.lm else cls_quality
        if search.task is not None:
            score = partial(task_quality, max_new_tokens=search.cfg.task_new_tokens)
        res = score(rt, base.data, base.reference, search.constraints.max_quality_loss, base.screen,
                    search.cfg.reject_factor, done=e.get(key), full=full)
        e[key] = res[key]
        if res["early_rejected"]:
            e["rejected_at"] = len(res[key])
        search.entries.save(spec, recipe)
    early = bool(e.get("rejected_at"))
    if search.task is not None:
        return task_summary(e[key][:need], base.reference, rejected=early)
    if search.lm:
        return lm_summary(e[key], base.reference, base.data[0].numel() - 1, rejected=early)
    return cls_summary(e[key], base.reference, rejected=early)


def full(search) -> None:
    """The full protocol for the screened rows, each on its own runtime, in the order the budget favours."""
    # the base first (it calibrates), then the device's deployment runtimes before PyTorch eager (the same
    # weights on llama.cpp are smaller and faster on every host measured), each by the objective: a tight
    # budget skips the tail
    rows = search.live(("screened",))
    others_exist = any(r.runtime != "torch" for r in rows)
    rows.sort(key=lambda r: (not search.is_base(r), others_exist and r.runtime == "torch", search.predicted_rank(r)))
    margin = search.cfg.dominance_margin
    for row in rows:
        if row.status == "skipped":
            continue
        better = same_weights_dominator(row, rows, margin)
        if better is not None and not search.is_base(row):
            row.status = "skipped"
            row.reason = (f"same weights as {better.label}, which is predicted ≥ {margin:g}× "
                          "faster and no larger: not evaluated")
            continue
        recipe = search.recipe(row.recipe)
        if not search.budget.fits(search.budget.estimate("full", row.runtime)):
            search.budget.skip_rows([row], "time budget: no time for the full protocol")
            continue
        t0 = time.monotonic()
        try:
            if row.runtime == "torch":
                res = torch_quality(search, row.model, recipe, Path(row.artifact), full=True)
            elif row.runtime == "onnxruntime":
                res = onnx_quality(search, row, recipe)
            elif row.runtime == "litert":
                res = litert_quality(search, row, recipe)
            else:
                res = llamacpp_quality(search, row, recipe)
        except Exception as e:  # noqa: BLE001 — recorded in the report, the search goes on
            row.status, row.reason = "failed", why(e)
            continue
        search.budget.record("full", row.runtime, time.monotonic() - t0)
        row.quality = {k: v for k, v in res.items() if k not in ("nlls", "flags")} | {"protocol": "full"}
        row.quality_loss = res["quality_loss"]
        row.status = "evaluated"
        if res["quality_loss"] > search.constraints.max_quality_loss:
            row.reason = f"quality loss {100 * res['quality_loss']:+.2f}% is over budget"


def measure(search) -> None:
    """Speed on the host for the base and the best predicted finalists within the quality budget."""
    ok = [r for r in search.live(("evaluated",)) if r.quality_loss is not None
          and r.quality_loss <= search.constraints.max_quality_loss]
    base_rows = [r for r in ok if search.is_base(r)]
    others = sorted((r for r in ok if r not in base_rows), key=search.predicted_rank)
    n = search.cfg.max_finalists
    for r in others[n:]:
        r.reason = f"not among the {n} best predicted finalists (speed not measured)"
    for row in base_rows + others[:n]:
        try:
            search.budget.timed(row, "speed", row.runtime, "time budget: speed not measured",
                                lambda: measure_row(search, row))
        except Exception as e:  # noqa: BLE001
            row.status, row.reason = "failed", f"speed measurement: {why(e)}"


def measure_row(search, row) -> None:
    """Predict the row on the host (calibrated on the other rows), measure it, calibrate, and record both."""
    cfg, e = search.cfg, search.entry(row)
    stats = exact_stats(search, row)
    search.stats[id(row)] = stats
    before = predict(stats, search.host, row.runtime, search.calibration.without(row.label), cfg.prompt_len,
                     cfg.new_tokens)
    speed_key = f"speed_{row.runtime}"
    settings = {"runs": cfg.speed_runs, "prompt_len": cfg.prompt_len, "new_tokens": cfg.new_tokens,
                "threads": cfg.threads, "in_process": cfg.speed_in_process,
                "host": search.entries.host_key}     # another host (or, via the entry key, other code) measures again
    if e.get(speed_key, {}).get("settings") != settings:
        search.step(f"speed {row.recipe} ({row.runtime})")
        e[speed_key] = {"settings": settings, "result": search.executor.speed(search, row)}
        search.save(row)
    m = e[speed_key]["result"]
    context = cfg.prompt_len + cfg.new_tokens
    if search.lm:
        dec, pre = m["speed"]["decode_tok_s"]["median"], m["speed"]["prefill_tok_s"]["median"]
    else:
        dec, pre = None, m["examples_per_s"] * search.tokens_per_example(row.model)
    if m.get("peak_rss_bytes") and "harness_rss_bytes" not in m:
        m["harness_rss_bytes"] = harness_rss(row.runtime)
        search.save(row)
    search.calibration.add(row.runtime, stats, search.host, dec, pre, cfg.prompt_len, m.get("peak_rss_bytes"), context,
                           label=row.label, harness_bytes=m.get("harness_rss_bytes") or 0)
    search.calibration.save(search.calibration_path, search.host_id)
    row.measured = True
    row.size_bytes = stats.file_bytes
    row.peak_ram_bytes = m.get("peak_rss_bytes") or before.peak_ram_bytes
    row.prefill_tok_s, row.ttft_ms = pre, cfg.prompt_len / pre * 1e3
    if search.lm:
        row.decode_tok_s = dec
    else:
        row.examples_per_s = m["examples_per_s"]
    row.status = "measured"
    known = decode_known(search, before)
    row.host_check = {
        # an LM's decode is calibrated only by decode measurements (prefill/RAM samples do not count)
        "calibration": before.calibration if known else "none",
        "calibrated": before.calibrated and known, "decode_fit": before.decode_fit,
        "decode_predicted": before.decode_tok_s if search.lm else None, "decode_measured": dec,
        "decode_error": prediction_error(before.decode_tok_s, dec) if search.lm else None,
        "prefill_predicted": before.prefill_tok_s, "prefill_measured": pre,
        "prefill_error": prediction_error(before.prefill_tok_s, pre),
        "ram_predicted": before.peak_ram_bytes, "ram_measured": m.get("peak_rss_bytes"),
        "ram_error": prediction_error(before.peak_ram_bytes, m["peak_rss_bytes"]) if m.get("peak_rss_bytes") else None,
    }


def decode_known(search, p) -> bool:
    """Whether prediction *p* rests on calibration for what matters (decode for LMs)."""
    return p.decode_fit != "none" if search.lm else p.calibrated


def final_predictions(search) -> None:
    """Every row's device figures with the final calibration; measured host figures stay measured.

    Measured rows also get a leave-one-out host prediction: calibrated on every *other* measurement.
    """
    cfg = search.cfg
    for row in search.rows + search.references:
        if row.host_check and id(row) in search.stats:
            loo = predict(search.stats[id(row)], search.host, row.runtime, search.calibration.without(row.label),
                          cfg.prompt_len, cfg.new_tokens)
            hc = row.host_check
            hc["loo_calibration"] = loo.calibration if decode_known(search, loo) else "none"
            hc["loo_decode_fit"] = loo.decode_fit
            if search.lm:
                hc["decode_loo_predicted"] = loo.decode_tok_s
                hc["decode_loo_error"] = prediction_error(loo.decode_tok_s, hc["decode_measured"])
            hc["prefill_loo_error"] = prediction_error(loo.prefill_tok_s, hc["prefill_measured"])
            if hc.get("ram_measured"):
                hc["ram_loo_error"] = prediction_error(loo.peak_ram_bytes, hc["ram_measured"])
    for row in search.rows + search.references:
        stats = search.stats.get(id(row))
        if stats is None or row.status == "dropped":
            continue
        if not (row.measured and search.device.measured):
            row.measured = False
        search.apply_prediction(row, stats, exact=row.status == "measured")


def why(e: Exception) -> str:
    """A failure as one line: EdgeLLMErrors as they are, anything else with its type (a bug to report)."""
    if isinstance(e, (EdgeLLMError, KeyboardInterrupt)):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"
