"""Pareto frontier, constraints, the pick, and the binding-constraint explanation, on fixture rows."""

from __future__ import annotations

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.optimization.pick import Constraints, dominates, explain_infeasible, feasible, pareto_front, pick, shortfalls

MiB = 2**20
ROWS = [  # quality_loss, size, decode tok/s, peak RAM
    {"label": "fp32", "quality_loss": 0.0, "size_bytes": 540 * MiB, "decode_tok_s": 12, "peak_ram_bytes": 900 * MiB},
    {"label": "w8", "quality_loss": 0.002, "size_bytes": 150 * MiB, "decode_tok_s": 60, "peak_ram_bytes": 300 * MiB},
    {"label": "w4", "quality_loss": 0.06, "size_bytes": 90 * MiB, "decode_tok_s": 85, "peak_ram_bytes": 250 * MiB},
    {"label": "w4-bad", "quality_loss": 0.30, "size_bytes": 90 * MiB, "decode_tok_s": 80, "peak_ram_bytes": 250 * MiB},
    {"label": "sparse", "quality_loss": 0.40, "size_bytes": 300 * MiB, "decode_tok_s": 11, "peak_ram_bytes": 900 * MiB},
    {"label": "unmeasured", "quality_loss": 0.01, "size_bytes": 100 * MiB, "decode_tok_s": None},
]


def labels(idx):
    return [ROWS[i]["label"] for i in idx]


def test_front_is_the_non_dominated_set():
    assert labels(pareto_front(ROWS)) == ["fp32", "w8", "w4"]
    assert dominates(ROWS[2], ROWS[3]) and not dominates(ROWS[3], ROWS[2])
    assert not dominates(ROWS[0], ROWS[1]) and not dominates(ROWS[1], ROWS[0])
    # brute force: nothing on the front is dominated, everything off it (with metrics) is
    front = set(pareto_front(ROWS))
    for i, r in enumerate(ROWS[:5]):
        dominated = any(dominates(o, r) for j, o in enumerate(ROWS[:5]) if j != i)
        assert dominated == (i not in front)


@pytest.mark.parametrize("constraints, objective, expected", [
    (Constraints(max_quality_loss=0.10), "speed", "w4"),
    (Constraints(max_quality_loss=0.01), "speed", "w8"),
    (Constraints(max_quality_loss=0.10), "size", "w4"),
    (Constraints(max_quality_loss=0.10), "quality", "fp32"),
    (Constraints(max_quality_loss=0.10, max_ram_bytes=280 * MiB), "quality", "w4"),
    (Constraints(max_quality_loss=0.5, min_speed=70), "quality", "w4"),
])
def test_pick_meets_constraints_then_the_objective(constraints, objective, expected):
    assert ROWS[pick(ROWS, constraints, objective)]["label"] == expected


def test_missing_metric_is_never_feasible():
    assert 5 not in feasible(ROWS, Constraints(max_quality_loss=0.1, min_speed=1))
    assert shortfalls(ROWS[5], Constraints(min_speed=1)) == {"min-speed": float("inf")}


def test_infeasible_names_the_binding_constraint_and_the_closest():
    c = Constraints(max_quality_loss=0.05, min_speed=80)
    assert pick(ROWS, c) is None
    e = explain_infeasible(ROWS[:5], c)
    # fp32 and w8 miss only the speed, w4 and w4-bad only the quality, sparse both: a tie on counts,
    # broken by the smallest miss (w4: 20% over the quality budget; w8: 25% short of the speed)
    assert e["constraints"]["min-speed"]["only_this_fails"] == 2 == e["constraints"]["max-quality-loss"]["only_this_fails"]
    assert e["constraints"]["min-speed"]["fail"] == 3 and e["constraints"]["max-quality-loss"]["fail"] == 3
    assert e["constraints"]["min-speed"]["smallest_shortfall"] == pytest.approx((80 - 60) / 80)
    assert e["constraints"]["max-quality-loss"]["smallest_shortfall"] == pytest.approx(0.2)
    assert e["binding"] == "max-quality-loss"
    e2 = explain_infeasible(ROWS[:5], Constraints(max_quality_loss=0.05, min_speed=61))
    assert e2["binding"] == "min-speed"          # now w8 misses by 1.6%: the speed limit binds
    assert labels(e["closest"][:2]) == ["w4", "w8"]      # 20% short on quality vs 25% short on speed


def test_single_binding_constraint():
    e = explain_infeasible(ROWS[:5], Constraints(max_ram_bytes=100 * MiB))
    assert e["binding"] == "max-ram" and e["constraints"]["max-ram"]["fail"] == 5
    assert labels(e["closest"][:1]) == ["w4"]


def test_bad_inputs():
    with pytest.raises(EdgeLLMError, match="max_quality_loss"):
        Constraints(max_quality_loss=-1)
    with pytest.raises(EdgeLLMError, match="objective"):
        pick(ROWS, Constraints(), "beauty")
