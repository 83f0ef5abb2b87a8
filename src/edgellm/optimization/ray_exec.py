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
listed as skipped; running ones finish. A task whose worker dies is retried (``max_retries``); one that keeps
failing, or raises, marks its rows ``failed`` with the reason. The driver alone writes the cache entries, from the
fields each task returns, so the cache stays keyed as in a local run and the two share results. ``speed`` runs
``deploy.row_speed`` as a task that needs ``edgellm_bench: 1``: one at a time, after every other task has ended.
The progress bar shows the cluster's tasks (running, queued, done); ``summary`` is the timeline for the report (one
lane per worker process, a bar per task and attempt).
Deliberately absent: moving artifacts through Ray's object store (a multi-node cluster needs the shared cache
folder), GPUs, and autoscaling.
"""

from __future__ import annotations

import os
import socket
import time

from ..errors import EdgeLLMError
from .pick import same_weights_dominator
from .tasks import Context, full_row, screen_unit, speed_row
from .stages import why

BENCH = "edgellm_bench"
RETRIES = 2           # a task whose worker dies runs up to 1 + RETRIES times


def import_ray():
    """``ray``, or the one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise EdgeLLMError("--executor ray needs Ray, which is not installed",
                           "pip install 'edgellm[ray]', or use --executor local") from None
    return ray


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
    """A task's body: report its start to the board (for progress and the attempt count), then run *fn*.

    The report is not waited for: a task blocked in ``ray.get`` lends its CPUs to the next queued task, which
    would then run beside it.
    """
    board.started.remote(key)
    return fn(*args)


class _Board:
    """Which tasks have started (and how often: retries), for the progress bar and the timeline."""

    def __init__(self):
        self.starts: dict[str, int] = {}

    def started(self, key: str) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1

    def snapshot(self) -> dict:
        return dict(self.starts)


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
        self.t0 = time.time()

    def close(self) -> None:
        if self.owned and self.ray is not None:
            self.ray.shutdown()
            self.owned = False

    def _submit(self, key: str, fn, args: tuple, memory: int = 0, bench: bool = False):
        opts = {"num_cpus": self.cfg.threads, "max_retries": RETRIES, "name": key}
        if memory:
            opts["memory"] = int(min(memory, 0.9 * self.node_memory))
        if bench:
            opts["resources"] = {BENCH: 1}
        return self.remote.options(**opts).remote(self.board, key, fn, *args)

    def _record(self, key: str, kind: str, out: dict, attempts: int) -> None:
        self.timeline.append({"task": key, "kind": kind, "lane": f"{out['host']}:{out['pid']}",
                              "start": round(out["start"] - self.t0, 3), "end": round(out["end"] - self.t0, 3),
                              "attempts": attempts})

    def prefetch(self, search) -> None:
        """Run every build, screen and full protocol of the planned rows on the cluster, filling the cache."""
        ray, cfg = self.ray, self.cfg
        self.ctx = ray.put(Context.of(search))
        search.step("ray: build, screen and full protocol on the cluster")
        live = search.live()
        others_exist = any(r.runtime != "torch" for r in live)
        jobs: dict = {}           # ref -> (kind, key, rows, spec, recipe)
        downstream: dict = {}     # screen ref -> its full refs
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
                key = f"screen {recipe.name} [{os.path.basename(spec)}]"
                sref = self._submit(key, screen_unit, (self.ctx, spec, recipe.name, rows, e, folder), mem)
                jobs[sref] = ("screen", key, rows, spec, recipe)
                downstream[sref] = []
                order = sorted(rows, key=lambda r: (not search.is_base(r), others_exist and r.runtime == "torch",
                                                    search.predicted_rank(r)))
                dominated = set()
                for row in order:
                    rest = [r for r in order if id(r) not in dominated]
                    if not search.is_base(row) and same_weights_dominator(row, rest, cfg.dominance_margin) is not None:
                        dominated.add(id(row))
                        continue
                    fkey = f"full {recipe.name} ({row.runtime}) [{os.path.basename(spec)}]"
                    fref = self._submit(fkey, full_row, (self.ctx, row, e, folder, sref), mem)
                    jobs[fref] = ("full", fkey, [row], spec, recipe)
                    downstream[sref].append(fref)
        self._drain(search, jobs, downstream)

    def _drain(self, search, jobs: dict, downstream: dict) -> None:
        """Collect the tasks as they end; cancel what a rejection or the time budget makes useless."""
        ray = self.ray
        pending, done, cancelled = set(jobs), 0, set()
        budget_out = False
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            starts = ray.get(self.board.snapshot.remote())
            for ref in ready:
                pending.discard(ref)
                done += 1
                kind, key, rows, spec, recipe = jobs[ref]
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 — a dead worker past its retries, or our own cancel
                    if ref not in cancelled:
                        self._outcome(kind, rows, "failed", f"{why(e)} (after {starts.get(key, 0)} attempt(s))")
                        for f in downstream.get(ref, []):
                            ray.cancel(f)
                            cancelled.add(f)
                    continue
                self._record(key, kind, out, starts.get(key, 1))
                if out.get("fields"):
                    search.entries.get(spec, recipe).update(out["fields"])
                    search.entries.save(spec, recipe)
                if out.get("error"):
                    self._outcome(kind, rows, "failed", out["error"])
                if kind == "screen" and (out.get("error") or out.get("rejected")):
                    for f in downstream[ref]:
                        ray.cancel(f)       # a started one returns at once (full_row sees the screen)
                        cancelled.add(f)
            if pending and not budget_out and not search.budget.fits():
                budget_out = True
                for ref in pending:
                    kind, key, rows, _, _ = jobs[ref]
                    if key not in starts and ref not in cancelled:
                        ray.cancel(ref)
                        cancelled.add(ref)
                        self._outcome(kind, rows, "skipped", "time budget: not started before the budget ran out")
            running = sum(1 for r in pending if jobs[r][1] in starts)
            if search.step.bar is not None:
                search.step.bar.set_postfix_str(f"ray: {running} running, {len(pending) - running} queued, "
                                                f"{done} done")

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
        ref = self._submit(key, speed_row, (self.ctx, row, search.entry(row), str(search.folder(row))), bench=True)
        out = self.ray.get(ref)
        self._record(key, "speed", out, self.ray.get(self.board.snapshot.remote()).get(key, 1))
        return out["result"]

    def summary(self) -> dict:
        return {"executor": "ray", "cluster": self.cluster, "threads_per_task": self.cfg.threads,
                "max_retries": RETRIES, "tasks": sorted(self.timeline, key=lambda t: t["start"])}
