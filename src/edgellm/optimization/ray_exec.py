"""The Ray executor: every build, screen, export and full protocol of the search runs as a Ray task; speed and RAM
are measured one at a time on the node that advertises the ``edgellm_bench`` resource.

``start`` joins ``--ray-address HOST:PORT`` / ``auto`` / ``$RAY_ADDRESS`` (an unreachable address is refused after a
5 s TCP probe), uses the Ray instance this process already joined, or starts a private one (``start_local``) bound
to 127.0.0.1 with the dashboard off and ``edgellm_bench: 1`` on this node. It refuses a cluster whose bench resource
is missing or lies on another node than the driver's (the driver's host is the measured host), and a multi-node
cluster without ``--cache DIR`` (artifacts travel through that folder, which every node must mount).

``prefetch`` submits one task per (model, recipe) (build + screen) and, depending on it, one per (candidate,
runtime) (export + verification + full protocol), each asking for ``threads`` CPUs and the cost model's RAM
prediction. A screen far beyond the quality budget ``ray.cancel``s its candidate's downstream tasks (one that has
already started returns at once). When the time budget runs out, tasks not started yet are cancelled and their rows
listed as skipped; running ones finish. A task whose worker dies (``died_errors``) is resubmitted by the driver, up
to ``RETRIES`` times, with the tasks that wait on it; Ray's own ``max_retries`` is 0, so the driver sees every dead
attempt in the task's ObjectRef and counts it exactly. One that keeps dying, or raises, marks its rows ``failed``
with the reason and its attempt count. The driver alone writes the cache entries, from the
fields each task returns, so the cache stays keyed as in a local run and the two share results. ``speed`` runs
``deploy.row_speed`` as a task that needs ``edgellm_bench: 1``: one at a time, after every other task has ended.
The progress bar shows the cluster's tasks (running, queued, done, retried); ``summary`` is the timeline for the
report (one lane per worker process, a bar per finished task with its attempts and the dead ones' failures), the
search's retry count and the tasks that ended without a result.
Deliberately absent: moving artifacts through Ray's object store (a multi-node cluster needs the shared cache
folder), GPUs, and autoscaling.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..errors import EdgeLLMError
from .pick import same_weights_dominator
from .tasks import Context, full_row, screen_unit, speed_row
from .stages import why

BENCH = "edgellm_bench"
RETRIES = 2           # a task whose worker dies runs up to 1 + RETRIES times (the driver resubmits it)


def import_ray():
    """``ray``, or the one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise EdgeLLMError("--executor ray needs Ray, which is not installed",
                           "pip install 'edgellm[ray]', or use --executor local") from None
    return ray


def died_errors(ray) -> tuple:
    """The Ray errors that mean a task's worker (or its node) died under it, which the driver retries; any other
    error (a cancel, a failed upstream) is the task's outcome."""
    ex = ray.exceptions
    return (ex.WorkerCrashedError, ex.NodeDiedError, ex.OutOfMemoryError, ex.LocalRayletDiedError)


def start_local(num_cpus: int | None = None):
    """Start a private Ray instance on this machine: bound to 127.0.0.1, dashboard off, ``edgellm_bench: 1`` here.

    >>> ray = start_local(num_cpus=2)            # doctest: +SKIP
    >>> ray.cluster_resources()["edgellm_bench"]  # doctest: +SKIP
    1.0
    """
    ray = import_ray()
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False    # Ray then takes the loopback address for every service
    ray.init(num_cpus=num_cpus, resources={BENCH: 1}, include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="edgellm")
    return ray


def probe(address: str, timeout: float = 5.0) -> None:
    """Refuse an address nothing listens on (``ray.init`` would retry it for minutes); ``auto`` is Ray's to find."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EdgeLLMError(f"--ray-address '{address}' is not HOST:PORT or 'auto'", "e.g. --ray-address 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EdgeLLMError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}",
                           "start it with `ray start --head` there, or fix --ray-address / $RAY_ADDRESS") from None


def check_cluster(nodes: list[dict], driver_node: str, cache: str | None) -> dict:
    """The cluster's shape, or the one-line refusal: no bench node, a bench node that is not the driver's, or
    several nodes without a shared ``--cache``.

    >>> check_cluster([{"NodeID": "a", "Alive": True, "Resources": {"CPU": 2.0, "edgellm_bench": 1.0}}], "a", None)
    {'nodes': 1, 'cpus': 2.0, 'bench_node': 'a'}
    """
    alive = [n for n in nodes if n.get("Alive")]
    bench = [n["NodeID"] for n in alive if n["Resources"].get(BENCH, 0) >= 1]
    if not bench:
        raise EdgeLLMError(f"no node of the Ray cluster offers the '{BENCH}' resource, so speed and RAM cannot be "
                           "measured alone", f"start the measuring node with `ray start ... --resources "
                           f"'{{\"{BENCH}\": 1}}'` and run optimize there")
    if bench != [driver_node]:
        raise EdgeLLMError(f"the '{BENCH}' resource must be offered by this node alone (the measured host), "
                           f"not by {len(bench)} node(s) elsewhere", "run optimize on the node started with it")
    if len(alive) > 1 and not cache:
        raise EdgeLLMError(f"a {len(alive)}-node Ray cluster needs a shared result cache for the built artifacts",
                           "pass --cache DIR on storage every node mounts at the same path (NFS, …)")
    return {"nodes": len(alive), "cpus": sum(n["Resources"].get("CPU", 0) for n in alive), "bench_node": bench[0]}


def _run(board, key, fn, *args):
    """A task's body: report its start to the board (for the progress bar), then run *fn*.

    The report is not waited for: a task blocked in ``ray.get`` lends its CPUs to the next queued task, which
    would then run beside it. So the board may miss an attempt whose worker dies at once; attempts are counted by
    the driver (``_Task.attempts``), never from the board.
    """
    board.started.remote(key)
    return fn(*args)


class _Board:
    """Which tasks have started, for the progress bar (running vs queued) and the budget (not started yet)."""

    def __init__(self):
        self.starts: dict[str, int] = {}

    def started(self, key: str) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1

    def snapshot(self) -> dict:
        return dict(self.starts)


@dataclass(eq=False)
class _Task:
    """One unit of work on the cluster as the driver submitted it, with its attempts."""

    kind: str                          # screen (build + screen), full (export + full protocol), speed
    key: str
    rows: list
    fn: object
    args: tuple
    memory: int = 0
    bench: bool = False
    entry: tuple = ()                  # (spec, recipe) whose cache entry the result's fields update
    upstream: "_Task | None" = None    # a full protocol's screen: its result is the last argument
    downstream: list = field(default_factory=list)
    ref: object = None                 # the live attempt
    attempts: int = 0                  # attempts that ran or are queued (a dead worker's resubmission adds one)
    died: list = field(default_factory=list)    # the dead attempts: {"attempt", "seen_at", "error"}
    dropped: bool = False              # cancelled by the driver (a rejected screen, the time budget)


class RayExecutor:
    """Runs the search's work on a Ray cluster (see the module docstring); ``LocalExecutor``'s interface."""

    name = "ray"

    def __init__(self, config):
        self.cfg = config
        self.ray = None
        self.owned = False            # we started the instance, so we stop it
        self.t0 = time.time()
        self.cluster: dict = {}
        self.timeline: list[dict] = []
        self.failed: list[dict] = []  # tasks that ended without a result: every attempt's worker died, or an error
        self.retries = 0              # resubmissions after a dead worker, over the whole search
        self.live: dict = {}          # ObjectRef of a live attempt -> its _Task
        self.outcomes: dict[str, dict[int, tuple]] = {"screen": {}, "full": {}}
        self.ctx = None

    def start(self, search) -> None:
        ray = self.ray = import_ray()
        address = self.cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            probe(address)
        if ray.is_initialized():
            pass                      # this process already joined a Ray instance (a notebook, a test): use it
        elif address:
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False, namespace="edgellm")
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise EdgeLLMError(f"cannot join the Ray cluster at {address}: {why(e)}",
                                   "check --ray-address / $RAY_ADDRESS and that `ray start --head` runs there") from None
            self.owned = True
        else:
            start_local()
            self.owned = True
        self.cluster = check_cluster(ray.nodes(), ray.get_runtime_context().get_node_id(), self.cfg.cache)
        self.cluster["address"] = address or "local (127.0.0.1)"
        self.node_memory = max(n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive"))
        self.board = ray.remote(num_cpus=0)(_Board).remote()
        self.remote = ray.remote(_run)
        self.died_errors = died_errors(ray)
        self.t0 = time.time()

    def close(self) -> None:
        if self.owned and self.ray is not None:
            self.ray.shutdown()
            self.owned = False

    def _submit(self, task: _Task, new_attempt: bool = True) -> None:
        """Submit *task* (again): Ray's own retries are off, the driver resubmits, so it counts every attempt."""
        opts = {"num_cpus": self.cfg.threads, "max_retries": 0, "retry_exceptions": False, "name": task.key}
        if task.memory:
            opts["memory"] = int(min(task.memory, 0.9 * self.node_memory))
        if task.bench:
            opts["resources"] = {BENCH: 1}
        args = task.args + ((task.upstream.ref,) if task.upstream is not None else ())
        task.ref = self.remote.options(**opts).remote(self.board, task.key, task.fn, *args)
        task.attempts += new_attempt
        self.live[task.ref] = task

    def _retry(self, task: _Task, error: Exception) -> bool:
        """Resubmit *task* when its worker died and it has attempts left, with its downstream tasks (their
        attempt waited on the dead one's result and never ran); False otherwise."""
        if task.dropped or not isinstance(error, self.died_errors):
            return False
        task.died.append({"attempt": task.attempts, "seen_at": round(time.time() - self.t0, 3), "error": why(error)})
        if task.attempts > RETRIES:
            return False
        self.retries += 1
        self._submit(task)
        for d in task.downstream:
            if not d.dropped:
                self.live.pop(d.ref, None)
                self.ray.cancel(d.ref)
                self._submit(d, new_attempt=False)
        return True

    def _fail(self, task: _Task, error: Exception) -> str:
        """Record a task that ended without a result; returns the reason its rows get."""
        reason = f"{why(error)} (after {task.attempts} attempt(s))"
        self.failed.append({"task": task.key, "kind": task.kind, "attempts": task.attempts, "error": why(error),
                            "died": task.died})
        return reason

    def _record(self, task: _Task, out: dict) -> None:
        t = {"task": task.key, "kind": task.kind, "lane": f"{out['host']}:{out['pid']}",
             "start": round(out["start"] - self.t0, 3), "end": round(out["end"] - self.t0, 3),
             "attempts": task.attempts}
        if task.died:
            t["died"] = task.died
        self.timeline.append(t)

    def _drop(self, tasks) -> None:
        for t in tasks:
            if not t.dropped:
                t.dropped = True
                self.ray.cancel(t.ref)      # a started full protocol returns at once (full_row sees the screen)

    def prefetch(self, search) -> None:
        """Run every build, screen and full protocol of the planned rows on the cluster, filling the cache."""
        ray, cfg = self.ray, self.cfg
        self.ctx = ray.put(Context.of(search))
        search.step("ray: build, screen and full protocol on the cluster")
        live = search.live()
        others_exist = any(r.runtime != "torch" for r in live)
        tasks: list[_Task] = []
        for spec in cfg.models:
            for recipe in search.recipes:
                rows = [r for r in live if r.model == spec and r.recipe == recipe.name]
                if not rows:
                    continue
                if not search.budget.fits():
                    self._outcome("screen", rows, "skipped", "time budget spent before building")
                    continue
                e, folder = search.entries.get(spec, recipe), str(search.entries.folder(spec, recipe))
                mem = self._memory(search, rows)
                screen = _Task("screen", f"screen {recipe.name} [{os.path.basename(spec)}]", rows, screen_unit,
                               (self.ctx, spec, recipe.name, rows, e, folder), mem, entry=(spec, recipe))
                self._submit(screen)
                tasks.append(screen)
                order = sorted(rows, key=lambda r: (not search.is_base(r), others_exist and r.runtime == "torch",
                                                    search.predicted_rank(r)))
                dominated = set()
                for row in order:
                    rest = [r for r in order if id(r) not in dominated]
                    if not search.is_base(row) and same_weights_dominator(row, rest, cfg.dominance_margin) is not None:
                        dominated.add(id(row))
                        continue
                    full = _Task("full", f"full {recipe.name} ({row.runtime}) [{os.path.basename(spec)}]", [row],
                                 full_row, (self.ctx, row, e, folder), mem, entry=(spec, recipe), upstream=screen)
                    self._submit(full)
                    screen.downstream.append(full)
                    tasks.append(full)
        self._drain(search, tasks)

    def _drain(self, search, tasks: list[_Task]) -> None:
        """Collect the tasks as they end; resubmit those whose worker died; cancel what a rejection or the time
        budget makes useless."""
        ray = self.ray
        done, budget_out = 0, False
        while self.live:
            ready, _ = ray.wait(list(self.live), num_returns=len(self.live), timeout=0.5)
            starts = ray.get(self.board.snapshot.remote())
            # screens first: a dead screen's downstream attempts fail with it and are resubmitted by its retry
            for ref in sorted(ready, key=lambda r: getattr(self.live.get(r), "kind", "") != "screen"):
                task = self.live.pop(ref, None)
                if task is None:
                    continue                # an attempt superseded by its upstream's retry
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 — a dead worker, our own cancel, or a failed upstream
                    if self._retry(task, e):
                        continue
                    done += 1
                    if not task.dropped:
                        self._outcome(task.kind, task.rows, "failed", self._fail(task, e))
                        self._drop(task.downstream)
                    continue
                done += 1
                self._record(task, out)
                if out.get("fields"):
                    search.entries.get(*task.entry).update(out["fields"])
                    search.entries.save(*task.entry)
                if out.get("error"):
                    self._outcome(task.kind, task.rows, "failed", out["error"])
                if task.kind == "screen" and (out.get("error") or out.get("rejected")):
                    self._drop(task.downstream)
            if self.live and not budget_out and not search.budget.fits():
                budget_out = True
                for t in tasks:
                    if t.ref in self.live and t.key not in starts and not t.dropped:
                        self._drop([t])
                        self._outcome(t.kind, t.rows, "skipped", "time budget: not started before the budget ran out")
            running = sum(1 for t in self.live.values() if t.key in starts)
            if search.step.bar is not None:
                search.step.bar.set_postfix_str(f"ray: {running} running, {len(self.live) - running} queued, "
                                                f"{done} done, {self.retries} retried")

    def _memory(self, search, rows) -> int:
        """Bytes a build-and-score task asks for: the fp32 base twice (load + compressed copy) plus the largest
        predicted peak RAM of the candidate's rows (the cost model's prediction)."""
        base = next((r for r in search.rows if r.model == rows[0].model and search.is_base(r)), None)
        base_bytes = ((base.predicted or {}).get("size_bytes") or 0) if base is not None else 0
        return int(2 * base_bytes + max((r.predicted or {}).get("peak_ram_bytes") or 0 for r in rows))

    def _outcome(self, stage: str, rows, status: str, reason: str) -> None:
        for r in rows:
            self.outcomes[stage].setdefault(id(r), (status, reason))

    def apply(self, stage: str, search) -> None:
        """The rows' statuses the cluster decided for *stage* (failed, skipped), applied before the stage runs."""
        for row in search.rows:
            o = self.outcomes[stage].get(id(row))
            if o is None or (stage == "full" and row.status != "screened"):
                continue
            if o[0] == "skipped":
                search.budget.skip_rows([row], o[1])
            else:
                row.status, row.reason = o

    def speed(self, search, row) -> dict:
        """``row_speed`` as a task on the bench node, alone: every other task of the search has ended."""
        key = f"speed {row.recipe} ({row.runtime}) [{os.path.basename(row.model)}]"
        if self.ctx is None:
            self.ctx = self.ray.put(Context.of(search))
        task = _Task("speed", key, [row], speed_row, (self.ctx, row, search.entry(row), str(search.folder(row))),
                     bench=True)
        self._submit(task)
        while True:
            ref = task.ref
            try:
                out = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 — retried when the worker died, else the row's failure
                self.live.pop(ref, None)
                if self._retry(task, e):
                    continue
                raise EdgeLLMError(self._fail(task, e)) from e
            self.live.pop(ref, None)
            self._record(task, out)
            return out["result"]

    def summary(self) -> dict:
        return {"executor": "ray", "cluster": self.cluster, "threads_per_task": self.cfg.threads,
                "max_retries": RETRIES, "retries": self.retries, "failed_tasks": self.failed,
                "tasks": sorted(self.timeline, key=lambda t: t["start"])}
