"""bench/ray_scaling.py's arithmetic on a synthetic Ray run: stage times and the N-node projection."""

from __future__ import annotations

import pytest

from bench.ray_scaling import projection, stages


def _task(name, kind, start, end):
    return {"task": name, "kind": kind, "lane": "h:1", "start": start, "end": end, "attempts": 1}


RUN = {"threads": 1, "steps": [["reference quality of m", 4.0], ["ray: build, screen and full protocol", 60.0],
                               ["speed a (torch)", 3.2], ["pick, export and report", 6.0]],
       "executor": {"executor": "ray", "cluster": {"cpus": 2.0},
                    "tasks": [_task("screen a [m]", "screen", 0, 10), _task("full a (torch) [m]", "full", 10, 30),
                              _task("full a (llama.cpp) [m]", "full", 10, 40), _task("screen b [m]", "screen", 0, 5),
                              _task("full b (torch) [m]", "full", 5, 10), _task("speed a (torch) [m]", "speed", 40, 43),
                              _task("speed b (torch) [m]", "speed", 43, 46)]}}


def test_stages_count_tasks_once():
    assert stages(RUN) == {"driver": 10.0, "build+screen": 15.0, "export+full": 55.0, "speed": 6.0}


def test_projection_is_work_over_slots_or_the_critical_path_plus_the_serial_stage():
    rows, basis = projection(RUN)
    assert basis == {"units_measured": 2, "mean_unit_work_s": 35.0, "critical_path_s": 40.0, "slots_per_node": 2,
                     "speed_per_unit_s": 3.0, "driver_per_model_s": 10.0}
    by = {r["nodes"]: r for r in rows}
    # 75 units x 35 s of work on 2 slots; the serial part: 75 units x 3 s of speed per unit + 5 models x 10 s driver
    assert by[1]["projected wall (min)"] == pytest.approx(round((75 * 35 / 2 + 75 * 3 + 50) / 60, 1))
    assert by[64]["parallel phase (min)"] == pytest.approx(round(40 / 60, 1))      # bound by the critical path
    assert by[64]["projected wall (min)"] == pytest.approx(round((40 + 225 + 50) / 60, 1))
    walls = [r["projected wall (min)"] for r in rows]
    assert walls == sorted(walls, reverse=True)


def test_units_are_recipe_and_model():
    two = {**RUN, "executor": {**RUN["executor"], "tasks": RUN["executor"]["tasks"] + [
        _task("screen a [n]", "screen", 0, 10), _task("full a (torch) [n]", "full", 10, 30)]}}
    _, basis = projection(two)
    assert basis["units_measured"] == 3 and basis["mean_unit_work_s"] == pytest.approx(round(100 / 3, 1))
