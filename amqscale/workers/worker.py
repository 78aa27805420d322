"""A worker process: one Proton engine, its share of the connections, two rings.

The loop, once per wake-up: take every command from the command ring, let the engine act
on them and on every ready socket, then publish the events of the whole pass as one ring
record. It parks on the network's selector, which watches the sockets, the command ring's
eventfd and the parent's pidfd, so a dead parent ends the worker at once (PR_SET_PDEATHSIG
backs that up). The engine (the proton adapter) and the network (sockets) are separate
modules; this loop only joins them to the rings.

While the event ring is full the worker stops reading sockets: the peers then stop being
granted credit's worth of traffic, which is how backpressure reaches the network.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import socket
import sys
import time

import msgspec

from ..ipc.ring import RingPair, RingPairHandles, RingReader, RingWriter
from . import protocol as p
from .engine import INTERNAL_ERROR, Engine, log_internal
from .inworker import WATCHED, InWorker
from .network import Network

# What an event costs in a record besides its payload bytes (msgpack headers, ids), a bound
# for the budget; events with no payloads are sized by encoding them (they are rare).
PAYLOAD_OVERHEAD = 8
EVENT_OVERHEAD = 64
SHUTDOWN_GRACE = 2.0  # seconds to close connections cleanly on Shutdown
TICK_INTERVAL = 0.1  # idle timeouts are checked this often (AMQP heartbeats are seconds)
PR_SET_PDEATHSIG = 1


class Worker:
    def __init__(self, index: int, commands: RingReader, events: RingWriter,
                 handoff: list[socket.socket] | None = None) -> None:
        self.index = index
        self.commands = commands
        self.events = events
        max_record = events.max_record_size
        # Records are sealed at `budget` bytes; one more event of at most `event_limit`
        # bytes then still fits (see p.record_budget).
        self.budget = p.record_budget(max_record)
        self.event_limit = p.fragment_size(max_record)
        self.engine = Engine(index, self._emit, fragment=self.event_limit)
        self.network = Network(self.engine, handoff, deals=index == 0)
        # Receivers whose messages a handler takes here (OpenLink.handler).
        self.inworker = InWorker(index, self.engine.handle, self._emit_up,
                                 self.network.write_all)
        self.pending: list[p.Event] = []
        self.pending_bytes = 0
        self.outbox: list[bytes] = []
        self.held_until: float | None = None  # events held back to spare a wake-up
        self.woke_reader_at = 0.0
        self.stopping_since: float | None = None
        self.reading = True
        self.next_tick = 0.0

    # ---- events out ----------------------------------------------------------------------

    def _emit(self, event: p.Event) -> None:
        """An event from the engine: the in-worker handlers take their links' messages,
        the rest goes to the user process."""
        inworker = self.inworker
        if (inworker.links and type(event) in WATCHED
                and event.link in inworker.links  # type: ignore[union-attr]
                and inworker.take(event)):
            return
        self._emit_up(event)

    def _emit_up(self, event: p.Event) -> None:
        """Add an event to the pass's record; seal the record once it reaches the budget."""
        if isinstance(event, p.Deliveries):  # once per batch, not per message
            payloads = event.payloads
            size = sum(map(len, payloads)) + PAYLOAD_OVERHEAD * len(payloads)
            if size > self.event_limit and len(payloads) > 1:
                for piece in split_deliveries(event, self.event_limit):
                    self._emit_up(piece)
                return
        else:
            size = self._event_size(event)
        self.pending.append(event)
        self.pending_bytes += size
        if self.pending_bytes >= self.budget:
            self._seal()

    @staticmethod
    def _event_size(event: p.Event) -> int:
        """A bound on what an event adds to a record."""
        if isinstance(event, p.Outcomes):
            annotations = len(event.annotations) if event.annotations else 0
            return PAYLOAD_OVERHEAD * len(event.runs) + EVENT_OVERHEAD + annotations
        if isinstance(event, p.DeliveryPart):
            return len(event.chunk) + EVENT_OVERHEAD
        if isinstance(event, p.Credit):
            return EVENT_OVERHEAD
        return len(p.encode(event))  # rare; conditions and addresses come from peers

    def _seal(self) -> None:
        if self.pending:
            self.outbox.append(p.encode(self.pending))
            self.pending = []
            self.pending_bytes = 0

    def _publish(self) -> None:
        """Write the pass's events, unless that would wake a sleeping user again within
        WAKE_INTERVAL: then they wait (and grow) until it has passed.

        A wake-up costs each side tens of microseconds of CPU; one per message at
        moderate rates costs more CPU than the messages, which is what makes a pipeline
        fall behind at a rate it sustains flat out.
        """
        self.engine.flush_events()
        self._seal()
        self.held_until = None
        if not self.outbox:
            return
        if self.events.reader_parked():
            now = time.monotonic()
            if now - self.woke_reader_at < p.WAKE_INTERVAL:
                self.held_until = self.woke_reader_at + p.WAKE_INTERVAL
                return
            self.woke_reader_at = now
        written = self.events.write_batch(self.outbox)
        del self.outbox[:written]

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        network = self.network
        network.watch(self.commands.fileno(), "commands")
        peer = self.commands.peer_fileno()
        if peer is not None:
            network.watch(peer, "parent")
        self._emit(p.Ready(os.getpid()))
        self._publish()
        while not self._finished():
            try:
                if self._pass():
                    return  # the parent is gone
            except Exception as exc:  # whatever went wrong, the other connections go on
                log_internal(exc, "the worker's loop failed")
                time.sleep(0.001)  # a fault that recurs each pass must not spin a core

    def _pass(self) -> bool:
        self._take_commands()
        self.engine.process()
        if self.inworker.links:
            self._run_handlers()
        self.network.sync()
        self.network.write_all()
        self._publish()
        self.network.update(reading=not self.outbox or self.held_until is not None)
        self._watch_room()
        return self._wait_and_dispatch()

    def _run_handlers(self) -> None:
        """The in-worker handlers take what this pass gathered for them; what they settle
        and the credit they grant go out in this pass's writes."""
        self.engine.flush_events()
        try:
            self.inworker.run()
        except Exception as exc:  # a bug here; the handlers' own errors end their links
            log_internal(exc, "running the in-worker handlers failed")

    def _finished(self) -> bool:
        if self.stopping_since is None:
            return False
        # The handlers hear of their links' ends (on_link_closed) before the worker exits.
        drained = not self.engine.connections and not self.outbox and not self.inworker.ready
        return drained or time.monotonic() - self.stopping_since > SHUTDOWN_GRACE

    def _take_commands(self) -> None:
        handle = self.engine.handle
        for record in self.commands.read_batch():
            try:
                commands = p.decode_commands(record)
            except msgspec.DecodeError as exc:  # a bug on the user side; nothing to end
                log_internal(exc, "a command record could not be decoded (dropped)")
                continue
            for command in commands:
                if type(command) is p.Shutdown:
                    self.engine.close_all()
                    self.stopping_since = time.monotonic()
                elif type(command) is p.Stats:
                    engine = self.engine
                    self._emit(p.WorkerStats(self.index, os.getpid(), len(engine.connections),
                                             engine.sent, engine.received,
                                             len(engine.tls_domains)))
                elif type(command) is p.OpenLink and command.handler is not None:
                    self._open_handled(command)
                elif type(command) is p.CloseLink and command.link in self.inworker.links:
                    self.inworker.user_close(command)  # its settlements go first
                else:
                    handle(command)  # contained: a failure ends its link or connection

    def _open_handled(self, command: p.OpenLink) -> None:
        try:
            self.inworker.open(command)
        except Exception as exc:  # a bug here must end only this link
            log_internal(exc, "opening a link for an in-worker handler failed")
            self.inworker.links.pop(command.link, None)
            self._emit_up(p.LinkClosed(command.link, p.Condition(
                INTERNAL_ERROR, f"opening link {command.link} for the handler "
                f"{command.handler!r} failed in the worker: {type(exc).__name__}: {exc}")))

    def _wait_and_dispatch(self) -> bool:
        timeout = self._tick()
        if self.inworker.links:
            handlers_due = self.inworker.wait_time()
            if handlers_due is not None:
                timeout = min(timeout, handlers_due)
        if self.stopping_since is not None:
            timeout = min(timeout, 0.05)
        held_until = self.held_until
        held = held_until is not None
        if held_until is not None:
            timeout = min(timeout, max(0.0, held_until - time.monotonic()))
        parked = not self.commands.park()  # False: commands arrived meanwhile
        # While events wait for room, ask to be woken when the user frees some. The ring
        # clears that flag when it wakes us, so it is asked again on every pass.
        waiting_for_room = (bool(self.outbox) and not held
                            and not self.events.park(len(self.outbox[0])))
        may_sleep = parked and (waiting_for_room or held or not self.outbox)
        ready = self.network.select(timeout if may_sleep else 0.0)
        # Reset an eventfd only when it woke us: a read of an empty one is a wasted syscall.
        if parked:
            self.commands.unpark(drain=False)
        if waiting_for_room:
            self.events.unpark(drain=False)
        for target in ready:
            if target == "commands":
                self.commands.unpark()  # the next pass reads the ring
            elif target == "space":
                self.events.unpark()
            elif target == "parent":
                return True
        return False

    def _tick(self) -> float:
        """Timer work, at most every TICK_INTERVAL; seconds the loop may sleep."""
        now = time.monotonic()
        if now >= self.next_tick:
            due = self.network.tick(now)
            self.next_tick = now + (TICK_INTERVAL if due is None else min(due, TICK_INTERVAL))
        return max(0.0, self.next_tick - now)

    def _watch_room(self) -> None:
        """While the event ring is full, watch for room in it (and read no sockets)."""
        reading = not self.outbox or self.held_until is not None
        if reading != self.reading:
            self.reading = reading
            if reading:
                self.network.unwatch(self.events.fileno())
            else:
                self.network.watch(self.events.fileno(), "space")


def split_deliveries(event: p.Deliveries, limit: int) -> list[p.Deliveries]:
    """`event` as consecutive Deliveries of at most `limit` bytes each (one payload over
    the limit goes alone: the engine never gathers one larger than the limit)."""
    pieces: list[p.Deliveries] = []
    settled = set(event.settled or ())
    start = size = 0
    payloads = event.payloads
    for i, payload in enumerate(payloads):
        cost = len(payload) + PAYLOAD_OVERHEAD
        if size and size + cost > limit:
            pieces.append(_deliveries_slice(event, start, i, settled))
            start, size = i, 0
        size += cost
    pieces.append(_deliveries_slice(event, start, len(payloads), settled))
    return pieces


def _deliveries_slice(event: p.Deliveries, start: int, end: int,
                      settled: set[int]) -> p.Deliveries:
    positions = [i - start for i in range(start, end) if i in settled]
    return p.Deliveries(event.link, event.first_id + start, event.payloads[start:end],
                        positions or None)


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill us when the parent dies, closing the race at start-up."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spec = msgspec.json.decode(argv[0].encode(), type=p.WorkerSpec)
    # What the user process imports, an in-worker handler's module included, is found
    # here too (its script's directory, its PYTHONPATH, its site-packages).
    sys.path.extend(entry for entry in spec.sys_path if entry not in sys.path)
    _die_with_parent(spec.parent_pid)
    faulthandler.enable()  # a crash in C code still says where, on the user's stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the user's Ctrl-C is the parent's to handle
    rings = RingPair.attach(RingPairHandles.decode(spec.rings))
    try:
        handoff = [socket.socket(fileno=fd) for fd in spec.handoff]
        worker = Worker(spec.index, rings.inbound, rings.outbound, handoff)
        worker.run()
    finally:
        rings.close()
