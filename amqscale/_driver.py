"""The driver: the only code in the user's process that touches the workers' rings.

It writes what the core queued for each worker as records that fit the ring (a command too
large for one record is split; nothing is written half), reads every record the workers
publish and hands each whole to the core (an event read is never dropped), parks on the
event rings' eventfds and the workers' pidfds with a deadline, and maps a dead worker to
WorkerDied in the core. It owns the one lock that serialises the core and the rings
between the user's thread and its own two (the linger thread, which hands partial batches
over, and the watcher, which notices a worker's exit): each ring has one writer and one
reader at a time.

Faces wait with :meth:`Driver.wait`: a predicate over core state and a deadline. On an
asyncio loop the driver runs without its threads (``threads=False``): ``amqscale._loop``
watches the rings' eventfds and the pidfds on the loop and does the linger pass there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._supervisor import DEFAULT_RING_CAPACITY, Supervisor, WorkerHandle
from .core import ClientCore, WorkerSlot
from .errors import ContainerClosed, WorkerDied
from .ipc.ring import PeerDied
from .workers import cyrus
from .workers import protocol as p

log = logging.getLogger("amqscale")

# A partial batch for a worker that is awake and has caught up goes at this size, or once
# p.WAKE_INTERVAL passed since the last hand-over (Driver.wants_work).
AWAKE_BATCH = 64
LINGER = 0.001  # seconds a partial batch may wait for the linger thread
START_TIMEOUT = 30.0
# A worker that dies is replaced, at most RESTART_LIMIT times in RESTART_WINDOW seconds per
# worker: one that dies at once, again and again, fails its connections instead.
RESTART_LIMIT = 5
RESTART_WINDOW = 10.0


class Driver:
    """Moves the core's commands to the workers and the workers' events to the core."""

    def __init__(self, workers: int, container_id: str,
                 ring_capacity: int = DEFAULT_RING_CAPACITY, threads: bool = True,
                 restart_workers: bool = True) -> None:
        """Start `workers` worker processes and wait until each is ready.

        With `threads` False the linger and watcher threads are not started: an event
        loop that runs this driver (``amqscale._loop``) installs its own `linger`, and
        watches the pidfds itself."""
        self.supervisor = Supervisor(workers, ring_capacity)
        self.handles = self.supervisor.workers
        try:
            self.max_record_size = self.supervisor.max_record_size
            self.core = ClientCore(workers, container_id,
                                   p.fragment_size(self.max_record_size))
            self.lock = threading.Lock()
            self.closed = False
            self._record = bytearray()  # reused: a fresh 100 KB bytes per write costs faults
            self._handed_over_at = [0.0] * workers
            self._outbound = [h.rings.outbound for h in self.handles]
            self._events_taken_at = 0.0
            self.restart_workers = restart_workers
            self.restarts = 0  # workers replaced
            self._retired: list[WorkerHandle] = []  # replaced workers' handles, to close
            self._user_thread = threading.get_ident()  # the last one to pump
            self._restarted_at: list[list[float]] = [[] for _ in range(workers)]
            self._wait_ready()
        except BaseException:
            self.supervisor.stop()
            raise
        self.linger: Linger = _Linger(self) if threads else _NoLinger()
        self.watcher: _Watcher | None = _Watcher(self) if threads else None
        self.binding: Any = None  # the event loop binding that runs this driver, if any

    # ---- writing --------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise ContainerClosed("the Container is closed")

    def write(self, slot: WorkerSlot, timeout: float | None = None) -> None:
        """Write `slot`'s queued commands (the caller holds the lock).

        While the ring is full this waits up to `timeout` for room; then TimeoutError,
        with the commands not yet written queued again in front (they go with the next
        write: taken messages are never dropped). A dead worker is reported to the core.
        A driver run by an event loop (`binding`) never waits without a timeout: the
        loop's binding writes the rest once the worker frees room.
        """
        if timeout is None and self.binding is not None:
            if self.binding.awaits_room(slot):
                return  # another try would reset the ring's parked flag the wake-up needs
            try:
                self._write(slot, 0.0)
            except TimeoutError:
                self.binding.write_when_room(slot)
            return
        self._write(slot, timeout)

    def _write(self, slot: WorkerSlot, timeout: float | None) -> None:
        queued = slot.queued
        if not queued:
            return
        if slot.failure is not None:
            queued.clear()
            return
        if self.closed:
            raise ContainerClosed("the Container is closed")
        slot.queued = []
        record = self._record
        p.encode_into(queued, record)
        if len(record) > self.max_record_size:
            self._write_split(slot, queued, timeout)
        else:
            self._write_record(slot, record, queued, timeout)
        self._handed_over_at[slot.index] = time.monotonic()

    def _write_record(self, slot: WorkerSlot, record: bytearray, commands: list[p.Command],
                      timeout: float | None) -> bool:
        """One record of `commands`; False if the worker is dead (reported to the core)."""
        try:
            self.handles[slot.index].rings.outbound.write(record, timeout=timeout)
        except TimeoutError:
            slot.queued = commands + slot.queued
            raise
        except PeerDied:
            self._worker_died(self.handles[slot.index])
            return False
        return True

    def _write_split(self, slot: WorkerSlot, commands: list[p.Command],
                     timeout: float | None) -> None:
        """`commands` as several records, each as large as fits, in order."""
        record = self._record
        groups = [commands]
        while groups:
            group = groups.pop()
            p.encode_into(group, record)
            if len(record) > self.max_record_size:
                groups += reversed(_split(group))
                continue
            try:
                if not self._write_record(slot, record, group, timeout):
                    return
            except TimeoutError:  # the rest goes after what _write_record put back
                slot.queued[len(group):len(group)] = [c for g in reversed(groups) for c in g]
                raise

    def linger_pass(self, timeout: float | None) -> bool:
        """Hand every partial batch over and write it (the linger pass); False if the
        driver is closed. A full ring raises TimeoutError after `timeout`: the rest goes
        next pass (see `write` for a driver that an event loop runs)."""
        with self.lock:
            if self.closed:
                return False
            self.core.hand_over_dirty()
            self.write_all(timeout)
        return True

    def write_all(self, timeout: float | None = None) -> None:
        for slot in self.core.slots:
            if slot.queued:
                self.write(slot, timeout)

    def flush(self, settlements: bool = True) -> None:
        """Hand every partial batch over and write everything queued."""
        with self.lock:
            self.core.hand_over_dirty(settlements)
            self.write_all()

    def wants_work(self, slot: WorkerSlot, size: int) -> bool:
        """Should a partial batch of `size` messages go now? Yes if the worker has taken
        all it was given, and either the batch has AWAKE_BATCH messages or p.WAKE_INTERVAL
        passed since the last hand-over.

        A worker that is behind will find the batch grown when it catches up. Waking a
        sleeping worker costs a context switch, far more than the messages handed over,
        so wake-ups are capped and, under load, batches grow instead. A worker that is
        awake and caught up would take a batch for the price of a ring write, but each
        hand-over costs this process a record and a look at the events: when it comes
        back for more within the interval, the batch grows to AWAKE_BATCH first. A lone
        message after a quiet spell goes at once.
        """
        reader = self._outbound[slot.index].reader_state()
        if reader == 0 or (reader == 1 and size >= AWAKE_BATCH):
            return reader == 1
        return time.monotonic() - self._handed_over_at[slot.index] > p.WAKE_INTERVAL

    def mark_dirty(self, link: Any) -> None:
        """`link` holds a partial batch: hand it over at the next wait, or after LINGER."""
        if self.core.mark_dirty(link):
            self.linger.wake()

    # ---- reading --------------------------------------------------------------------------

    def pump(self, timeout: float | None, wake_fds: Sequence[int] = ()) -> None:
        """Apply every event the workers published; wait up to `timeout` for the first.

        The wait also ends when one of `wake_fds` is readable (a face's own pipes: the
        event-driven face's injectors); reading them is the caller's business."""
        self._user_thread = threading.get_ident()
        if self._retired:
            self._close_retired()
        if not self._drain() and timeout != 0:
            self._park(timeout, wake_fds)
            self._drain()
        self._check_workers()

    def _close_retired(self) -> None:
        """Close the rings and pidfds of replaced workers: only a thread in pump() can
        be waiting on them, and one thread at a time pumps (the thread contract:
        refresh_state keeps monitors out)."""
        with self.lock:
            retired, self._retired = self._retired, []
        for handle in retired:
            self.supervisor.retire(handle)

    def refresh_state(self) -> None:
        """refresh() for a property that reports state, on the thread that uses the
        Container (the last one that waited on it). Another thread (a monitor) reads
        what that one last took: taking events itself would race the user's calls,
        which change the core without the lock on their fast paths."""
        if threading.get_ident() == self._user_thread:
            self.refresh()

    def take_events(self) -> None:
        """Take what the workers published, without waiting, at most every LINGER.

        A sender calls this as it hands a batch over: outcomes are then taken as they
        come, a few at a time, instead of a window's worth at once when the window
        fills, which stalled that send for milliseconds (about 5 us an outcome event).
        At most every LINGER, so that a firehose does not pay for it per hand-over."""
        now = time.monotonic()
        if now - self._events_taken_at >= LINGER and self._has_events():
            self._events_taken_at = now
            self.pump(0)

    def _has_events(self) -> bool:
        return any(h.rings.inbound.has_data() for h in self.handles if not h.dead)

    def _drain(self) -> bool:
        """Hand each record to the core whole; True if there was any."""
        got = False
        error: BaseException | None = None
        for handle in self.handles:
            if handle.dead:
                continue
            # Under the lock: the linger thread queues commands meanwhile, and the
            # watcher takes a dead worker's last records (one reader at a time).
            with self.lock:
                if handle.dead:  # it died (and was replaced) while this waited
                    continue
                try:
                    got = self._apply(handle) or got
                except Exception as exc:  # keep reading: later records matter as much
                    error = error or exc
                self.supervisor.check_alive(handle)
        if got:
            self.write_answers()
        if error is not None:
            raise error
        return got

    def write_answers(self) -> None:
        """Write what the core queued in answer to events (a reconnect's open, its
        attaches and resends, a refused inbound link): nothing else writes it. (The
        look without the lock is a hint: what another thread queues, it writes.)"""
        if any(slot.queued for slot in self.core.slots):
            with self.lock:
                if not self.closed:
                    self.write_all()

    def _apply(self, handle: WorkerHandle) -> bool:
        """Apply what `handle`'s worker published (the caller holds the lock)."""
        slot = self.core.slots[handle.index]
        error: BaseException | None = None
        records = handle.rings.inbound.read_batch()
        for record in records:
            try:
                self.core.handle_events(slot, p.decode_events(record))
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return bool(records)

    def _park(self, timeout: float | None, wake_fds: Sequence[int] = ()) -> None:
        """Sleep until a worker publishes, dies, one of `wake_fds` is readable, or the
        timeout passes (no lost wake-up)."""
        fds: list[int] = list(wake_fds)
        live = [h for h in self.handles if not h.dead]
        for handle in live:
            if handle.rings.inbound.park():
                for other in live:
                    other.rings.inbound.unpark(drain=False)
                return
            fds.append(handle.rings.inbound.fileno())
            if handle.pidfd is not None:
                fds.append(handle.pidfd)
        readable: list[int] = []
        try:
            if fds:
                readable = select.select(fds, [], [], timeout)[0]
                for handle in live:
                    if handle.pidfd in readable:
                        handle.exit_seen = True
            elif timeout:
                time.sleep(min(timeout, 0.05))
        finally:
            for handle in live:
                inbound = handle.rings.inbound
                inbound.unpark(drain=inbound.fileno() in readable)

    def refresh(self) -> None:
        """Apply what the workers published and notice any that exited (without waiting):
        before placing new work, so that none goes to a dead worker."""
        if self.closed:
            return
        pidfds = [h.pidfd for h in self.handles if not h.dead and h.pidfd is not None]
        exited = select.select(pidfds, [], [], 0)[0] if pidfds else []
        for handle in self.handles:
            if handle.pidfd in exited:
                handle.exit_seen = True
        self.pump(0)

    def _check_workers(self) -> None:
        for handle in self.handles:
            if handle.dead and self.core.slots[handle.index].failure is None:
                with self.lock:
                    self._worker_died(handle)

    def _worker_died(self, handle: WorkerHandle) -> None:
        """A worker exited (the caller holds the lock, its last records were applied):
        a new one takes its place and its connections are opened again there, unless
        restarts are off or it died too often (RESTART_LIMIT); then what it carried
        fails with WorkerDied."""
        handle.dead = True
        with contextlib.suppress(Exception):
            handle.process.poll()
        cyrus.remove_own_directories(handle.process.pid)  # its listeners' sasldb
        slot = self.core.slots[handle.index]
        code = handle.process.returncode
        if self.supervisor.workers[handle.index] is not handle:
            return  # replaced already
        new = self._restart(handle) if self.restart_workers else None
        if new is None:
            log.warning("worker %d (pid %d) exited with code %s", handle.index,
                        handle.process.pid, code)
            self.core.worker_died(slot, code)
            return
        log.warning("worker %d (pid %d) exited with code %s; replaced by pid %d",
                    handle.index, handle.process.pid, code, new.process.pid)
        self._outbound[handle.index] = new.rings.outbound
        self._handed_over_at[handle.index] = 0.0
        self.restarts += 1
        self.core.worker_restarted(slot, code)
        self._retired.append(handle)  # closed by the next pump: one may wait on it now
        if self.watcher is not None:
            self.watcher.replace(handle, new)
        if self.binding is not None:
            self.binding.watch(new)
        self.write_all()  # the shards' opens, attaches and resends, to the new worker

    def _restart(self, handle: WorkerHandle) -> WorkerHandle | None:
        """Spawn the dead worker's replacement, or None (too many recent restarts, the
        driver closing, or the spawn failed: reported, never raised into a wait)."""
        now = time.monotonic()
        recent = [t for t in self._restarted_at[handle.index] if now - t < RESTART_WINDOW]
        if self.closed or len(recent) >= RESTART_LIMIT:
            return None
        self._restarted_at[handle.index] = [*recent, now]
        if self.binding is not None:
            self.binding.forget(handle)  # before its rings close under the loop
        try:
            return self.supervisor.respawn(handle.index)
        except Exception:
            traceback.print_exc()
            return None

    def _wait_ready(self) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + START_TIMEOUT
        while len(ready) < len(self.handles):
            for handle in self.handles:
                if handle.dead:
                    continue
                for record in handle.rings.inbound.read_batch():
                    if any(type(e) is p.Ready for e in p.decode_events(record)):
                        ready.add(handle.index)
                self.supervisor.check_alive(handle)
            dead = [h for h in self.handles if h.dead]
            if dead:
                raise WorkerDied(f"worker {dead[0].index} exited during start-up "
                                 f"(exit code {dead[0].process.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not start within {START_TIMEOUT} s")
            if len(ready) < len(self.handles):
                self._park(min(0.05, max(0.0, deadline - time.monotonic())))

    # ---- waiting --------------------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], timeout: float | None, what: str,
             settlements: bool = True) -> None:
        """Pump events until `ready()`; TimeoutError naming `what` after `timeout` seconds.

        First the partial batches are handed over; settlements only if `settlements`:
        waiting for messages needs none, and the linger thread takes them within LINGER,
        which spares the worker a wake-up per message received."""
        if ready():  # what is known already is answered, even after close()
            return
        self.check_open()
        self.flush(settlements)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self.pump(1.0 if remaining is None else min(remaining, 1.0))
            self.check_open()

    # ---- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Hand over what is batched, stop the threads and the workers."""
        if self.closed:
            return
        self.linger.stop()
        if self.watcher is not None:
            self.watcher.stop()
        with self.lock:
            # Settlements and sends still batched go first: the peer must not see the
            # connection close with messages this side already took care of.
            with contextlib.suppress(TimeoutError, OSError):
                self.core.hand_over_dirty()
                self.write_all(timeout=1.0)
            self.closed = True
            self.core.close()
            self.supervisor.stop()
            for handle in self._retired:
                self.supervisor.retire(handle)
            self._retired.clear()


def _split(commands: list[p.Command]) -> list[list[p.Command]]:
    """Two or more smaller groups whose records are smaller: halves of the list, or of the
    payloads or ids of its one command."""
    if len(commands) > 1:
        half = len(commands) // 2
        return [commands[:half], commands[half:]]
    command = commands[0]
    if type(command) is p.Send and len(command.payloads) > 1:
        half = len(command.payloads) // 2
        return [[p.Send(command.link, command.first_seq, command.payloads[:half],
                        command.settled)],
                [p.Send(command.link, command.first_seq + half, command.payloads[half:],
                        command.settled)]]
    if type(command) is p.Settle and len(command.ids) > 1:
        half = len(command.ids) // 2
        return [[_settle_part(command, command.ids[:half])],
                [_settle_part(command, command.ids[half:])]]
    raise AssertionError(f"a command too large for any ring record: {type(command).__name__}")


def _settle_part(command: p.Settle, ids: list[int]) -> p.Settle:
    return p.Settle(command.link, ids, command.state, command.condition,
                    command.delivery_failed, command.undeliverable_here, command.annotations)


class Linger(Protocol):
    """What hands partial batches over about LINGER seconds after they were started."""

    def wake(self) -> None: ...

    def stop(self) -> None: ...


class _NoLinger:
    def wake(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Linger:
    """Hands over partial batches about LINGER seconds after they were started.

    The hot path batches sends and settlements; a send batch goes as soon as its worker
    has caught up, settlements ride with the next batch or wait for this thread, so a
    message costs no wake-up of its own in either direction. It sleeps on an Event while
    nothing is pending, so it costs nothing when idle and never spins beside the engines;
    while busy it stays set, and passes every LINGER until one finds nothing to do.
    It holds the driver weakly: a Container dropped without close() can still be collected.
    """

    def __init__(self, driver: Driver) -> None:
        self._driver = weakref.ref(driver)
        self._pending = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        if not self._pending.is_set():
            self._pending.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_linger_loop, args=(self._driver, self._pending, self),
                    name="amqscale-linger", daemon=True)
                self._thread.start()

    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        self._pending.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _linger_loop(driver_ref: weakref.ref[Driver], pending: threading.Event,
                 linger: _Linger) -> None:
    while True:
        pending.wait()
        if linger.stopped():
            return
        time.sleep(LINGER)
        pending.clear()  # what is marked from now on waits for the next pass
        driver = driver_ref()
        if driver is None or linger.stopped():
            return
        try:
            busy = bool(driver.core.dirty)  # a hint: read without the lock
            if not driver.linger_pass(timeout=0.05):
                return
            if busy:
                # Partial batches now are likely again soon: stay set, so that marking
                # the next one costs the hot path no Event.set() (a wake-up); a pass that
                # finds nothing lets the thread sleep.
                pending.set()
        except TimeoutError:  # a full ring: what did not fit goes with the next pass
            pending.set()
        except Exception:  # never die: the calls that wait see the state this left
            traceback.print_exc()
        del driver


class _Watcher:
    """Notices a worker's exit as it happens: a thread asleep on the workers' pidfds.

    Without it a death is seen only when a call next waits, and a sender would go on
    handing messages to the dead worker's ring in the meantime (they would be kept, but
    not sent). On an exit it applies what the worker published last, then reports it dead
    to the core, under the driver's lock, so that no new work goes to it (or a new worker
    takes its place: `replace`). Asleep in select() it costs nothing; it holds the driver
    weakly.
    """

    def __init__(self, driver: Driver) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self.pidfds = {h.pidfd: h.index for h in driver.handles if h.pidfd is not None}
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=_watch, args=(weakref.ref(driver), self, self._wake_r),
            name="amqscale-watch", daemon=True)
        self._thread.start()

    def replace(self, old: WorkerHandle, new: WorkerHandle) -> None:
        """Watch `new` instead of `old` (from any thread)."""
        with self._lock:
            if old.pidfd is not None:
                self.pidfds.pop(old.pidfd, None)
            if new.pidfd is not None:
                self.pidfds[new.pidfd] = new.index
        os.write(self._wake_w, b"r")

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self.pidfds)

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _watch(driver_ref: weakref.ref[Driver], watcher: _Watcher, wake_fd: int) -> None:
    while True:
        fds = watcher.snapshot()
        try:
            ready = select.select([wake_fd, *fds], [], [])[0]
        except OSError:  # a pidfd closed under us: the Container is stopping
            return
        if wake_fd in ready:
            if b"x" in os.read(wake_fd, 64):
                return
            continue  # the pidfds changed
        driver = driver_ref()
        if driver is None:
            return
        for fd in ready:
            with watcher._lock:
                index = watcher.pidfds.pop(fd, None)
            if index is None:
                continue
            handle = driver.handles[index]
            handle.exit_seen = True
            with driver.lock:
                if driver.closed or handle.dead:
                    continue
                try:
                    driver._apply(handle)  # its last words first
                except Exception:
                    traceback.print_exc()
                driver.supervisor.check_alive(handle)
                if handle.dead:
                    driver._worker_died(handle)
        del driver
