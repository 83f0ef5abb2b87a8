"""One model instance, one worker thread, a bounded queue of generation jobs.

The web handlers (``app.py``) tokenize, validate and compile constraints, then ``Engine.submit`` a ``Job``.
``submit`` refuses at once with ``QueueFull`` when ``max_queue`` jobs are already waiting, so an overloaded
device answers 429 instead of piling up work. The queue holds only live jobs: ``Engine.cancel`` (the handlers
call it when a client goes away) takes a job that is still waiting out of the queue at once, under the same lock
the worker takes a job with, so its slot is free for the next request and a job is either released or run, never
both. The worker runs one job at a time through the Runtime interface (``Runtime.generate``), turns tokens into
text (holding back bytes of an unfinished UTF-8 character and any tail that may be the start of a stop string)
and hands events to the job's ``emit`` callback. Between tokens it checks the job's cancel flag (client gone)
and deadline (timeout), so generation really stops. Every submitted job is accounted for: ``in_flight()``
(submitted and not yet answered, released, skipped or stopped) returns to 0 when the server is idle, and
``counts()`` says how many jobs were submitted, finished and cancelled (client gone, while waiting or
generating), which ``/health`` reports so a leak is visible from outside.
Deliberately absent: batching several requests into one forward pass.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import EdgeLLMError

log = logging.getLogger("edgellm.serving")


class QueueFull(Exception):
    """Raised by ``Engine.submit`` when the wait queue is full."""


class JobTimeout(Exception):
    """Delivered to a job whose deadline passed (while queued or while generating)."""


@dataclass
class Job:
    """One generation request. ``emit(kind, payload)`` is called from the worker thread with
    ``("text", str)``, then exactly one of ``("done", Result)`` or ``("error", Exception)``."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, object], None]
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    processor: object | None = None           # constrain.JsonLogitsProcessor or None
    deadline: float = float("inf")            # time.monotonic() value
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    text: str
    finish_reason: str                        # "stop", "length", or "cancelled" (the client went away)
    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    generate_s: float


def stop_ids_of(tokenizer, model=None) -> set[int]:
    """End-of-sequence ids: the tokenizer's EOS plus the model's generation-config EOS ids."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    return ids


class TextDecoder:
    """Incremental detokenizer with stop strings: ``push(token) -> new safe text``; ``stopped`` once a stop
    string appears (the stop string and everything after it are never emitted).

    >>> d = TextDecoder(tok, stop=["\\n"])          # doctest: +SKIP
    """

    def __init__(self, tokenizer, stop: list[str], lock: threading.Lock | None = None):
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0                # characters of the full text already handed out
        self.stopped = False
        self.text = ""

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        with self.lock:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            text = text[:min(hits)]
            safe = len(text)
        else:
            safe = len(text.rstrip("\ufffd"))     # an unfinished UTF-8 character decodes as U+FFFD
            for s in self.stop:                   # hold back a tail that may be the start of a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe = min(safe, len(text[:safe]) - k)
                        break
        self.text = text
        new = text[self.emitted:max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return new

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        new = self.text[self.emitted:].rstrip("\ufffd") if not self.stopped else self.text[self.emitted:]
        self.emitted = len(self.text)
        return new


class Engine:
    """The model behind the server.

    >>> rt = open_runtime("smollm2-135m", threads=2)                     # doctest: +SKIP
    >>> eng = Engine(rt, rt.tokenizer, max_queue=8); eng.start()        # doctest: +SKIP
    """

    def __init__(self, runtime, tokenizer, max_queue: int = 16):
        if max_queue < 1:
            raise EdgeLLMError(f"max_queue={max_queue} must be at least 1", "pass --max-queue 1 or more")
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.stop_ids = stop_ids_of(tokenizer, getattr(runtime, "model", None))
        params = inspect.signature(runtime.generate).parameters
        self.supports_processor = "logits_processor" in params
        self._pending: deque[Job] = deque()      # live jobs waiting, oldest first; a cancelled one leaves at once
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        # HF fast tokenizers are not safe to use from two threads at once (the handlers encode while
        # the worker decodes), so every use of the tokenizer goes through this lock
        self.tokenizer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.busy = False
        self.served = 0
        self.submitted = 0                    # jobs accepted by submit()
        self.finished = 0                     # of those, jobs done with (answered, released from the queue, or stopped)
        self.cancelled = 0                    # of those, jobs released or stopped because their client went away

    # -- queue ----------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="edgellm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            with self._wake:                  # the worker answers the jobs already waiting, then exits
                self._stopping = True
                self._wake.notify()
            self._thread.join(timeout=30)
            self._thread = None

    def waiting(self) -> int:
        """Jobs in the queue (live ones: a cancelled job leaves it at once)."""
        with self._lock:
            return len(self._pending)

    def in_flight(self) -> int:
        """Jobs submitted and not yet finished (waiting or generating); 0 when the server is idle."""
        with self._lock:
            return self.submitted - self.finished

    def counts(self) -> dict:
        """``{"submitted", "finished", "cancelled", "in_flight", "waiting", "busy"}``, read together.

        >>> Engine(rt, rt.tokenizer).counts()["in_flight"]      # doctest: +SKIP
        0
        """
        with self._lock:
            return {"submitted": self.submitted, "finished": self.finished, "cancelled": self.cancelled,
                    "in_flight": self.submitted - self.finished, "waiting": len(self._pending), "busy": self.busy}

    def submit(self, job: Job) -> None:
        """Queue *job* for the worker; ``QueueFull`` when ``max_queue`` live jobs are already waiting.

        >>> eng.submit(Job(ids, 16, emit))            # doctest: +SKIP
        """
        with self._wake:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting (max_queue={self.max_queue})")
            self._pending.append(job)
            self.submitted += 1
            self._wake.notify()

    def cancel(self, job: Job) -> bool:
        """Stop *job* because its client went away. A job still waiting leaves the queue now (counted finished and
        cancelled, nothing emitted, its slot free for the next request); a running one stops at its next token; a
        finished one is left as it is. Returns True when the job was released from the queue. The worker takes
        jobs under the same lock, so a job is released or run, never both.

        >>> eng.cancel(job)                           # doctest: +SKIP
        True
        """
        job.cancelled.set()                   # first: a job the worker has just taken sees it before its first token
        with self._lock:
            for i, queued in enumerate(self._pending):
                if queued is job:
                    del self._pending[i]
                    self.finished += 1
                    self.cancelled += 1
                    return True
        return False

    def _done(self, cancelled: bool = False) -> None:
        with self._lock:
            self.finished += 1
            self.cancelled += cancelled

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
            if job.cancelled.is_set():        # cancelled without Engine.cancel, or just after the worker took it
                self._done(cancelled=True)
                continue
            started = time.monotonic()
            if started > job.deadline:
                job.emit("error", JobTimeout(f"timed out after waiting {started - job.submitted:.1f} s in the queue"))
                self._done()
                continue
            self.busy, stopped = True, False
            try:
                result = self._run(job, started)
                stopped = result.finish_reason == "cancelled"
                job.emit("done", result)
            except JobTimeout as e:
                job.emit("error", e)
            except Exception as e:            # delivered to the waiting handler; the worker keeps serving
                log.exception("generation failed")
                job.emit("error", e)
            finally:
                self.busy = False
                self.served += 1
                self._done(stopped)

    # -- one job --------------------------------------------------------------------------------
    def _run(self, job: Job, started: float) -> Result:
        kw = dict(temperature=job.temperature, top_p=job.top_p, seed=job.seed, stop_ids=tuple(self.stop_ids))
        if job.processor is not None:
            kw["logits_processor"] = job.processor
        gen = self.runtime.generate(torch.tensor(job.prompt_ids, dtype=torch.long), job.max_tokens, **kw)
        decoder = TextDecoder(self.tokenizer, job.stop, self.tokenizer_lock)
        generated, finish = [], "length"
        try:
            for tok in gen:
                if tok in self.stop_ids:
                    finish = "stop"
                    break
                generated.append(tok)
                new = decoder.push(tok)
                if new:
                    job.emit("text", new)
                if job.processor is not None:
                    job.processor.update(generated)
                if decoder.stopped or (job.processor is not None and job.processor.finished()):
                    finish = "stop"
                    break
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                if time.monotonic() > job.deadline:
                    raise JobTimeout(f"generation timed out after {time.monotonic() - job.submitted:.1f} s "
                                     f"({len(generated)} tokens generated)")
        finally:
            if hasattr(gen, "close"):
                gen.close()                       # frees the runtime's KV cache now, not at garbage collection
        tail = decoder.flush()
        if tail:
            job.emit("text", tail)
        return Result(decoder.text, finish, len(job.prompt_ids), len(generated), started - job.submitted, time.monotonic() - started)
