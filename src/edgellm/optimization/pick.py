"""Pick: the Pareto frontier, the constraints and the choice, on plain result rows (dicts).

A row carries ``quality_loss`` (relative: perplexity increase, or accuracy drop, vs the base
model), ``size_bytes``, a speed (``decode_tok_s``, or ``examples_per_s`` for classifiers),
``peak_ram_bytes`` and ``ttft_ms``. The frontier is over quality × size × speed; constraints
come from the CLI flags and the device profile. When nothing meets every constraint,
``explain_infeasible`` names the binding one: the constraint that, dropped alone, would admit
the most candidates (ties: the one missed by the smallest margin), and ranks the closest
candidates by their summed relative shortfall. ``choose`` applies all of it to the search's
rows; ``same_weights_dominator`` is the search's shortcut past a runtime predicted to lose.
``settle_noise`` keeps a speed pick honest: when the pick's and the runner-up's measured decode
spreads (min..max of their runs) overlap, the two are run in paired rounds (``measure_paired``),
the faster by the median per-round ratio is picked, and the pick's confidence is reported (the
fraction of rounds it won, the median ratio and its IQR). When that IQR holds 1 the rounds did not tell
the two apart: their speed is a tie, and the next objectives decide, in ``pick``'s order. Deliberately absent: weighted scalar scores (the pick is lexicographic on a named objective, so it
can be explained).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from ..errors import EdgeLLMError

# objective name -> (key, direction); the pick sorts by the named one, then the others
OBJECTIVES = {"speed": ("speed", "max"), "size": ("size_bytes", "min"), "quality": ("quality_loss", "min")}


def speed_key(row: dict) -> str:
    return "examples_per_s" if row.get("examples_per_s") is not None and row.get("decode_tok_s") is None else "decode_tok_s"


def _value(row: dict, key: str):
    return row.get(speed_key(row)) if key == "speed" else row.get(key)


def dominates(a: dict, b: dict, keys=(("quality_loss", "min"), ("size_bytes", "min"), ("speed", "max"))) -> bool:
    """True when *a* is no worse than *b* on every objective and better on one.

    >>> dominates({"quality_loss": 0.01, "size_bytes": 1, "decode_tok_s": 9},
    ...           {"quality_loss": 0.02, "size_bytes": 1, "decode_tok_s": 9})
    True
    """
    better = False
    for key, direction in keys:
        va, vb = _value(a, key), _value(b, key)
        if va is None or vb is None:
            return False
        if direction == "max":
            va, vb = -va, -vb
        if va > vb:
            return False
        better |= va < vb
    return better


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of the rows no other row dominates (rows missing a metric are left out).

    >>> pareto_front([{"quality_loss": 0, "size_bytes": 4, "decode_tok_s": 1},
    ...               {"quality_loss": .1, "size_bytes": 1, "decode_tok_s": 5},
    ...               {"quality_loss": .2, "size_bytes": 2, "decode_tok_s": 4}])
    [0, 1]
    """
    ok = [i for i, r in enumerate(rows) if all(_value(r, k) is not None for k in ("quality_loss", "size_bytes", "speed"))]
    return [i for i in ok if not any(dominates(rows[j], rows[i]) for j in ok if j != i)]


@dataclass(frozen=True)
class Constraints:
    """Limits a pick must meet; None means no limit."""

    max_quality_loss: float | None = None
    min_speed: float | None = None          # decode tok/s (LMs) or examples/s (classifiers)
    max_ram_bytes: int | None = None
    max_size_bytes: int | None = None
    max_ttft_ms: float | None = None

    def __post_init__(self):
        for k, v in asdict(self).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise EdgeLLMError(f"constraint {k} must be a number ≥ 0 (got {v!r})", "fix the flag")

    def checks(self) -> list[tuple[str, str, str, float]]:
        """(name, row key, "max"|"min", limit) for every limit set."""
        table = [("max-quality-loss", "quality_loss", "max", self.max_quality_loss),
                 ("min-speed", "speed", "min", self.min_speed), ("max-ram", "peak_ram_bytes", "max", self.max_ram_bytes),
                 ("max-size", "size_bytes", "max", self.max_size_bytes), ("max-ttft-ms", "ttft_ms", "max", self.max_ttft_ms)]
        return [(n, k, d, v) for n, k, d, v in table if v is not None]


def shortfalls(row: dict, constraints: Constraints, missing_ok: bool = False) -> dict[str, float]:
    """Relative shortfall per violated constraint (0 < x); a missing metric counts as violated (inf)
    unless *missing_ok* (then it is not judged)."""
    out = {}
    for name, key, direction, limit in constraints.checks():
        v = _value(row, key)
        if v is None:
            if not missing_ok:
                out[name] = float("inf")
        elif direction == "max" and v > limit:
            out[name] = (v - limit) / limit if limit else float("inf")
        elif direction == "min" and v < limit:
            out[name] = (limit - v) / limit
    return {k: v for k, v in out.items() if v > 0}


def feasible(rows: list[dict], constraints: Constraints) -> list[int]:
    return [i for i, r in enumerate(rows) if not shortfalls(r, constraints)]


def pick(rows: list[dict], constraints: Constraints, objective: str = "speed") -> int | None:
    """Index of the best feasible row by *objective* (then the other objectives), or None.

    >>> rows = [{"quality_loss": .01, "size_bytes": 4, "decode_tok_s": 10},
    ...         {"quality_loss": .05, "size_bytes": 2, "decode_tok_s": 30},
    ...         {"quality_loss": .30, "size_bytes": 1, "decode_tok_s": 50}]
    >>> pick(rows, Constraints(max_quality_loss=0.1))
    1
    """
    if objective not in OBJECTIVES:
        raise EdgeLLMError(f"unknown objective '{objective}'", f"use one of: {', '.join(OBJECTIVES)}")
    order = [objective] + [o for o in OBJECTIVES if o != objective]

    def sort_key(i):
        key = []
        for o in order:
            k, direction = OBJECTIVES[o]
            v = _value(rows[i], k)
            key.append(-v if direction == "max" else v)
        return key

    ranked = [i for i in feasible(rows, constraints)
              if all(_value(rows[i], OBJECTIVES[o][0]) is not None for o in OBJECTIVES)]
    return min(ranked, key=sort_key) if ranked else None


def explain_infeasible(rows: list[dict], constraints: Constraints, n_closest: int = 3, missing_ok: bool = False) -> dict:
    """Why nothing fits: the binding constraint, how many each one rules out, and the closest rows.

    >>> e = explain_infeasible([{"quality_loss": .2, "size_bytes": 1, "decode_tok_s": 5}],
    ...                        Constraints(max_quality_loss=.1))
    >>> e["binding"], e["closest"]
    ('max-quality-loss', [0])
    """
    falls = [shortfalls(r, constraints, missing_ok) for r in rows]
    per = {}
    for name, _, _, limit in constraints.checks():
        alone = [i for i, f in enumerate(falls) if set(f) == {name}]
        failing = [i for i, f in enumerate(falls) if name in f]
        margin = min((falls[i][name] for i in failing), default=0.0)
        per[name] = {"limit": limit, "fail": len(failing), "only_this_fails": len(alone), "smallest_shortfall": margin}
    binding = max(per, key=lambda n: (per[n]["only_this_fails"], per[n]["fail"], -per[n]["smallest_shortfall"]),
                  default=None)
    total = [sum(min(v, 1e6) for v in f.values()) for f in falls]
    closest = sorted(range(len(rows)), key=lambda i: (len(falls[i]), total[i]))[:n_closest]
    return {"binding": binding, "constraints": per, "closest": closest, "shortfalls": [falls[i] for i in closest]}


def same_weights_dominator(row, rows: list, margin: float):
    """Another live row with the same model and recipe (the same weights, on another runtime) whose predicted
    decode speed is at least *margin* × this row's and whose size is no larger; else None.

    Same weights means the same quality up to the runtime's arithmetic, so such a row can only lose the
    pick: evaluating it would spend the time budget on a candidate that cannot win.

    >>> from types import SimpleNamespace as R
    >>> a = R(model="m", recipe="w8", status="screened", predicted={"decode_tok_s": 20, "size_bytes": 2}, size_bytes=2)
    >>> b = R(model="m", recipe="w8", status="screened", predicted={"decode_tok_s": 90, "size_bytes": 1}, size_bytes=1)
    >>> same_weights_dominator(a, [a, b], 1.25) is b
    True
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


def eligible(row, device_measured: bool) -> bool:
    """A row may be picked once its quality passed the full protocol and its speed is known:
    measured on the host, or (other devices) predicted from a calibrated cost model.

    >>> from types import SimpleNamespace as R
    >>> eligible(R(quality={"protocol": "full"}, status="measured", predicted={}), device_measured=True)
    True
    """
    if row.quality.get("protocol") != "full" or row.status not in ("measured", "evaluated"):
        return False
    if device_measured:
        return row.status == "measured"
    return bool(row.predicted.get("calibrated"))


def choose(rows: list, constraints: Constraints, objective: str, device_measured: bool):
    """Mark the Pareto rows and the chosen one among the eligible *rows*; returns (chosen row or None, explanation).

    The explanation (None when a row is chosen) names the binding constraint and the closest candidates:
    among the eligible rows; else those with a quality figure; else every row (the predictions that
    dropped everything).

    >>> from types import SimpleNamespace as R
    >>> r = R(quality={"protocol": "full"}, status="measured", predicted={}, pareto=False, chosen=False,
    ...       to_dict=lambda: {"quality_loss": 0.0, "size_bytes": 1, "decode_tok_s": 5.0})
    >>> choose([r], Constraints(max_quality_loss=0.1), "speed", True)[0] is r, r.pareto, r.chosen
    (True, True, True)
    """
    pool = [r for r in rows if eligible(r, device_measured)]
    dicts = [r.to_dict() for r in pool]
    for i in pareto_front(dicts):
        pool[i].pareto = True
    best = pick(dicts, constraints, objective)
    if best is not None:
        pool[best].chosen = True
        return pool[best], None
    cands = pool or [r for r in rows if r.status != "dropped" and r.quality_loss is not None] or rows
    e = explain_infeasible([r.to_dict() for r in cands], constraints, missing_ok=not pool)
    return None, {"binding": e["binding"], "constraints": e["constraints"],
                  "closest": [dict(cands[i].to_dict(), shortfalls=f) for i, f in zip(e["closest"], e["shortfalls"])]}


def spreads_overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two measured (low, high) ranges overlap; unknown ranges do not.

    >>> spreads_overlap((9.0, 11.0), (10.5, 12.0)), spreads_overlap((9.0, 10.0), (10.5, 12.0))
    (True, False)
    """
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def settle_noise(rows: list, chosen, constraints: Constraints, objective: str, spreads: dict, open_row,
                 rounds: int = 10, prompt_len: int = 128, new_tokens: int = 128):
    """Decide a speed pick that noise could have made: returns (the pick, its confidence dict).

    *spreads* maps a row's label to its measured (min, max) decode tok/s; *open_row(row)* opens its runtime.
    When the chosen row's spread overlaps the runner-up's (the best other eligible feasible row), both run
    *rounds* paired rounds; the runner-up becomes the pick when its median per-round ratio is above 1, or,
    when the interquartile range of the per-round ratios holds 1 (a tie within the noise), when it is
    better on the objectives after speed (size, then quality: ``pick``'s order).

    >>> pick_row, conf = settle_noise(rows, chosen, Constraints(), "speed", spreads, open_row)   # doctest: +SKIP
    >>> conf["decided_by"], conf["pick_won"]                                                     # doctest: +SKIP
    ('paired rounds', 0.8)
    """
    if objective != "speed":
        return chosen, {"contested": False, "decided_by": f"objective {objective} (speed only breaks ties)"}
    pool = [r for r in rows if r is not chosen and eligible(r, True)]
    j = pick([r.to_dict() for r in pool], constraints, objective)
    if j is None:
        return chosen, {"contested": False, "decided_by": "the only feasible candidate"}
    other = pool[j]
    mine, theirs = spreads.get(chosen.label), spreads.get(other.label)
    conf = {"runner_up": other.label, "spreads": {chosen.label: mine, other.label: theirs}}
    if not spreads_overlap(mine, theirs):
        return chosen, dict(conf, contested=False, decided_by="medians (the measured spreads do not overlap)"
                            if mine and theirs else "medians (no measured spread)")
    from ..measure import measure_paired

    rts = {}
    try:
        rts = {chosen.label: open_row(chosen), other.label: open_row(other)}
        res = measure_paired(rts, rounds=rounds, prompt_len=prompt_len, new_tokens=new_tokens)
    finally:
        for rt in rts.values():
            if hasattr(rt, "close"):
                rt.close()
    ratios = res["ratios"][other.label]["decode"]["per_round"]           # runner-up / chosen, per round
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    tie = q[0] <= 1 <= q[2]
    if tie:                                                               # speed cannot separate them: the next objectives do
        pair = [chosen.to_dict(), other.to_dict()]
        for d in pair:
            d[speed_key(d)] = 0.0
        switched = pick(pair, Constraints(), objective) == 1
    else:
        switched = statistics.median(ratios) > 1
    if switched:
        chosen.chosen, other.chosen = False, True
        chosen, other = other, chosen
    won = [r if switched else 1 / r for r in ratios]                      # the pick / the other, per round
    q = statistics.quantiles(won, n=4) if len(won) > 1 else [won[0]] * 3
    decided = "paired rounds: a tie within the noise, decided by size then quality" if tie else "paired rounds"
    return chosen, dict(conf, contested=True, decided_by=decided, tie=tie, rounds=len(won), switched=switched,
                        pick_won=sum(w > 1 for w in won) / len(won), median_ratio=statistics.median(won),
                        iqr=[q[0], q[2]], runner_up=other.label)
