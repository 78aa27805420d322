"""Agents as Dask tasks: one long task per producer and per consumer, each on a Dask worker
process of its own (`--agents N`: a LocalCluster of N worker processes on 127.0.0.1;
`--scheduler URL`: an existing cluster, whose workers need amqscale[bench] installed).

The same two sides as amqscale.bench.launch, with the scheduler's coordination primitives,
all named after the run: a `distributed.Queue` carries every agent's reports, an `Event`
(started) and a `Variable` (the start time) make the start barrier, an `Event` stops the
consumers. Inside its task an agent reaches them through the worker's client
(`distributed.get_client()`); the task does not secede, so its thread stays taken.

A task is pinned to its worker (`allow_other_workers=False`): the scheduler never moves an
agent, half run, to another worker. A task that fails without a report of its own, or whose
worker is gone, comes back from `next_report` as an "error" report, so its exception text
reaches the coordinator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import deque
from typing import Any

import psutil
from distributed import Client, Event, LocalCluster, Queue, Variable, get_client
from distributed.comm import parse_address, parse_host_port
from distributed.comm.registry import get_backend

from .agents import run_agent
from .config import AgentPlan

CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler given by address
WORKERS_TIMEOUT = 60.0  # for a local cluster's workers to register
CLOSE_TIMEOUT = 30.0  # for the agents to end once stopped
EXIT_TIMEOUT = 10.0  # for a local cluster's processes to be gone once it is closed
START_POLL = 0.5  # an agent waiting for the start looks for the stop this often
STOP_POLL = 0.1  # a consumer asks the scheduler whether to stop this often at most
REPORTS_POLL = 0.02  # the coordinator looks for reports this often while none come
WORKERS_POLL = 1.0  # the coordinator looks for lost workers this often at most

log = logging.getLogger(__name__)


class _DaskControl:
    """An agent's Control, inside its Dask task."""

    def __init__(self, client: Client, names: dict[str, str]) -> None:
        self.reports = Queue(names["reports"], client=client)
        self.started = Event(names["started"], client=client)
        self.start_time = Variable(names["start_time"], client=client)
        self.stop = Event(names["stop"], client=client)
        self.stopped = False
        self.next_look = 0.0

    def report(self, message: dict[str, Any]) -> None:
        self.reports.put(message)

    def wait_start(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.started.wait(START_POLL):
            if self.stop_requested():
                raise TimeoutError("the run was stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no start from the coordinator in {timeout:g} s")
        return float(self.start_time.get(timeout=CONNECT_TIMEOUT))

    def stop_requested(self) -> bool:
        """The stop, as last seen: a look at the scheduler costs a round trip."""
        if not self.stopped:
            now = time.monotonic()
            if now >= self.next_look:
                self.next_look = now + STOP_POLL
                self.stopped = bool(self.stop.is_set())
        return self.stopped

    def close(self) -> None:
        self.reports.close()  # this task's hold on the queue


def _run_on_worker(plan: AgentPlan, names: dict[str, str]) -> None:
    """One agent, as a Dask task."""
    control = _DaskControl(get_client(), names)
    try:
        run_agent(plan, control)
    finally:
        control.close()


def _agents_of_run(plan: AgentPlan) -> dict[str, int]:
    """The run's agents by role, in all: its first start() tells. Consumers start first:
    a consumer on its own (`bench receive`) starts only consumers; a producer that comes
    first is of a run with producers only (`bench send`)."""
    config = plan.config
    if plan.role == "producer":
        return {"producer": config.producers}
    if plan.any_run:
        return {"consumer": config.consumers}
    return {"producer": config.producers, "consumer": config.consumers}


def _check_address(scheduler: str) -> None:
    """A ValueError for what cannot be a scheduler's address (distributed's own check of it
    comes late, and leaves a half-made client that hangs the interpreter's exit)."""
    try:
        protocol, location = parse_address(scheduler)
        get_backend(protocol)
        if protocol in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except ValueError as exc:
        raise ValueError(f"--scheduler {scheduler!r} is not a Dask scheduler's address "
                         f"(tcp://HOST:PORT): {exc}") from None


class DaskLauncher:
    """A Launcher (amqscale.bench.launch) over Dask: `scheduler`, an address to connect to,
    or `local_workers`, the worker processes of a LocalCluster made here; `close()` ends
    both."""

    def __init__(self, scheduler: str | None = None, local_workers: int | None = None
                 ) -> None:
        if (scheduler is None) == (local_workers is None):
            raise ValueError("a Dask cluster is --agents N (a local one) or --scheduler URL "
                             "(an existing one): give one of them")
        self.scheduler, self.local_workers = scheduler, local_workers
        self.cluster: LocalCluster | None = None
        self.local_processes: list[psutil.Process] = []  # a LocalCluster's workers
        if local_workers is not None:
            if not isinstance(local_workers, int) or local_workers < 1:
                raise ValueError(f"--agents must be a positive integer, not {local_workers!r}")
            # No dashboard; the scheduler's HTTP server (health, metrics) stays, and would
            # take port 8787 (or warn when it is taken): a free port instead, on loopback.
            self.cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                        processes=True, host="127.0.0.1",
                                        dashboard_address=None,
                                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            try:
                self.client = Client(self.cluster, set_as_default=False)
                self.client.wait_for_workers(local_workers, timeout=WORKERS_TIMEOUT)
                self.local_processes = _processes(self.client.run(os.getpid).values())
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.close()
                self.cluster.close()
                raise
        else:
            assert scheduler is not None
            _check_address(scheduler)
            try:
                self.client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(f"no Dask scheduler reachable at {scheduler} "
                                      f"({exc})") from None
        prefix = f"amqscale-bench-{uuid.uuid4().hex[:12]}"
        self.prefix = prefix
        self.names = {part: f"{prefix}-{part}"
                      for part in ("reports", "started", "start_time", "stop")}
        self.reports = Queue(self.names["reports"], client=self.client)
        self.started = Event(self.names["started"], client=self.client)
        self.start_time = Variable(self.names["start_time"], client=self.client)
        self.stop = Event(self.names["stop"], client=self.client)
        self.futures: dict[str, Any] = {}  # agent name -> its distributed.Future
        self.placed: dict[str, str] = {}  # agent name -> its worker's address
        self.used: dict[str, int] = {}  # worker address -> agents on it
        self.expected: dict[str, int] = {}  # the run's agents by role, once known
        self.pending: deque[dict[str, Any]] = deque()  # reports got, not yet returned
        self.heard: dict[str, str] = {}  # agent -> "done" or "error", from its reports
        self.failed: dict[str, str] = {}  # agent -> why its task failed
        self.next_workers_look = 0.0
        self.closed = False

    # -- the Launcher ------------------------------------------------------------------------

    def start(self, plans: list[AgentPlan]) -> None:
        if not plans:
            return
        if not self.expected:
            self.expected = _agents_of_run(plans[0])
        slots = self._free_slots()
        agents = max(len(self.futures) + len(plans), sum(self.expected.values()))
        workers = len(self.futures) + len(slots)
        if agents > workers:
            raise ValueError(self._too_few(agents, workers))
        for plan, address in zip(plans, slots, strict=False):
            self.futures[plan.name] = self.client.submit(
                _run_on_worker, plan, self.names, key=f"{self.prefix}-{plan.name}",
                workers=[address], allow_other_workers=False, pure=False, retries=0)
            self.placed[plan.name] = address
            self.used[address] = self.used.get(address, 0) + 1

    def next_report(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while not self.pending:
            # All that waits, at once: a get() that times out is logged by the scheduler
            # as an error, with its traceback.
            for report in self.reports.get(batch=True):
                if report.get("kind") in ("done", "error"):
                    self.heard[report["agent"]] = report["kind"]
                self.pending.append(report)
            if self.pending:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self._look_for_failures()  # the queue is empty: every report came before
                break
            time.sleep(min(REPORTS_POLL, left))
        return self.pending.popleft() if self.pending else None

    def set_start(self, when: float) -> None:
        self.start_time.set(when)
        self.started.set()

    def stop_consumers(self) -> None:
        self.stop.set()

    def exited(self) -> list[str]:
        self._look_for_failures()
        return [name for name, future in self.futures.items()
                if future.done() or name in self.failed]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._end_agents()
            self._forget_names()
        finally:
            self._close_cluster()

    # -- placing -----------------------------------------------------------------------------

    def _free_slots(self) -> list[str]:
        """The workers with no agent yet: one agent a worker process, so that its CPU time
        and its interpreter are its own (a worker's other threads stay unused)."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return [address for address in sorted(workers) if not self.used.get(address)]

    def _too_few(self, agents: int, workers: int) -> str:
        roles = " and ".join(f"{count} {role}{'s' if count > 1 else ''}"
                             for role, count in self.expected.items())
        more = (f"use --agents {agents} or more" if self.local_workers is not None
                else "add Dask workers")
        return (f"{agents} bench agents ({roles}) need a Dask worker each, but the "
                f"cluster has {workers}: {more}, or fewer producers/consumers")

    # -- failures ----------------------------------------------------------------------------

    def _look_for_failures(self) -> None:
        """Tasks that failed, were cancelled or lost their worker: their reason, and an
        "error" report for those that did not report one of their own."""
        lost = self._lost_workers()
        for name, future in self.futures.items():
            if name in self.failed:
                continue
            if future.status == "error":
                exc = future.exception(timeout=CONNECT_TIMEOUT)
                reason = f"{type(exc).__name__}: {exc}"
            elif future.status == "cancelled":
                reason = "its Dask task was cancelled"
            elif self.placed[name] in lost and not future.done():
                reason = f"its Dask worker {self.placed[name]} is gone"
                future.cancel()
            else:
                continue
            self.failed[name] = reason
            self._note_failure(name, reason)

    def _note_failure(self, name: str, reason: str) -> None:
        heard = self.heard.get(name)
        if heard is None:
            self.pending.append({"kind": "error", "agent": name,
                                 "error": f"{name}: {reason}"})
        elif heard == "done":  # its results are in; say what went wrong afterwards
            log.warning("amqscale bench: %s failed after its report: %s", name, reason)

    def _lost_workers(self) -> set[str]:
        now = time.monotonic()
        if now < self.next_workers_look or not self.placed:
            return set()
        self.next_workers_look = now + WORKERS_POLL
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return set(self.placed.values()) - set(workers)

    # -- closing -----------------------------------------------------------------------------

    def _end_agents(self) -> None:
        """Stop the agents, wait for their tasks; cancel what is left."""
        if not self.futures:
            return
        self.stop.set()  # an agent still waiting for the start gives up
        deadline = time.monotonic() + CLOSE_TIMEOUT  # (distributed.wait() would need a
        while time.monotonic() < deadline:  # default client; this one is not)
            if all(future.done() for future in self.futures.values()):
                break
            time.sleep(0.1)
        self._look_for_failures()
        for report in self.pending:  # failures the coordinator was not told of: not lost
            if report["kind"] == "error" and report["agent"] in self.failed:
                log.warning("amqscale bench: %s", report["error"])
        self.pending.clear()
        stuck = [name for name, f in self.futures.items() if not f.done()]
        if stuck:
            log.warning("amqscale bench: %s still running %g s after the stop: cancelled",
                        ", ".join(sorted(stuck)), CLOSE_TIMEOUT)
            self.client.cancel([self.futures[name] for name in stuck], force=True)
            if self.cluster is None:  # a task's thread ends only with its process
                with contextlib.suppress(Exception):
                    self.client.restart_workers(sorted({self.placed[n] for n in stuck}),
                                                timeout=CLOSE_TIMEOUT, raise_for_error=False)

    def _forget_names(self) -> None:
        """Leave nothing of the run on a scheduler that outlives it."""
        for forget in (self.start_time.delete, self.started.clear, self.stop.clear,
                       self.reports.close):
            with contextlib.suppress(Exception):
                forget()

    def _close_cluster(self) -> None:
        processes = list(self.local_processes)
        if self.cluster is not None:  # a worker the nanny restarted has a new process
            processes += _processes(getattr(w, "pid", None) for w in self.cluster.workers.values())
        for process in list(processes):
            with contextlib.suppress(psutil.Error):
                processes += process.children(recursive=True)  # the agents' workers
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
                self._reap(processes)

    @staticmethod
    def _reap(processes: list[psutil.Process]) -> None:
        """Wait for the local cluster's processes to be gone; kill any that is not. (By
        looking, not waiting: a child is multiprocessing's to reap.)"""
        deadline = time.monotonic() + EXIT_TIMEOUT
        alive = processes
        while True:
            alive = [p for p in alive if _running(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for process in alive:
            log.warning("amqscale bench: process %d of the local Dask cluster outlived "
                        "it: killed", process.pid)
            with contextlib.suppress(psutil.Error):
                process.kill()


def _processes(pids: Any) -> list[psutil.Process]:
    found = []
    for pid in pids:
        if pid:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
