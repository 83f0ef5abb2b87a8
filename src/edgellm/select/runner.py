"""The candidate loop behind ``optimize``: plan, predict, build, screen, evaluate, measure (see optimize.py).

``Search.run()`` fills ``Search.rows`` (one ``Row`` per model × recipe × runtime) and the cost
model's host calibration; ``select.finish`` then picks, exports and reports. Every stage reads
and writes the result cache first, so a second run of the same search only does what the first
one did not finish. Deliberately absent: threads or processes running candidates side by side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..devices.costmodel import Calibration, ModelStats, predict, prediction_error
from ..devices.detect import detect_host
from ..devices.profiles import get_profile
from ..devices.stats import estimate_stats, recipe_kind
from ..errors import EdgeLLMError
from ..optimize import SEARCH_RUNTIMES, Budget, OptimizeConfig, Row
from .deploy import exact_stats, llamacpp_quality, onnx_quality, row_speed
from .pareto import Constraints, shortfalls
from .search import (ResultCache, build_candidate, cls_quality, correct_flags, default_recipes, gguf_type_for, lm_quality,
                     model_fingerprint, onnx_variant_for, recipe_hash, window_nlls)


@dataclass
class Base:
    spec: str
    fingerprint: str
    loaded: object
    data: list           # LM windows or classification rows
    reference: list      # base per-window NLLs, or per-row correctness
    screen: int          # windows / rows in the screen
    tokens_per_example: float | None = None   # classifiers: mean tokens of a row (speed conversions)


class Search:
    def __init__(self, config: OptimizeConfig, progress: bool = True):
        from ..models import cache_dir
        from ..recipe import Recipe, load_recipe

        self.cfg = config
        torch.set_num_threads(config.threads)
        self.device = get_profile(config.device, threads=config.threads)
        self.host = self.device if self.device.name == "host" else detect_host(threads=config.threads)
        usable = [r for r in SEARCH_RUNTIMES[config.task] if r in self.device.runtimes and r in self.host.runtimes]
        if config.runtimes:
            unknown = [r for r in config.runtimes if r not in SEARCH_RUNTIMES[config.task]]
            if unknown:
                raise EdgeLLMError(f"runtime(s) {', '.join(unknown)} cannot be searched for {config.task}",
                                   f"use some of: {', '.join(SEARCH_RUNTIMES[config.task])}")
            usable = [r for r in usable if r in config.runtimes]
        if not usable:
            raise EdgeLLMError(f"device '{self.device.name}' runs {', '.join(self.device.runtimes)}, and none of them "
                               f"can be measured for {config.task} on this host ({', '.join(self.host.runtimes)})",
                               "install the runtime's extra (e.g. edgellm[llamacpp]) or pick another --device")
        self.runtimes = usable
        paths = [Path(p) for p in config.recipes] or default_recipes(config.task)
        recipes = [load_recipe(p) for p in paths]
        if not any(r.is_identity for r in recipes):
            recipes.insert(0, Recipe(name="fp32", description="the base model, uncompressed (reference)"))
        names = [r.name for r in recipes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise EdgeLLMError(f"recipe name(s) {', '.join(dup)} given twice", "give each recipe a distinct name")
        self.recipes = recipes
        mql = config.max_quality_loss if config.max_quality_loss is not None else self.device.max_quality_loss
        self.constraints = Constraints(
            max_quality_loss=0.10 if mql is None else mql,
            min_speed=config.min_decode_tok_s if config.min_decode_tok_s is not None else self.device.min_decode_tok_s,
            max_ram_bytes=config.max_ram if config.max_ram is not None else self.device.ram_bytes_for_model,
            max_size_bytes=self.device.storage_bytes,
            max_ttft_ms=config.max_ttft_ms if config.max_ttft_ms is not None else self.device.max_ttft_ms)
        self.cache = ResultCache(config.cache or cache_dir() / "optimize")
        # host measurements of earlier runs calibrate this one; a candidate is never calibrated on itself
        self.host_id = {"cpu": self.host.details.get("cpu_model"), "threads": config.threads,
                        "torch": self.host.details.get("torch")}
        self.calibration_path = self.cache.root / f"host-calibration-{config.task}.json"
        self.calibration = Calibration.load(self.calibration_path, self.host_id)
        self.budget = Budget(config.budget_minutes)
        self.rows: list[Row] = []
        self.bases: dict[str, Base] = {}
        self.entries: dict[tuple[str, str], dict] = {}
        self.stats: dict[int, ModelStats] = {}
        self.progress = progress
        self.bar = None
        self.timings: dict[tuple[str, str], list[float]] = {}
        self.step_seconds: list[tuple[str, float]] = []       # (step, seconds) in order, for the report
        self._last_step: tuple[str, float] | None = None

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def lm(self) -> bool:
        return self.cfg.task == "text-generation"

    def protocol(self) -> dict:
        c = self.cfg
        if self.lm:
            return {"task": c.task, "ctx": c.ctx, "full_tokens": c.full_tokens, "text": c.eval_text or "wiki.test"}
        return {"task": c.task, "tsv": c.tsv or "sst-2 dev", "max_rows": c.max_rows}

    def key(self, row_or_spec, recipe=None) -> tuple[str, str]:
        if isinstance(row_or_spec, Row):
            spec, recipe = row_or_spec.model, self._recipe(row_or_spec.recipe)
        else:
            spec = row_or_spec
        return self.bases[spec].fingerprint, recipe_hash(recipe, self.protocol())

    def _recipe(self, name: str):
        return next(r for r in self.recipes if r.name == name)

    def entry(self, row_or_spec, recipe=None) -> dict:
        k = self.key(row_or_spec, recipe)
        if k not in self.entries:
            self.entries[k] = self.cache.get(*k)
        return self.entries[k]

    def save(self, row_or_spec, recipe=None) -> None:
        k = self.key(row_or_spec, recipe)
        self.cache.put(*k, self.entries[k])

    def step(self, text: str) -> None:
        now = time.monotonic()
        if self._last_step is not None:
            self.step_seconds.append((self._last_step[0], round(now - self._last_step[1], 2)))
        self._last_step = (text, now)
        if self.bar is not None:
            self.bar.set_description_str(text[:60])
            self.bar.update(1)

    # -- the search --------------------------------------------------------------------------------
    def run(self) -> "Search":
        n_units = len(self.cfg.models) * (1 + len(self.recipes) * (2 + 3 * len(self.runtimes)))
        self.bar = tqdm(total=n_units, unit="step", disable=not self.progress, leave=False)
        try:
            for spec in self.cfg.models:
                self._base(spec)
            self._plan()
            self._build_and_screen()
            self._full()
            self._measure()
            self._final_predictions()
            self.step("pick, export and report")
        finally:
            self.bar.close()
        return self

    def _base(self, spec: str) -> None:
        from ..data import SST2, WIKI_TEST, data_file, read_tsv, tokenize_file
        from ..evaluation.perplexity import windows
        from ..models import load
        from ..runtimes.torch import TorchRuntime

        fp = model_fingerprint(spec)
        loaded = load(spec, **({"task": "classification"} if not self.lm else {}))
        if self.lm:
            if "CausalLM" not in type(loaded.model).__name__:
                raise EdgeLLMError(f"'{spec}' is not a causal LM ({type(loaded.model).__name__})",
                                   "use --task classification for classifiers")
            ids = tokenize_file(loaded.tokenizer, self.cfg.eval_text or data_file(WIKI_TEST), max_tokens=self.cfg.full_tokens)
            data = windows(ids, self.cfg.ctx, self.cfg.full_tokens)
            screen = max(1, min(len(data), math.ceil(self.cfg.screen_tokens / self.cfg.ctx)))
        else:
            data = read_tsv(self.cfg.tsv or data_file(SST2.format(split="dev")), limit=self.cfg.max_rows)
            screen = min(len(data), self.cfg.screen_rows)
        base = Base(spec, fp, loaded, data, [], screen)
        self.bases[spec] = base
        ident = next(r for r in self.recipes if r.is_identity)
        e = self.entry(spec, ident)
        ref_key = "nlls" if self.lm else "flags"
        if len(e.get(ref_key, [])) < len(data):
            self.step(f"reference quality of {Path(spec).name}")
            rt = TorchRuntime(loaded, device="cpu", threads=self.cfg.threads)
            e[ref_key] = window_nlls(rt, data) if self.lm else correct_flags(rt, data)
            self.save(spec, ident)
        base.reference = e[ref_key]
        first = self.bases[self.cfg.models[0]]
        if first is not base:
            # model selection: every model is judged against the FIRST model's fp32 quality, on the same tokens
            if self.lm and [w.tolist() for w in first.data] != [w.tolist() for w in data]:
                raise EdgeLLMError(f"'{spec}' and '{first.spec}' tokenize the evaluation text differently, so their "
                                   "perplexities are not comparable", "compare models that share a tokenizer")
            base.reference = first.reference

    def _plan(self) -> None:
        for spec in self.cfg.models:
            base = self.bases[spec].loaded
            for recipe in self.recipes:
                for rt in self.runtimes:
                    row = Row(model=spec, recipe=recipe.name, runtime=rt, kind=recipe_kind(recipe))
                    self.rows.append(row)
                    try:
                        if rt == "llama.cpp":
                            row.kind = gguf_type_for(recipe)
                        elif rt == "onnxruntime":
                            row.kind = onnx_variant_for(recipe)
                        est = estimate_stats(base.model, recipe, rt)
                    except EdgeLLMError as e:
                        row.status, row.reason = "dropped", str(e)
                        continue
                    self.stats[id(row)] = est
                    self._apply_prediction(row, est, exact=False)
                    optimistic = dict(row.to_dict(), quality_loss=0.0)
                    fails = shortfalls(optimistic, self.constraints)
                    if fails:
                        row.status = "dropped"
                        row.reason = "predicted to miss " + ", ".join(sorted(fails)) + (
                            "" if row.predicted["calibrated"] else " even at the best case (uncalibrated bound)")

    def _apply_prediction(self, row: Row, stats: ModelStats, exact: bool) -> None:
        p = predict(stats, self.device, row.runtime, self.calibration, self.cfg.prompt_len, self.cfg.new_tokens)
        row.predicted = dict(p.to_dict(), exact_stats=exact)
        if not row.measured:
            row.size_bytes, row.peak_ram_bytes, row.ttft_ms = p.size_bytes, p.peak_ram_bytes, p.ttft_ms
            row.prefill_tok_s = p.prefill_tok_s
            if self.lm:
                row.decode_tok_s = p.decode_tok_s
            else:
                row.examples_per_s = p.prefill_tok_s / self._tokens_per_example(row.model)

    def _tokens_per_example(self, spec: str) -> float:
        base = self.bases[spec]
        if base.tokens_per_example is None:
            tok, sample = base.loaded.tokenizer, base.data[:64]
            base.tokens_per_example = sum(len(tok(r.text, truncation=True, max_length=128)["input_ids"])
                                          for r in sample) / len(sample)
        return base.tokens_per_example

    def live(self, status=("planned",)):
        return [r for r in self.rows if r.status in status]

    # -- build + screen ------------------------------------------------------------------------------
    def _build_and_screen(self) -> None:
        for spec in self.cfg.models:
            for recipe in self.recipes:
                rows = [r for r in self.live() if r.model == spec and r.recipe == recipe.name]
                if not rows:
                    continue
                if not self.budget.fits():
                    self._skip(rows, "time budget spent before building")
                    continue
                try:
                    folder = self._built_folder(spec, recipe)
                    res = self._torch_quality(spec, recipe, folder, full=False)
                except Exception as e:  # one candidate's failure (a bad input or a crash) must not end the search
                    for r in rows:
                        r.status, r.reason = "failed", _why(e)
                    continue
                for r in rows:
                    r.build = dict(self.entry(spec, recipe).get("build", {}))
                    r.artifact = str(folder)
                    r.quality = {k: v for k, v in res.items() if k not in ("nlls", "flags")} | {"protocol": "screen"}
                    r.quality_loss = res["quality_loss"]
                    if res["early_rejected"] or res["quality_loss"] > self.constraints.max_quality_loss * 1.5:
                        r.status = "rejected"
                        r.reason = (f"screen: quality loss {100 * res['quality_loss']:+.1f}% on "
                                    f"{res.get('n_tokens', res.get('n_rows'))} {'tokens' if self.lm else 'rows'}"
                                    + (" (stopped early)" if res["early_rejected"] else ""))
                    else:
                        r.status = "screened"

    def _built_folder(self, spec: str, recipe) -> Path:
        folder = self.cache.folder(*self.key(spec, recipe)) / "model"
        e = self.entry(spec, recipe)
        if recipe.is_identity:
            return Path(spec)
        if not e.get("build") or not (folder / "config.json").exists():
            self.step(f"build {recipe.name}")
            e["build"] = build_candidate(spec, recipe, folder, self.cfg.task, self.cfg.threads)
            self.save(spec, recipe)
        return folder

    def _torch_quality(self, spec: str, recipe, folder: Path, full: bool) -> dict:
        from ..models import load
        from ..runtimes.torch import TorchRuntime

        base, e = self.bases[spec], self.entry(spec, recipe)
        key = "nlls" if self.lm else "flags"
        need = len(base.data) if full else base.screen
        if len(e.get(key, [])) < need and not e.get("rejected_at"):
            self.step(f"{'full' if full else 'screen'} {recipe.name} (torch)")
            loaded = base.loaded if recipe.is_identity else load(str(folder), **({"task": "classification"} if not self.lm else {}))
            rt = TorchRuntime(loaded, device="cpu", threads=self.cfg.threads)
            res = self._quality(rt, base, e.get(key), full)
            e[key] = res[key]
            if res["early_rejected"]:
                e["rejected_at"] = len(res[key])
            self.save(spec, recipe)
        return self._quality(None, base, e[key], full=len(e[key]) >= len(base.data), early=bool(e.get("rejected_at")))

    def _quality(self, rt, base: Base, done, full: bool, early: bool = False) -> dict:
        mql, rf = self.constraints.max_quality_loss, self.cfg.reject_factor
        tick = (lambda: None)
        if self.lm:
            res = lm_quality(rt, base.data if rt else base.data[: len(done)], base.reference, mql, base.screen, rf,
                             done=done, full=full if rt else True, progress=tick)
        else:
            res = cls_quality(rt, base.data if rt else base.data[: len(done)], base.reference, mql, base.screen, rf,
                              done=done, full=full if rt else True, progress=tick)
        res["early_rejected"] = res["early_rejected"] or early
        return res

    # -- full protocol ------------------------------------------------------------------------------
    def _full(self) -> None:
        # the base first (it calibrates), then the device's deployment runtimes before PyTorch eager (the same
        # weights on llama.cpp are smaller and faster on every host measured), each by the objective: a tight
        # budget skips the tail
        rows = self.live(("screened",))
        others_exist = any(r.runtime != "torch" for r in rows)
        rows.sort(key=lambda r: (not self.is_base(r), others_exist and r.runtime == "torch", self._predicted_rank(r)))
        for row in rows:
            if row.status == "skipped":
                continue
            better = same_weights_dominator(row, rows, self.cfg.dominance_margin)
            if better is not None and not self.is_base(row):
                row.status = "skipped"
                row.reason = (f"same weights as {better.label}, which is predicted ≥ {self.cfg.dominance_margin:g}× "
                              "faster and no larger: not evaluated")
                continue
            recipe = self._recipe(row.recipe)
            if not self.budget.fits(self._estimate("full", row)):
                self._skip([row], "time budget: no time for the full protocol")
                continue
            t0 = time.monotonic()
            try:
                if row.runtime == "torch":
                    res = self._torch_quality(row.model, recipe, Path(row.artifact), full=True)
                elif row.runtime == "onnxruntime":
                    res = onnx_quality(self, row, recipe)
                else:
                    res = llamacpp_quality(self, row, recipe)
            except Exception as e:  # noqa: BLE001 — recorded in the report, the search goes on
                row.status, row.reason = "failed", _why(e)
                continue
            self._timing("full", row, time.monotonic() - t0)
            row.quality = {k: v for k, v in res.items() if k not in ("nlls", "flags")} | {"protocol": "full"}
            row.quality_loss = res["quality_loss"]
            if res["quality_loss"] > self.constraints.max_quality_loss:
                row.status, row.reason = "evaluated", f"quality loss {100 * res['quality_loss']:+.2f}% is over budget"
            else:
                row.status = "evaluated"

    # -- speed --------------------------------------------------------------------------------------
    def _measure(self) -> None:
        ok = [r for r in self.live(("evaluated",)) if r.quality_loss is not None
              and r.quality_loss <= self.constraints.max_quality_loss]
        base_rows = [r for r in ok if self.is_base(r)]
        others = sorted((r for r in ok if r not in base_rows), key=self._predicted_rank)
        finalists = base_rows + others[: self.cfg.max_finalists]
        for r in others[self.cfg.max_finalists:]:
            r.reason = f"not among the {self.cfg.max_finalists} best predicted finalists (speed not measured)"
        for row in finalists:
            if not self.budget.fits(self._estimate("speed", row)):
                self._skip([row], "time budget: speed not measured")
                continue
            t0 = time.monotonic()
            try:
                self._measure_row(row)
            except Exception as e:  # noqa: BLE001
                row.status, row.reason = "failed", f"speed measurement: {_why(e)}"
                continue
            self._timing("speed", row, time.monotonic() - t0)

    def is_base(self, row: Row) -> bool:
        """The unmodified model on PyTorch: the reference every candidate is judged and calibrated against."""
        return self._recipe(row.recipe).is_identity and row.runtime == "torch"

    def _predicted_rank(self, row: Row):
        from .pareto import OBJECTIVES, _value

        key, direction = OBJECTIVES[self.cfg.objective]
        v = _value(row.to_dict(), key) or 0.0
        return -v if direction == "max" else v

    def _measure_row(self, row: Row) -> None:
        e = self.entry(row)
        stats = exact_stats(self, row)
        self.stats[id(row)] = stats
        before = predict(stats, self.host, row.runtime, self.calibration.without(row.label), self.cfg.prompt_len,
                         self.cfg.new_tokens)
        speed_key = f"speed_{row.runtime}"
        settings = {"runs": self.cfg.speed_runs, "prompt_len": self.cfg.prompt_len, "new_tokens": self.cfg.new_tokens,
                    "threads": self.cfg.threads, "in_process": self.cfg.speed_in_process}
        if e.get(speed_key, {}).get("settings") != settings:
            self.step(f"speed {row.recipe} ({row.runtime})")
            e[speed_key] = {"settings": settings, "result": row_speed(self, row)}
            self.save(row)
        m = e[speed_key]["result"]
        context = self.cfg.prompt_len + self.cfg.new_tokens
        if self.lm:
            dec, pre = m["speed"]["decode_tok_s"]["median"], m["speed"]["prefill_tok_s"]["median"]
        else:
            dec, pre = None, m["examples_per_s"] * self._tokens_per_example(row.model)
        if m.get("peak_rss_bytes") and "harness_rss_bytes" not in m:
            from .speed import harness_rss

            m["harness_rss_bytes"] = harness_rss(row.runtime)
            self.save(row)
        self.calibration.add(row.runtime, stats, self.host, dec, pre, self.cfg.prompt_len, m.get("peak_rss_bytes"), context,
                             label=row.label, harness_bytes=m.get("harness_rss_bytes") or 0)
        self.calibration.save(self.calibration_path, self.host_id)
        row.measured = True
        row.size_bytes = stats.file_bytes
        row.peak_ram_bytes = m.get("peak_rss_bytes") or before.peak_ram_bytes
        row.prefill_tok_s, row.ttft_ms = pre, self.cfg.prompt_len / pre * 1e3
        if self.lm:
            row.decode_tok_s = dec
        else:
            row.examples_per_s = m["examples_per_s"]
        row.status = "measured"
        row.host_check = {
            # an LM's decode is calibrated only by decode measurements (prefill/RAM samples do not count)
            "calibration": before.calibration if self._decode_known(before) else "none",
            "calibrated": before.calibrated and self._decode_known(before), "decode_fit": before.decode_fit,
            "decode_predicted": before.decode_tok_s if self.lm else None, "decode_measured": dec,
            "decode_error": prediction_error(before.decode_tok_s, dec) if self.lm else None,
            "prefill_predicted": before.prefill_tok_s, "prefill_measured": pre,
            "prefill_error": prediction_error(before.prefill_tok_s, pre),
            "ram_predicted": before.peak_ram_bytes, "ram_measured": m.get("peak_rss_bytes"),
            "ram_error": prediction_error(before.peak_ram_bytes, m["peak_rss_bytes"]) if m.get("peak_rss_bytes") else None,
        }

    def _decode_known(self, p) -> bool:
        return p.decode_fit != "none" if self.lm else p.calibrated

    def _final_predictions(self) -> None:
        """Every row's device figures with the final calibration; measured host figures stay measured.

        Measured rows also get a leave-one-out host prediction: calibrated on every *other* measurement.
        """
        for row in self.rows:
            if row.host_check and id(row) in self.stats:
                loo = predict(self.stats[id(row)], self.host, row.runtime, self.calibration.without(row.label),
                              self.cfg.prompt_len, self.cfg.new_tokens)
                hc = row.host_check
                hc["loo_calibration"] = loo.calibration if self._decode_known(loo) else "none"
                hc["loo_decode_fit"] = loo.decode_fit
                if self.lm:
                    hc["decode_loo_predicted"] = loo.decode_tok_s
                    hc["decode_loo_error"] = prediction_error(loo.decode_tok_s, hc["decode_measured"])
                hc["prefill_loo_error"] = prediction_error(loo.prefill_tok_s, hc["prefill_measured"])
                if hc.get("ram_measured"):
                    hc["ram_loo_error"] = prediction_error(loo.peak_ram_bytes, hc["ram_measured"])
        for row in self.rows:
            stats = self.stats.get(id(row))
            if stats is None or row.status == "dropped":
                continue
            measured = row.measured and self.device.measured
            if not measured:
                row.measured = False
            self._apply_prediction(row, stats, exact=id(row) in self.stats and row.status == "measured")

    # -- budget bookkeeping ---------------------------------------------------------------------------
    def _timing(self, stage: str, row: Row, seconds: float) -> None:
        self.timings.setdefault((stage, row.runtime), []).append(seconds)

    def _estimate(self, stage: str, row: Row) -> float:
        """Seconds the same stage took on the same runtime so far (0 before the first)."""
        seen = self.timings.get((stage, row.runtime))
        return sum(seen) / len(seen) if seen else 0.0

    def _skip(self, rows: list[Row], why: str) -> None:
        for r in rows:
            r.status, r.reason = "skipped", why
            self.budget.skip(f"{r.label}: {why}")


def same_weights_dominator(row: Row, rows: list[Row], margin: float) -> Row | None:
    """Another live row with the same model and recipe (the same weights, on another runtime) whose predicted
    decode speed is at least *margin* × this row's and whose size is no larger; else None.

    Same weights means the same quality up to the runtime's arithmetic, so such a row can only lose the
    pick: evaluating it would spend the time budget on a candidate that cannot win.
    """
    def dec(r):
        return (r.predicted or {}).get("decode_tok_s") or 0.0

    def size(r):
        return (r.predicted or {}).get("size_bytes") or r.size_bytes or float("inf")

    best = None
    for other in rows:
        if other is row or other.status == "skipped" or (other.model, other.recipe) != (row.model, row.recipe):
            continue
        if dec(row) > 0 and dec(other) >= margin * dec(row) and size(other) <= size(row):
            if best is None or dec(other) > dec(best):
                best = other
    return best


def _why(e: Exception) -> str:
    """A failure as one line: EdgeLLMErrors as they are, anything else with its type (a bug to report)."""
    if isinstance(e, (EdgeLLMError, KeyboardInterrupt)):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"
