"""Spawning, watching and stopping the worker processes (the driver moves their records).

Each worker gets a ring pair (commands in, events out) whose shared memory it inherits as
file descriptors: the segments' names are unlinked as soon as they are created, so nothing
is left in /dev/shm whichever process dies and however. Workers die with their parent
(PR_SET_PDEATHSIG, and they watch the parent's pidfd); the supervisor watches each worker's
pidfd, so a dead worker is noticed as soon as the user's process next waits or pumps.

Nothing here runs in a thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import msgspec

from .ipc.ring import RingPair
from .workers import cyrus
from .workers import protocol as p

DEFAULT_RING_CAPACITY = 8 * 1024 * 1024
STOP_TIMEOUT = 5.0


@dataclass
class WorkerHandle:
    """The user process's side of one worker: its process, rings and pidfd."""

    index: int
    process: subprocess.Popen[bytes]
    rings: RingPair
    pidfd: int | None
    dead: bool = False
    exit_seen: bool = False  # its pidfd turned readable: it has exited


class Supervisor:
    def __init__(self, workers: int, ring_capacity: int = DEFAULT_RING_CAPACITY) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        self.ring_capacity = ring_capacity
        self.workers: list[WorkerHandle] = []
        self.closed = False
        # Every worker is started from this one thread: a worker dies with the thread
        # that started it (PR_SET_PDEATHSIG is per thread), and the thread that notices a
        # death and replaces the worker may be a user's short-lived one.
        self._spawner = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="amqscale-spawn")
        # Worker 0 accepts inbound connections and deals them to the others over these.
        channels = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    for _ in range(workers - 1)]
        try:
            for index in range(workers):
                handoff = ([a for a, _ in channels] if index == 0
                           else [channels[index - 1][1]])
                self.workers.append(self._spawn(index, [s.fileno() for s in handoff]))
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
                            handoff=handoff, sys_path=[x for x in sys.path if x])
        try:
            process = self._spawner.submit(
                subprocess.Popen,
                [sys.executable, "-m", "amqscale.workers",
                 msgspec.json.encode(spec).decode()],
                pass_fds=(*handles.fds(), *handoff),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            ).result()
        except BaseException:
            rings.close()
            raise
        pidfd = os.pidfd_open(process.pid) if hasattr(os, "pidfd_open") else None
        return WorkerHandle(index, process, rings, pidfd)

    def respawn(self, index: int) -> WorkerHandle:
        """A new worker in place of the dead worker `index`. The old one's rings and
        pidfd stay open: another thread may be waiting on them; the caller closes them
        (`retire`) once none can be. The new worker has no hand-off channel: it is dealt
        no inbound connections (a new worker 0 keeps those it accepts)."""
        old = self.workers[index]
        self._reap(old, time.monotonic())
        worker = self._spawn(index, [])
        self.workers[index] = worker
        return worker

    @staticmethod
    def retire(worker: WorkerHandle) -> None:
        """Close a replaced worker's rings and pidfd."""
        worker.rings.close()
        if worker.pidfd is not None:
            os.close(worker.pidfd)
            worker.pidfd = None

    def check_alive(self, worker: WorkerHandle) -> None:
        """Mark `worker` dead once it has exited (its last events were read before)."""
        # With a pidfd, only once it turned readable: a waitpid per drain costs a syscall.
        if worker.dead or (worker.pidfd is not None and not worker.exit_seen):
            return
        if worker.process.poll() is None:
            return
        worker.dead = True

    # ---- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every worker to close its connections and exit; kill the ones that don't."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if not worker.dead and worker.process.poll() is None:
                try:
                    worker.rings.outbound.write(p.encode([p.Shutdown()]), timeout=1.0)
                except (TimeoutError, OSError):
                    worker.process.kill()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            self._reap(worker, deadline)
            worker.rings.close()
            if worker.pidfd is not None:
                os.close(worker.pidfd)
                worker.pidfd = None
        self._spawner.shutdown(wait=False)

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
        cyrus.remove_own_directories(worker.process.pid)
