"""``Engine.cancel`` on a fake runtime (no model, no HTTP): a cancelled waiting job leaves the queue at once, so
the queue's capacity counts only live jobs, and cancelling races the worker without losing or double-counting a
job: each job is released from the queue or run, never both, and the counts add up."""

from __future__ import annotations

import random
import threading
import time

import pytest

from edgellm.serving.engine import Engine, Job, QueueFull


class _Tok:
    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join("ab"[i % 2] for i in ids)


class _Runtime:
    """Yields token 1 forever, *delay* seconds apart; records which job (the first prompt id) it ran, and waits at
    ``gate`` before the first token."""

    name, max_positions = "fake", 4096

    def __init__(self, delay: float = 0.0):
        self.delay, self.seen = delay, []
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()

    def generate(self, ids, max_new_tokens, temperature=1.0, top_p=1.0, seed=None, stop_ids=()):
        self.seen.append(int(ids[0]))
        self.started.set()
        self.gate.wait(10)
        for _ in range(max_new_tokens):
            time.sleep(self.delay)
            yield 1


def _job(i: int, events: dict, max_tokens: int = 4) -> Job:
    events[i] = []
    return Job([i], max_tokens, lambda kind, payload: events[i].append((kind, payload)))


def test_cancelled_waiting_job_frees_its_slot_at_once():
    rt = _Runtime(delay=0.001)
    rt.gate.clear()
    eng = Engine(rt, _Tok(), max_queue=2).start()
    events: dict = {}
    try:
        running = _job(0, events, max_tokens=1000)
        eng.submit(running)
        assert rt.started.wait(10)                       # the worker holds job 0
        waiting = [_job(i, events) for i in (1, 2)]
        for job in waiting:
            eng.submit(job)
        with pytest.raises(QueueFull):
            eng.submit(_job(3, events))
        assert eng.cancel(waiting[0]) is True            # released: its slot is free now, the model still busy
        assert eng.waiting() == 1 and eng.counts()["cancelled"] == 1 and eng.in_flight() == 2
        eng.submit(_job(4, events))                      # accepted
        assert eng.cancel(running) is False              # running: it stops at its next token instead
        rt.gate.set()
        deadline = time.monotonic() + 10
        while eng.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        counts = eng.counts()
        assert counts == {"submitted": 4, "finished": 4, "cancelled": 2, "in_flight": 0, "waiting": 0, "busy": False}
        assert rt.seen == [0, 2, 4] and events[1] == []  # the released job never reached the model
        assert events[0][-1][0] == "done" and events[0][-1][1].finish_reason == "cancelled"
        assert [e[-1][1].finish_reason for e in (events[2], events[4])] == ["length", "length"]
    finally:
        rt.gate.set()
        eng.stop()


def test_cancel_races_the_worker_without_losing_a_job():
    n = 400
    rt = _Runtime(delay=0.0002)
    eng = Engine(rt, _Tok(), max_queue=n).start()
    events: dict = {}
    jobs = [_job(i, events, max_tokens=random.Random(i).randint(1, 6)) for i in range(n)]
    released = {}
    rng = random.Random(0)
    order = rng.sample(range(n), 2 * n // 3)

    def canceller():
        for i in order:
            released[i] = eng.cancel(jobs[i])
            time.sleep(rng.uniform(0, 0.001))

    try:
        rt.gate.clear()                                  # all jobs queued before the worker starts on them
        for job in jobs:
            eng.submit(job)
        t = threading.Thread(target=canceller)
        t.start()
        rt.gate.set()
        t.join(60)
        deadline = time.monotonic() + 30
        while eng.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        counts = eng.counts()
        ran = set(rt.seen)
        assert len(rt.seen) == len(ran)                  # no job ran twice
        let_go = {i for i, r in released.items() if r}
        assert let_go and ran and not let_go & ran       # released or run, never both
        for i in range(n):
            terminal = [k for k, _ in events[i] if k in ("done", "error")]
            assert len(terminal) == (1 if i in ran else 0), (i, events[i])
        skipped = set(range(n)) - ran - let_go           # cancelled just as the worker took it
        assert skipped <= set(order)
        stopped = sum(1 for i in ran if events[i][-1][1].finish_reason == "cancelled")
        assert counts["submitted"] == counts["finished"] == n and counts["in_flight"] == counts["waiting"] == 0
        assert counts["cancelled"] == len(let_go) + len(skipped) + stopped, (counts, len(let_go), len(skipped), stopped)
    finally:
        rt.gate.set()
        eng.stop()
