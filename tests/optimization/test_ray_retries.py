"""The Ray executor's driver-side retries on a scripted stand-in for Ray (no cluster): a task whose worker dies is
resubmitted with the tasks waiting on it, its attempts counted exactly; one that dies 1 + RETRIES times, or fails
otherwise, marks its rows failed with its attempt count. The real thing (a SIGKILLed worker on a 2-CPU instance)
is tests/optimization/test_ray_executor.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from edgellm.optimization.ray_exec import RETRIES, RayExecutor, _Task


class Died(Exception):
    """Stands for ray.exceptions.WorkerCrashedError."""


class Cancelled(Exception):
    """Stands for ray.exceptions.TaskCancelledError."""


def _ok(key):
    t = time.time()
    return {"fields": {"done": key}, "start": t, "end": t, "host": "h", "pid": 1}


class FakeRay:
    """Ray's calls the executor makes; *script* gives each task key's outcomes, attempt by attempt (the last
    repeats). A task whose upstream result (its last argument) is an error fails with that error, unrun."""

    def __init__(self, script: dict):
        self.script, self.runs, self.outcome, self.cancelled = script, {}, {}, []

    # the executor's `remote` (ray.remote(_run)) and its `.options(...)`
    def options(self, **opts):
        assert opts["max_retries"] == 0          # Ray never retries behind the driver's back
        return self

    def remote(self, board, key, fn, *args):
        ref = object()
        up = args[-1] if args and args[-1] in self.outcome else None
        if up is not None and isinstance(self.outcome[up], Exception):
            self.outcome[ref] = self.outcome[up]              # waited on a dead attempt: never ran
        else:
            n = self.runs.get(key, 0)
            self.runs[key] = n + 1
            steps = self.script.get(key, ["ok"])
            step = steps[min(n, len(steps) - 1)]
            self.outcome[ref] = _ok(key) if step == "ok" else step()
        return ref

    def wait(self, refs, num_returns, timeout):
        return list(refs), []

    def get(self, ref):
        if ref == "snapshot":
            return {}
        out = self.outcome[ref]
        if isinstance(out, Exception):
            raise out
        return out

    def cancel(self, ref):
        self.cancelled.append(ref)


def _executor(script):
    ex = RayExecutor(SimpleNamespace(threads=1))
    fake = FakeRay(script)
    ex.ray, ex.remote, ex.died_errors, ex.node_memory = fake, fake, (Died,), 0
    ex.board = SimpleNamespace(snapshot=SimpleNamespace(remote=lambda: "snapshot"))
    return ex, fake


def _search():
    saved = []
    entries = SimpleNamespace(get=lambda *k: {}, save=lambda *k: saved.append(k))
    return SimpleNamespace(entries=entries, budget=SimpleNamespace(fits=lambda: True), step=SimpleNamespace(bar=None))


def _plan(ex):
    rows = [SimpleNamespace(label="a"), SimpleNamespace(label="b")]
    screen = _Task("screen", "screen r [m]", rows, None, (), entry=("m", "r"))
    fulls = [_Task("full", f"full r ({rt}) [m]", [r], None, (), entry=("m", "r"), upstream=screen)
             for rt, r in zip(("torch", "llama.cpp"), rows)]
    screen.downstream = fulls
    for t in (screen, *fulls):
        ex._submit(t)
    return rows, [screen, *fulls]


def test_a_dead_worker_is_resubmitted_with_the_tasks_waiting_on_it():
    ex, fake = _executor({"screen r [m]": [lambda: Died("worker 1"), lambda: Died("worker 2"), "ok"]})
    rows, tasks = _plan(ex)
    ex._drain(_search(), tasks)
    by = {t["task"]: t for t in ex.summary()["tasks"]}
    assert set(by) == {"screen r [m]", "full r (torch) [m]", "full r (llama.cpp) [m]"}
    assert by["screen r [m]"]["attempts"] == 3 == fake.runs["screen r [m]"]
    assert [d["attempt"] for d in by["screen r [m]"]["died"]] == [1, 2]
    assert [d["error"] for d in by["screen r [m]"]["died"]] == ["Died: worker 1", "Died: worker 2"]
    # the full protocols waited on the dead attempts and ran once, after the third
    assert all(by[k]["attempts"] == 1 and "died" not in by[k] for k in by if k.startswith("full"))
    assert fake.runs["full r (torch) [m]"] == fake.runs["full r (llama.cpp) [m]"] == 1
    assert ex.summary()["retries"] == 2 and ex.summary()["failed_tasks"] == []
    assert ex.outcomes == {"screen": {}, "full": {}} and not ex.live


def test_a_task_that_keeps_dying_fails_its_rows_with_its_attempt_count():
    ex, fake = _executor({"screen r [m]": [lambda: Died("oom")]})
    rows, tasks = _plan(ex)
    ex._drain(_search(), tasks)
    assert fake.runs["screen r [m]"] == 1 + RETRIES and "full r (torch) [m]" not in fake.runs
    (f,) = ex.summary()["failed_tasks"]
    assert f["task"] == "screen r [m]" and f["attempts"] == 1 + RETRIES and len(f["died"]) == 1 + RETRIES
    assert ex.summary()["retries"] == RETRIES and ex.summary()["tasks"] == []
    for r in rows:
        assert ex.outcomes["screen"][id(r)] == ("failed", f"Died: oom (after {1 + RETRIES} attempt(s))")
    assert set(fake.cancelled) >= {t.ref for t in tasks[1:]}      # the downstream tasks are cancelled


@pytest.mark.parametrize("kind", ["screen", "full"])
def test_an_error_that_is_not_a_dead_worker_is_not_retried(kind):
    key = "screen r [m]" if kind == "screen" else "full r (torch) [m]"
    ex, fake = _executor({key: [lambda: Cancelled("cancelled"), "ok"]})
    rows, tasks = _plan(ex)
    ex._drain(_search(), tasks)
    assert fake.runs[key] == 1 and ex.summary()["retries"] == 0
    (f,) = ex.summary()["failed_tasks"]
    assert f["task"] == key and f["attempts"] == 1 and f["died"] == []
    failed = rows if kind == "screen" else rows[:1]
    assert {id(r) for r in failed} == set(ex.outcomes[kind])
    assert all(o == ("failed", "Cancelled: cancelled (after 1 attempt(s))") for o in ex.outcomes[kind].values())
