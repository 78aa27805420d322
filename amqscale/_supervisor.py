"""Spawning, watching and stopping the worker processes; moving records to and from them.

Each worker gets a ring pair (commands in, events out) whose shared memory it inherits as
file descriptors: the segments' names are unlinked as soon as they are created, so nothing
is left in /dev/shm whichever process dies and however. Workers die with their parent
(PR_SET_PDEATHSIG, and they watch the parent's pidfd); the supervisor watches each worker's
pidfd, so a dead worker is noticed as soon as the user's process next waits or pumps.

Nothing here runs in a thread: events are drained inside the user's API calls.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from .errors import WorkerDied
from .ipc.ring import RingPair
from .workers import protocol as p

DEFAULT_RING_CAPACITY = 8 * 1024 * 1024
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


@dataclass
class WorkerHandle:
    """The user process's side of one worker."""

    index: int
    process: subprocess.Popen[bytes]
    rings: RingPair
    pidfd: int | None
    ready: bool = False
    dead: bool = False
    exit_seen: bool = False  # its pidfd turned readable: it has exited
    queued: list[p.Command] = field(default_factory=list)
    # Reused for every record: a fresh 100 KB bytes per flush costs page faults.
    record: bytearray = field(default_factory=bytearray)
    handed_over_at: float = 0.0

    def queue(self, command: p.Command) -> None:
        self.queued.append(command)

    def flush(self, timeout: float | None) -> None:
        """Write the queued commands as one record (blocking while the ring is full)."""
        if not self.queued or self.dead:
            self.queued.clear()
            return
        p.encode_into(self.queued, self.record)
        self.queued = []
        self.rings.outbound.write(self.record, timeout=timeout)
        self.handed_over_at = time.monotonic()

    def wants_work(self) -> bool:
        """Should a partial batch go now? Yes if the worker has taken all it was given,
        unless that means waking it again within p.WAKE_INTERVAL.

        A worker that is behind will find the batch grown when it catches up; one that is
        awake and caught up takes it for the price of a ring write. Waking a sleeping
        worker costs a context switch, far more than the messages handed over, so
        wake-ups are capped and, under load, batches grow instead. A lone message after a
        quiet spell goes at once.
        """
        commands = self.rings.outbound
        if not commands.reader_caught_up():
            return False
        return (not commands.reader_parked()
                or time.monotonic() - self.handed_over_at > p.WAKE_INTERVAL)


class Supervisor:
    def __init__(self, workers: int, ring_capacity: int = DEFAULT_RING_CAPACITY) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        self.ring_capacity = ring_capacity
        self.workers: list[WorkerHandle] = []
        self.closed = False
        # Worker 0 accepts inbound connections and deals them to the others over these.
        channels = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    for _ in range(workers - 1)]
        try:
            for index in range(workers):
                handoff = ([a for a, _ in channels] if index == 0
                           else [channels[index - 1][1]])
                self.workers.append(self._spawn(index, [s.fileno() for s in handoff]))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        finally:
            for pair in channels:
                for end in pair:
                    end.close()

    @property
    def max_record_size(self) -> int:
        return self.workers[0].rings.outbound.max_record_size

    def _spawn(self, index: int, handoff: list[int]) -> WorkerHandle:
        rings = RingPair.create(self.ring_capacity)
        handles = rings.peer_handles()
        spec = p.WorkerSpec(index=index, parent_pid=os.getpid(), rings=handles.encode(),
                            handoff=handoff)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "amqscale.workers",
                 msgspec.json.encode(spec).decode()],
                pass_fds=(*handles.fds(), *handoff),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            rings.close()
            raise
        pidfd = os.pidfd_open(process.pid) if hasattr(os, "pidfd_open") else None
        return WorkerHandle(index, process, rings, pidfd)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            for worker, event in self.poll(max(0.0, deadline - time.monotonic())):
                if type(event) is p.Ready:
                    worker.ready = True
            dead = [w for w in self.workers if w.dead]
            if dead:
                raise WorkerDied(f"worker {dead[0].index} exited during start-up "
                                 f"(exit code {dead[0].process.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not start within {START_TIMEOUT} s")

    # ---- moving records ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        for worker in self.workers:
            if worker.queued:
                worker.flush(timeout)

    def poll(self, timeout: float | None) -> Iterator[tuple[WorkerHandle, p.Event]]:
        """Yield the events every worker has published; wait up to `timeout` for the first."""
        got = False
        for worker, event in self._drain():
            got = True
            yield worker, event
        if got or timeout == 0:
            return
        self._park(timeout)
        yield from self._drain()

    def has_events(self) -> bool:
        """Has any worker published something not read yet? (No system call.)"""
        return any(w.rings.inbound.has_data() for w in self.workers if not w.dead)

    def _drain(self) -> Iterator[tuple[WorkerHandle, p.Event]]:
        for worker in self.workers:
            if worker.dead:
                continue
            for record in worker.rings.inbound.read_batch():
                for event in p.decode_events(record):
                    yield worker, event
            self._check_alive(worker)

    def _park(self, timeout: float | None) -> None:
        """Sleep until a worker publishes, dies, or the timeout passes (no lost wake-up)."""
        fds: list[int] = []
        live = [w for w in self.workers if not w.dead]
        for worker in live:
            if worker.rings.inbound.park():
                for other in live:
                    other.rings.inbound.unpark(drain=False)
                return
            fds.append(worker.rings.inbound.fileno())
            if worker.pidfd is not None:
                fds.append(worker.pidfd)
        readable: list[int] = []
        try:
            if fds:
                readable = select.select(fds, [], [], timeout)[0]
                for worker in live:
                    if worker.pidfd in readable:
                        worker.exit_seen = True
            elif timeout:
                time.sleep(min(timeout, 0.05))
        finally:
            for worker in live:
                inbound = worker.rings.inbound
                inbound.unpark(drain=inbound.fileno() in readable)

    def _check_alive(self, worker: WorkerHandle) -> None:
        # With a pidfd, only once it turned readable: a waitpid per drain costs a syscall.
        if worker.dead or (worker.pidfd is not None and not worker.exit_seen):
            return
        if worker.process.poll() is None:
            return
        # Take whatever it published before it died, then mark it.
        worker.dead = True

    def dead_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.dead]

    # ---- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every worker to close its connections and exit; kill the ones that don't."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if not worker.dead and worker.process.poll() is None:
                try:
                    worker.queued = [p.Shutdown()]
                    worker.flush(timeout=1.0)
                except (TimeoutError, OSError):
                    worker.process.kill()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            self._reap(worker, deadline)
            worker.rings.close()
            if worker.pidfd is not None:
                os.close(worker.pidfd)
                worker.pidfd = None

    @staticmethod
    def _reap(worker: WorkerHandle, deadline: float) -> None:
        # Keep draining its events so a worker blocked on a full ring can finish.
        while worker.process.poll() is None and time.monotonic() < deadline:
            worker.rings.inbound.read_batch()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=0.02)
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        worker.dead = True
