"""Handlers inside the workers: a receiving link's messages go to a handler object in the
worker that carries the link, beside its engine, with no ring hop per message.

The user opens a receiver with ``handler="package.module:Name"`` (``OpenLink.handler``).
Each worker that carries a shard of it imports the name and calls it once (with
``handler_args``), for all the receiver's shards it carries; its ``on_start`` runs then.
The worker loop gives this module the events of those links (``take``) instead of
publishing them, and calls ``run()`` once per pass: it decodes the messages (a list at a
time, in C) and calls ``on_message(event)`` for each with proton's rules (``auto_accept``,
``Reject``, ``Release``), settles what the handler settled and keeps the link's credit
topped up (half the link's credit at a time), straight into the engine. The user process
sees only ``HandlerCounts`` (totals per link, at most one per link per pass) and the
links opening and closing. ``event.container.schedule(delay)`` gives a handler timers
(``on_timer_task``), run by the same passes.

Errors: a name that cannot be imported, or a handler that cannot be made, ends the open
with ``HANDLER_NOT_FOUND`` / ``HANDLER_ERROR`` before the link is attached. A callback that
raises ends only its link: what the link was given and not settled goes back to the
broker (released, for other consumers), and the LinkClosed the user gets carries
``HANDLER_ERROR`` and the traceback. The worker goes on with its other links. Each link
has a session of its own, ended after the link (``OpenLink.own_session``): a broker that
keeps what it sent to a detached link (RabbitMQ 3.10) gives it back then.

Fair shares come from the broker: each link keeps the same credit granted, and a broker
spreads a queue over the consumers that have credit, so a slower handler is offered
fewer messages. Credit is granted only for what the handler has finished with.
"""

from __future__ import annotations

import heapq
import importlib
import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from .. import codec
from ..handlers import MessagingHandler, Reject, Release, dispatch, messaging_handler
from ..handlers import Task as _Task
from ..message import Message
from ..types import symbol
from . import protocol as p

_decode_list: Callable[[list[bytes]], list[Message] | None] = (
    (lambda payloads: None) if codec._ccodec is None else codec._ccodec.decode_messages)

# Events of a handler's link that this module takes from the worker's loop.
WATCHED = frozenset((p.Deliveries, p.DeliveryPart, p.LinkOpened, p.LinkClosed))
# Messages given to handlers per pass of the worker's loop, at most (in pieces of CHUNK):
# between passes the worker reads its sockets, so the broker is not held up while the
# handlers work through a large batch.
RUN_BUDGET = 256
CHUNK = 64
# Counts go to the user at most this often per worker (each record may wake the user's
# process, which costs it tens of microseconds), and at once when a link ends.
COUNTS_INTERVAL = 0.02


def load(path: str, args: dict[str, Any] | None) -> Any:
    """Import `path` ("package.module:Name", or "package.module.Name") and call it."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"a handler path is 'package.module:Name', not {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(**(args or {}))


class WorkerContainer:
    """What ``event.container`` is inside a worker: the worker, not the user's Container
    (connections and links are opened from the user's process). ``schedule(delay,
    handler=None)`` runs ``on_timer_task`` in this worker after `delay` seconds, on
    `handler` or on the handler whose callback called it; it returns a Task (cancel())."""

    def __init__(self, index: int, schedule: Callable[[float, Any], Task]) -> None:
        self.worker = index
        self.pid = os.getpid()
        self.container_id = f"amqscale-worker-{index}"
        self.schedule = schedule

    def __repr__(self) -> str:
        return f"<WorkerContainer worker={self.worker} pid={self.pid}>"


class Task(_Task):
    """A timer of an in-worker handler (``event.task`` in its ``on_timer_task``), which
    belongs to the `host` whose callback scheduled it."""

    def __init__(self, deadline: float, handler: Any, host: Host) -> None:
        super().__init__(deadline, handler)
        self.host = host

    def __repr__(self) -> str:
        return f"<worker Task due={self.deadline:.3f} cancelled={self.cancelled}>"


class Connection:
    """``event.connection`` in a worker: the shard carrying the link. Its close()
    detaches this handler's links on it (the connection itself is the user's)."""

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.links: list[Receiver] = []

    def close(self) -> None:
        for link in list(self.links):
            link.close()

    def session(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<worker Connection {self.id}>"


class Receiver:
    """``event.receiver`` / ``event.link`` in a worker: one shard's receiving link."""

    is_sender = False
    is_receiver = True

    def __init__(self, host: Host, cmd: p.OpenLink, connection: Connection) -> None:
        self._host = host
        self.id = cmd.link
        self.name = cmd.name
        self.source = cmd.source
        self.target = cmd.target
        self.remote_source: p.Terminus | None = None
        self.remote_condition: p.Condition | None = None
        self.connection = connection
        self.credit = max(1, cmd.credit)  # kept granted: topped up as messages are handled
        self.worker = host.worker.index
        self.queue: deque[Any] = deque()  # Deliveries / LinkOpened / LinkClosed, in order
        self.parts: list[bytes] = []
        self.settling: dict[int, list[int]] = {}
        self.consumed = 0  # handled since credit was last granted
        self.counts = [0, 0, 0, 0, 0]  # handled, accepted, rejected, released, modified
        self.opened = False
        self.closing = False  # detached by us: what it held went back, nothing more comes
        self.closed = False
        self.failure: p.Condition | None = None

    @property
    def session(self) -> None:
        return None

    def close(self) -> None:
        """Detach the link (what it holds unsettled is released)."""
        self._host.worker.close_link(self)

    def __repr__(self) -> str:
        return f"<worker Receiver {self.name!r} worker={self.worker}>"


_STATE_INDEX = {p.ACCEPTED: 1, p.REJECTED: 2, p.RELEASED: 3, p.MODIFIED: 4}


class Delivery:
    """A received message in a worker (``event.delivery``): accept() / reject() /
    release() / modify(), or update(state) then settle(), as in the user's process.
    Settlements go to the engine in batches, at the end of the worker's pass."""

    RECEIVED = p.RECEIVED
    ACCEPTED = p.ACCEPTED
    REJECTED = p.REJECTED
    RELEASED = p.RELEASED
    MODIFIED = p.MODIFIED

    __slots__ = ("link", "id", "payload", "settled", "local_state", "_message", "__dict__")

    def __init__(self, link: Receiver, delivery_id: int, payload: bytes, settled: bool,
                 message: Message | None) -> None:
        self.link = link
        self.id = delivery_id
        self.payload = payload
        self.settled = settled
        self.local_state: int | None = None
        self._message = message

    @property
    def message(self) -> Message:
        if self._message is None:
            self._message = Message.decode(self.payload)
        return self._message

    @property
    def body(self) -> Any:
        return self.message.body

    @property
    def tag(self) -> bytes:
        return str(self.id).encode()

    @property
    def remote_state(self) -> None:
        return None

    @property
    def connection(self) -> Connection:
        return self.link.connection

    def accept(self) -> None:
        self._dispose(p.ACCEPTED)

    def reject(self, condition: str | None = None, description: str = "") -> None:
        if condition is None:
            self._dispose(p.REJECTED)
        else:
            self._dispose_now(p.Settle(self.link.id, [self.id], p.REJECTED,
                                       p.Condition(condition, description)))

    def release(self) -> None:
        self._dispose(p.RELEASED)

    def modify(self, delivery_failed: bool = True, undeliverable_here: bool = False,
               annotations: dict[Any, Any] | None = None) -> None:
        encoded = None
        if annotations:
            encoded = codec.encode({symbol(k) if isinstance(k, str) else k: v
                                    for k, v in annotations.items()})
        self._dispose_now(p.Settle(self.link.id, [self.id], p.MODIFIED,
                                   delivery_failed=delivery_failed,
                                   undeliverable_here=undeliverable_here,
                                   annotations=encoded))

    def update(self, state: int) -> None:
        self.local_state = state

    def settle(self) -> None:
        """Settle with the state given to update() (ACCEPTED if none)."""
        state = self.local_state or p.ACCEPTED
        if state == p.MODIFIED:
            self.modify()
        elif state in (p.ACCEPTED, p.REJECTED, p.RELEASED):
            self._dispose(state)
        else:
            raise ValueError(f"cannot settle a received message with state {state!r}")

    def _dispose(self, state: int) -> None:
        if self.settled:
            return
        self.settled = True
        link = self.link
        if link.closing:
            return  # it holds what it has until its detach releases it
        ids = link.settling.get(state)
        if ids is None:
            ids = link.settling[state] = []
            link._host.worker.dirty[link] = None
        ids.append(self.id)
        link.counts[_STATE_INDEX[state]] += 1

    def _dispose_now(self, command: p.Settle) -> None:
        if self.settled:
            return
        self.settled = True
        link = self.link
        if link.closing:
            return
        worker = link._host.worker
        worker.engine_handle(command)
        link.counts[_STATE_INDEX[command.state]] += 1
        worker.moved[link] = None

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} settled={self.settled}>"


class Event:
    """What an in-worker callback gets: the attributes of ``amqscale.reactor.Event``.

    `container` (the worker), `connection`, `link` / `receiver`, `delivery`, `message`
    (in ``on_message``), `task` (in ``on_timer_task``); `session`, `sender`, `transport`
    are None."""

    sender = None
    transport = None
    subject = None
    session = None

    __slots__ = ("type", "container", "connection", "link", "delivery", "message", "task",
                 "__dict__")

    def __init__(self, type: str, container: WorkerContainer,  # noqa: A002
                 link: Receiver | None = None, delivery: Delivery | None = None,
                 message: Message | None = None, task: Task | None = None) -> None:
        self.type = type
        self.container = container
        self.link = link
        self.connection = link.connection if link is not None else None
        self.delivery = delivery
        self.message = message
        self.task = task

    @property
    def receiver(self) -> Receiver | None:
        return self.link

    def __repr__(self) -> str:
        return f"<Event {self.type}>"


class Host:
    """One handler object in this worker and the links (shards) it handles."""

    def __init__(self, worker: InWorker, path: str, handler: Any) -> None:
        self.worker = worker
        self.path = path
        self.handler = handler
        settings: MessagingHandler | None = messaging_handler([handler])
        self.auto_accept = settings.auto_accept if settings is not None else False
        self.peer_close_is_error = (settings.peer_close_is_error if settings is not None
                                    else False)
        self.links: dict[int, Receiver] = {}


class InWorker:
    """Every in-worker handler of one worker, and the links they handle.

    `engine_handle` acts on a command in the engine at once; `emit` publishes an event
    to the user process; `write` sends what the engines have (after a top-up of credit
    in the middle of a long pass, so the broker keeps sending while handlers work).
    """

    def __init__(self, index: int, engine_handle: Callable[[p.Command], None],
                 emit: Callable[[p.Event], None], write: Callable[[], None]) -> None:
        self.index = index
        self.engine_handle = engine_handle
        self.emit = emit
        self.write = write
        self.container = WorkerContainer(index, self.schedule)
        self.timers: list[Task] = []  # a heap
        self.current: Host | None = None  # whose callback runs now
        self.hosts: dict[int, Host] = {}  # handler_group -> its host
        self.links: dict[int, Receiver] = {}
        self.connections: dict[int, Connection] = {}
        self.ready: dict[Receiver, None] = {}  # links with something queued, in order
        self.dirty: dict[Receiver, None] = {}  # links with settlements to hand over
        self.moved: dict[Receiver, None] = {}  # links whose counts the user has not seen
        self.counts_due = 0.0

    def wait_time(self) -> float | None:
        """Seconds until run() has something to do (None: nothing is due)."""
        if self.ready:
            return 0.0
        due = [self.timers[0].deadline] if self.timers else []
        if self.moved:
            due.append(self.counts_due)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def schedule(self, delay: float, handler: Any = None) -> Task:
        """``event.container.schedule``: on_timer_task on `handler` (default: the handler
        whose callback is running) after `delay` s."""
        host = self.current
        if host is None:
            raise RuntimeError("schedule() must be called from an in-worker handler's "
                               "callback: the timer belongs to that handler")
        task = Task(time.monotonic() + max(0.0, float(delay)),
                    host.handler if handler is None else handler, host)
        heapq.heappush(self.timers, task)
        return task

    # ---- opening --------------------------------------------------------------------------

    def open(self, cmd: p.OpenLink) -> None:
        """A receiving link for a handler: make the handler (once per group), then let
        the engine attach the link. A handler that cannot be made ends the open."""
        assert cmd.handler is not None
        host = self.hosts.get(cmd.handler_group)
        if host is None:
            host = self._make_host(cmd)
            if host is None:
                return
        connection = self.connections.get(cmd.conn)
        if connection is None:
            connection = self.connections[cmd.conn] = Connection(cmd.conn)
        link = Receiver(host, cmd, connection)
        host.links[link.id] = link
        self.links[link.id] = link
        connection.links.append(link)
        self.engine_handle(msgspec.structs.replace(cmd, own_session=True))

    def _make_host(self, cmd: p.OpenLink) -> Host | None:
        path = cmd.handler
        assert path is not None
        where = f"in worker {self.index} (pid {os.getpid()})"
        try:
            handler = load(path, cmd.handler_args)
        except (ImportError, AttributeError, ValueError) as exc:
            self.emit(p.LinkClosed(cmd.link, p.Condition(p.HANDLER_NOT_FOUND, (
                f"cannot import the handler {path!r} {where}: {type(exc).__name__}: {exc}"))))
            return None
        except BaseException as exc:  # noqa: B036 (a handler must not end the worker)
            self.emit(p.LinkClosed(cmd.link, p.Condition(p.HANDLER_ERROR, (
                f"making the handler {path!r} {where} raised {exc!r}\n"
                + _traceback(exc)))))
            return None
        host = Host(self, path, handler)
        self.current = host
        try:
            dispatch(handler, "start", Event("start", self.container))
        except BaseException as exc:  # noqa: B036
            self.emit(p.LinkClosed(cmd.link, p.Condition(p.HANDLER_ERROR, (
                f"the handler {path!r} {where} raised in on_start: {exc!r}\n"
                + _traceback(exc)))))
            for task in self.timers:
                if task.host is host:
                    task.cancel()
            return None
        finally:
            self.current = None
        self.hosts[cmd.handler_group] = host
        return host

    # ---- events from the engine -----------------------------------------------------------

    def take(self, event: Any) -> bool:
        """An event of one of our links (see WATCHED); True when it is ours alone (the
        messages), False when it goes on to the user process too."""
        link = self.links[event.link]
        kind = type(event)
        if kind is p.Deliveries:
            if not link.closing:  # (a detached link's arrivals go back in the engine)
                payloads = event.payloads
                if len(payloads) <= CHUNK:
                    link.queue.append(event)
                else:
                    link.queue.extend(_pieces(event))
                self.ready[link] = None
            return True
        if kind is p.DeliveryPart:
            self._on_part(link, event)
            return True
        if kind is p.LinkOpened:
            link.opened = True
            link.remote_source = event.remote_source
            link.queue.append(event)
            self.ready[link] = None
            return False
        # LinkClosed: the handler hears of it (in run()) before the user process does.
        link.closed = True
        link.queue.append(event)
        self.ready[link] = None
        return True

    def _on_part(self, link: Receiver, event: p.DeliveryPart) -> None:
        payload = p.gather_part(link.parts, event)
        if payload is not None and not link.closing:
            link.queue.append(p.Deliveries(event.link, event.id, [payload],
                                           [0] if event.settled else None))
            self.ready[link] = None

    def user_close(self, cmd: p.CloseLink) -> None:
        """The user detaches one of our links (CloseLink)."""
        link = self.links.get(cmd.link)
        if link is not None:
            self.close_link(link, cmd.condition)

    def close_link(self, link: Receiver, condition: p.Condition | None = None) -> None:
        """Detach a link (the user, the handler or its failure asked): it stops taking
        messages at once; what the handler settled is settled, the rest goes back
        (released by the engine, also what arrives until the peer's detach), and the
        link's own session ends after it (see OpenLink.own_session)."""
        if link.closing or link.closed:
            return
        self._hand_over(link)
        link.closing = True
        if link.failure is not None:
            condition = p.Condition(p.HANDLER_ERROR, "the receiver's handler failed")
        link.queue = deque(e for e in link.queue if type(e) is not p.Deliveries)
        link.parts = []
        self.engine_handle(p.CloseLink(link.id, condition))

    # ---- the pass -------------------------------------------------------------------------

    def run(self) -> None:
        """Dispatch what the engine gave our links, hand settlements and credit to the
        engine, and publish the counts that moved."""
        ready = self.ready
        budget = RUN_BUDGET
        while ready and budget > 0:
            link = next(iter(ready))
            del ready[link]
            self.current = link._host  # the callbacks below are its handler's
            queue = link.queue
            while queue and budget > 0:
                event = queue.popleft()
                kind = type(event)
                if kind is p.Deliveries:
                    self._messages(link, event)
                    budget -= len(event.payloads)
                elif kind is p.LinkOpened:
                    self._callback(link, "link_opened")
                else:
                    self._closed(link, event)
            if queue:
                ready[link] = None  # the rest in the next pass, after the other links
        self.current = None
        if self.timers and self.timers[0].deadline <= time.monotonic():
            self._fire_timers()
        for link in list(self.dirty):
            self._hand_over(link)
        self.dirty.clear()
        if self.moved:
            now = time.monotonic()
            if now >= self.counts_due:
                self.counts_due = now + COUNTS_INTERVAL
                for link in self.moved:
                    self.emit(p.HandlerCounts(link.id, *link.counts))
                self.moved.clear()

    def _fire_timers(self) -> None:
        """on_timer_task for each due task; one that raises ends its handler's links."""
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0].deadline <= now:
            task = heapq.heappop(timers)
            host = task.host
            if task.cancelled or not host.links:
                continue
            task.fired = True
            self.current = host
            try:
                dispatch(task.handler, "timer_task",
                         Event("timer_task", self.container, task=task))
            except BaseException as exc:  # noqa: B036
                for link in list(host.links.values()):
                    self._failed(link, "on_timer_task", exc)
            finally:
                self.current = None

    def _messages(self, link: Receiver, event: p.Deliveries) -> None:
        payloads = event.payloads
        messages = _decode_list(payloads) if len(payloads) > 1 else None
        settled = set(event.settled) if event.settled else ()
        host = link._host
        handler = host.handler
        auto_accept = host.auto_accept
        container = self.container
        counts = link.counts
        first = event.first_id
        half = link.credit // 2 or 1
        self.moved[link] = None
        for i, payload in enumerate(payloads):
            if link.closing:
                return
            delivery = Delivery(link, first + i, payload, i in settled,
                                None if messages is None else messages[i])
            try:
                try:
                    message = delivery.message
                except Exception as exc:  # a message that does not decode: not the handler's
                    delivery.reject("amqp:decode-error", str(exc))
                    message = None
                if message is not None:
                    dispatch(handler, "message", Event("message", container, link, delivery,
                                                       message))
                    if auto_accept and not delivery.settled:
                        delivery.accept()
            except Reject:
                delivery.reject()
            except Release:
                delivery.release()
            except BaseException as exc:  # noqa: B036 (a handler must not end the worker)
                self._failed(link, "on_message", exc)
                return
            counts[0] += 1
            link.consumed += 1
            if link.consumed >= half:
                self._top_up(link)

    def _top_up(self, link: Receiver) -> None:
        """Settle what was settled, grant the credit used, and send it now."""
        self._hand_over(link)
        self.engine_handle(p.Flow(link.id, link.consumed))
        link.consumed = 0
        self.write()

    def _hand_over(self, link: Receiver) -> None:
        settling = link.settling
        if settling:
            link.settling = {}
            self.moved[link] = None
            for state, ids in settling.items():
                self.engine_handle(p.Settle(link.id, ids, state))

    def _callback(self, link: Receiver, name: str) -> None:
        try:
            dispatch(link._host.handler, name, Event(name, self.container, link))
        except BaseException as exc:  # noqa: B036
            self._failed(link, "on_" + name, exc)

    def _closed(self, link: Receiver, event: p.LinkClosed) -> None:
        """The link ended: the handler hears why, then the user process does (a failed
        handler's traceback in the condition); a host with no links left goes."""
        host = link._host
        if link.opened and link.failure is None and not link.closing:  # the peer closed it
            link.remote_condition = event.condition
            as_error = event.condition is not None or host.peer_close_is_error
            self._callback(link, "link_error" if as_error else "link_closing")
        if link.opened and link.failure is None:
            self._callback(link, "link_closed")
        if link in self.moved:
            del self.moved[link]
            self.emit(p.HandlerCounts(link.id, *link.counts))
        condition = link.failure if link.failure is not None else event.condition
        self.emit(p.LinkClosed(link.id, condition))
        self.links.pop(link.id, None)
        self.dirty.pop(link, None)
        host.links.pop(link.id, None)
        link.connection.links.remove(link)
        if not link.connection.links:
            self.connections.pop(link.connection.id, None)
        if not host.links:
            for group, known in list(self.hosts.items()):
                if known is host:
                    del self.hosts[group]

    def _failed(self, link: Receiver, where: str, exc: BaseException) -> None:
        """A callback raised: only this link ends, its traceback goes to the user."""
        if link.failure is None:
            link.failure = p.Condition(p.HANDLER_ERROR, (
                f"the handler {link._host.path!r} raised in {where} in worker {self.index} "
                f"(pid {os.getpid()}): {exc!r}\n" + _traceback(exc)))
        if link.closed:
            return
        self.close_link(link)



def _pieces(event: p.Deliveries) -> list[p.Deliveries]:
    """`event` as consecutive Deliveries of at most CHUNK messages each."""
    settled = set(event.settled or ())
    pieces = []
    for start in range(0, len(event.payloads), CHUNK):
        end = min(len(event.payloads), start + CHUNK)
        positions = [i - start for i in range(start, end) if i in settled]
        pieces.append(p.Deliveries(event.link, event.first_id + start,
                                   event.payloads[start:end], positions or None))
    return pieces


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
