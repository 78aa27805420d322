"""Container, Connection and Listener: the entry points of the blocking API.

The Container owns the worker processes (through the supervisor) and routes every event
the workers publish to the object it concerns. All of it happens inside API calls: a call
that waits pumps the event rings while it waits, and a send takes what has come as it
hands a batch over. The one thread beside the user's, the
linger thread, sleeps unless a partial batch waits, and then only hands it over.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from ._supervisor import DEFAULT_RING_CAPACITY, Supervisor, WorkerHandle
from .errors import ConnectionFailed, LinkDetached
from .links import Receiver, Sender, _ReceiverLink, _SenderLink, worker_failure
from .url import URL, parse_url
from .workers import protocol as p

OPEN_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0
LINGER = 0.001  # seconds a partial batch may wait for the linger thread


def default_worker_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(eq=False)
class _Shard:
    """One AMQP connection of a (possibly sharded) Connection."""

    id: int
    worker: WorkerHandle
    opened: bool = False
    failure: Exception | None = None

    def on_event(self, event: p.Event) -> None:
        if type(event) is p.ConnectionOpened:
            self.opened = True
        elif type(event) is p.ConnectionClosed:
            cond = event.condition
            self.failure = ConnectionFailed(
                "connection closed" + (f": {cond.name}: {cond.description}" if cond else ""),
                cond.name if cond else None, cond.description if cond else "",
            )


class Container:
    """Runs the worker processes and opens connections and listeners on them.

    >>> with Container(workers=2) as c:
    ...     conn = c.connect("amqp://127.0.0.1:5672", shards=4)
    """

    def __init__(self, workers: int | None = None, container_id: str | None = None,
                 ring_capacity: int = DEFAULT_RING_CAPACITY) -> None:
        self.container_id = container_id or f"amqscale-{uuid.uuid4()}"
        self._ids = itertools.count(1)
        self._routes: dict[int, Any] = {}
        self._listeners: dict[int, Listener] = {}
        self._placement = itertools.count()
        self._sup = Supervisor(
            default_worker_count() if workers is None else workers, ring_capacity)
        # Room for the Send command's own framing around one payload.
        self._max_payload = self._sup.max_record_size - 64
        self._closed = False
        self._reported_dead: set[int] = set()
        self._stats: dict[int, p.WorkerStats] = {}
        # Links holding a partial batch (messages, settlements); see _Linger.
        self._dirty: set[Any] = set()
        self._lock = threading.Lock()
        self._linger = _Linger(self)
        self._events_taken_at = 0.0  # see _take_events

    @property
    def workers(self) -> int:
        return len(self._sup.workers)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._sup.workers]

    def worker_stats(self, timeout: float | None = 10.0) -> list[dict[str, int]]:
        """Each live worker's counters: index, pid, connections, messages sent and received.

        How evenly the work is spread over the cores shows here.
        """
        self._check_open()
        live = [w for w in self._sup.workers if not w.dead]
        self._stats = {}
        for worker in live:
            self._command(worker, p.Stats())
        self._wait(lambda: len(self._stats) == len(live) or any(w.dead for w in live),
                   timeout, "the workers' counters")
        return [msgspec.structs.asdict(self._stats[i]) for i in sorted(self._stats)]

    # ---- opening ------------------------------------------------------------------------

    def connect(self, url: str, shards: int = 1, *, user: str | None = None,
                password: str | None = None, sasl_mechanisms: str | None = None,
                virtual_host: str | None = None, idle_timeout: float = 0.0,
                timeout: float | None = OPEN_TIMEOUT) -> Connection:
        """Open `shards` AMQP connections to `url`, placed over the workers.

        Blocks until every shard is open; raises ConnectionFailed (naming the reason)
        if any cannot be opened, and then closes the others.
        """
        self._check_open()
        parsed = parse_url(url)
        if parsed.port == 0:
            raise ValueError(f"cannot connect to port 0 in {url!r}")
        if not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive int, not {shards!r}")
        if parsed.tls:
            raise NotImplementedError("amqps:// (TLS) is not supported yet")
        connection = Connection(self, parsed)
        for _ in range(shards):
            worker = self._sup.workers[next(self._placement) % len(self._sup.workers)]
            shard = _Shard(next(self._ids), worker)
            self._routes[shard.id] = shard
            connection._shards.append(shard)
            self._command(worker, p.OpenConnection(
                shard.id, parsed.host, parsed.port, self.container_id,
                virtual_host=virtual_host, user=user or parsed.user,
                password=password if password is not None else parsed.password,
                sasl_mechanisms=sasl_mechanisms, idle_timeout=idle_timeout,
            ))
        self._flush_all()
        try:
            self._wait(lambda: all(s.opened or s.failure for s in connection._shards),
                       timeout, f"connection to {parsed}")
            for shard in connection._shards:
                if shard.failure is not None:
                    raise ConnectionFailed(f"cannot connect to {parsed}: {shard.failure}",
                                           getattr(shard.failure, "condition", None))
        except BaseException:
            connection.close()
            raise
        return connection

    def listen(self, url: str, *, credit: int = 1000, timeout: float | None = OPEN_TIMEOUT
               ) -> Listener:
        """Accept inbound AMQP connections on `url`, spread over every worker.

        Port 0 picks a free port (see `Listener.port`). Remote senders' messages arrive
        on `Listener.receiver`; each inbound link is granted `credit`.
        """
        self._check_open()
        parsed = parse_url(url)
        listener = Listener(self, parsed, next(self._ids), credit)
        self._listeners[listener.id] = listener
        workers = self._sup.workers
        # Worker 0 binds and accepts; it deals connections to the others (who adopt them).
        self._command(workers[0], p.Listen(listener.id, parsed.host, parsed.port,
                                           self.container_id, credit))
        self._flush_all()
        self._wait(lambda: listener.port is not None or listener.failure is not None,
                   timeout, f"listening on {parsed}")
        for worker in workers[1:]:
            if listener.failure is None:
                self._command(worker, p.Listen(listener.id, parsed.host, listener.port or 0,
                                               self.container_id, credit, adopt_only=True))
        if len(workers) > 1:
            listener._pending = len(workers) - 1
            self._flush_all()
            self._wait(lambda: listener._pending == 0 or listener.failure is not None,
                       timeout, f"listening on {parsed}")
        if listener.failure is not None:
            listener.close()
            raise listener.failure
        return listener

    def _open_sender(self, connection: Connection, address: str | None, window: int,
                     presettled: bool, name: str | None, timeout: float | None) -> Sender:
        sender = Sender(self, address, window, presettled)
        for shard in connection._shards:
            link = _SenderLink(next(self._ids), shard, sender)
            sender._links.append(link)
            self._open_link(shard, link.id, True, address, name, presettled, 0)
        self._await_links(sender._links, timeout, f"sender to {address!r}")
        return sender

    def _open_receiver(self, connection: Connection, address: str | None, credit: int,
                       name: str | None, auto_accept: bool, timeout: float | None
                       ) -> Receiver:
        receiver = Receiver(self, address, credit, auto_accept)
        per_link = max(1, credit // len(connection._shards))
        for shard in connection._shards:
            link = _ReceiverLink(next(self._ids), shard.worker, receiver, per_link)
            receiver._links[link.id] = link
            self._open_link(shard, link.id, False, address, name, False, per_link)
        self._await_links(list(receiver._links.values()), timeout,
                          f"receiver from {address!r}")
        return receiver

    def _open_link(self, shard: _Shard, link_id: int, is_sender: bool, address: str | None,
                   name: str | None, presettled: bool, credit: int) -> None:
        self._routes[link_id] = None  # placeholder until the link object registers
        link_name = f"{name or address or 'link'}-{'s' if is_sender else 'r'}-{link_id}"
        terminus = p.Terminus(address=address)
        self._command(shard.worker, p.OpenLink(
            link_id, shard.id, link_name, is_sender,
            source=p.Terminus() if is_sender else terminus,
            target=terminus if is_sender else p.Terminus(),
            snd_settle_mode=p.SND_SETTLED if presettled else p.SND_UNSETTLED,
            credit=credit,
        ))

    def _await_links(self, links: list[Any], timeout: float | None, what: str) -> None:
        for link in links:
            self._routes[link.id] = link
        self._flush_all()
        try:
            self._wait(lambda: all(x.opened or x.failure for x in links), timeout, what)
        except BaseException:
            self._close_links(links)
            raise
        failed = [x for x in links if x.failure is not None]
        if failed:
            self._close_links(links)
            raise failed[0].failure

    def _close_links(self, links: Iterable[Any]) -> None:
        for link in links:
            if link.failure is None:
                self._command(link.worker, p.CloseLink(link.id))
                link.failure = LinkDetached("closed by the user")
            self._routes.pop(link.id, None)
        self._flush_all()

    # ---- pumping events -----------------------------------------------------------------

    def _mark_dirty(self, link: Any) -> None:
        """`link` holds a partial batch: hand it over at the next wait, or after LINGER."""
        self._dirty.add(link)
        self._linger.wake()

    def _command(self, worker: WorkerHandle, command: p.Command) -> None:
        """Queue a control command (not the hot path) for the next flush."""
        with self._lock:
            worker.queue(command)

    def _flush_worker(self, worker: WorkerHandle) -> None:
        with self._lock:
            worker.flush(timeout=None)

    def _flush_all(self, settlements: bool = True) -> None:
        with self._lock:
            self._hand_over_dirty(settlements)
            self._sup.flush(timeout=None)

    def _hand_over_dirty(self, settlements: bool = True) -> None:
        """Hand over partial batches: all, or (settlements False) only messages to send."""
        dirty = self._dirty
        if settlements:
            while dirty:
                dirty.pop().hand_over()
            return
        for link in [x for x in dirty if type(x) is _SenderLink]:
            dirty.discard(link)
            link.hand_over()

    def _pump(self, timeout: float | None) -> None:
        routes = self._routes
        for worker, event in self._sup.poll(timeout):
            kind = type(event)
            link_id = getattr(event, "link", None)
            if link_id is not None:
                target = routes.get(link_id)
                if target is not None:
                    target.on_event(event)
                elif kind is p.LinkOpened and event.inbound:  # type: ignore[union-attr]
                    self._listeners[event.conn]._on_inbound(worker, event)  # type: ignore
                continue
            if kind is p.WorkerStats:
                self._stats[event.index] = event  # type: ignore[union-attr,assignment]
            elif kind in (p.Listening, p.ListenFailed):
                listener = self._listeners.get(event.listener)  # type: ignore[union-attr]
                if listener is not None:
                    listener._on_event(event)
            else:
                target = routes.get(getattr(event, "conn", 0))
                if target is not None:
                    target.on_event(event)
        self._check_workers()

    def _take_events(self) -> None:
        """Take what the workers published, without waiting, at most every LINGER.

        A sender calls this as it hands a batch over: outcomes are then taken as they
        come, a few at a time, instead of a window's worth at once when the window
        fills, which stalled that send for milliseconds (about 5 us an outcome event).
        At most every LINGER, so that a firehose does not pay for it per hand-over."""
        now = time.monotonic()
        if now - self._events_taken_at >= LINGER and self._sup.has_events():
            self._events_taken_at = now
            self._pump(0)

    def _check_workers(self) -> None:
        for worker in self._sup.dead_workers():
            if worker.index in self._reported_dead:
                continue
            self._reported_dead.add(worker.index)
            failure = worker_failure(worker.index, worker.process.returncode)
            for target in list(self._routes.values()):
                if target is None:
                    continue
                if target.worker is worker and getattr(target, "failure", None) is None:
                    target.failure = failure

    def _wait(self, ready: Callable[[], bool], timeout: float | None, what: str,
              settlements: bool = True) -> None:
        """Pump events until `ready()`; TimeoutError naming `what` after `timeout` seconds.

        First the partial batches are handed over; settlements only if `settlements`:
        waiting for messages needs none, and the linger thread takes them within LINGER,
        which spares the worker a wake-up per message received."""
        self._flush_all(settlements)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self._pump(1.0 if remaining is None else min(remaining, 1.0))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the Container is closed")

    # ---- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection and listener, stop the workers; leaves nothing behind."""
        if self._closed:
            return
        self._closed = True
        self._linger.stop()
        with self._lock:
            # Settlements and sends still batched go first: the peer must not see the
            # connection close with messages this side already took care of.
            self._hand_over_dirty()
            with contextlib.suppress(TimeoutError, OSError):
                self._sup.flush(timeout=1.0)
            self._sup.stop()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self, "_sup"):
            self._sup.stop()


class _Linger:
    """Hands over partial batches about LINGER seconds after they were started.

    The hot path batches sends and settlements; a send batch goes as soon as its worker
    has caught up, settlements ride with the next batch or wait for this thread, so a
    message costs no wake-up of its own in either direction. It sleeps on an Event while
    nothing is pending, so it costs nothing when idle and never spins beside the engines.
    """

    def __init__(self, container: Container) -> None:
        self._container = container
        self._pending = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        if not self._pending.is_set():
            self._pending.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="amqscale-linger", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        container = self._container
        while True:
            self._pending.wait()
            if self._stopped:
                return
            time.sleep(LINGER)
            self._pending.clear()  # what is marked from now on waits for the next pass
            if self._stopped:
                return
            with container._lock:
                if not container._closed:
                    container._hand_over_dirty()
                    container._sup.flush(timeout=None)

    def stop(self) -> None:
        self._stopped = True
        self._pending.set()
        if self._thread is not None:
            self._thread.join()


class Connection:
    """A connection to one peer: `shards` AMQP connections placed over the workers."""

    def __init__(self, container: Container, url: URL) -> None:
        self._container = container
        self.url = url
        self._shards: list[_Shard] = []
        self.closed = False

    @property
    def shards(self) -> int:
        return len(self._shards)

    def open_sender(self, address: str | None, *, window: int = 1000,
                    presettled: bool = False, name: str | None = None,
                    timeout: float | None = OPEN_TIMEOUT) -> Sender:
        """A Sender to `address`: one link per shard, each with up to `window` in flight.

        At-least-once by default; `presettled=True` is at-most-once (no outcomes).
        """
        self._check(window, "window")
        return self._container._open_sender(self, address, window, presettled, name,
                                            timeout)

    def open_receiver(self, address: str | None, *, credit: int = 1000,
                      auto_accept: bool = False, name: str | None = None,
                      timeout: float | None = OPEN_TIMEOUT) -> Receiver:
        """A Receiver from `address`: one link per shard, `credit` shared among them."""
        self._check(credit, "credit")
        return self._container._open_receiver(self, address, credit, name, auto_accept,
                                              timeout)

    def _check(self, value: int, what: str) -> None:
        if self.closed:
            raise ConnectionFailed(f"the connection to {self.url} is closed")
        for shard in self._shards:
            if shard.failure is not None:
                raise shard.failure
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, not {value!r}")

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        if self.closed:
            return
        self.closed = True
        container = self._container
        for shard in self._shards:
            if shard.failure is None:
                container._command(shard.worker, p.CloseConnection(shard.id))
        container._flush_all()
        with contextlib.suppress(TimeoutError):
            container._wait(lambda: all(s.failure for s in self._shards), timeout,
                            f"the connection to {self.url} to close")
        for shard in self._shards:
            container._routes.pop(shard.id, None)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """Inbound connections on one port, spread over the workers."""

    def __init__(self, container: Container, url: URL, listener_id: int, credit: int):
        self._container = container
        self.id = listener_id
        self.host = url.host
        self.port: int | None = None
        self.failure: Exception | None = None
        self._pending = 0
        self.receiver = Receiver(container, None, credit, endless=True)
        self._credit = credit

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"amqp://{host}:{self.port}"

    def _on_event(self, event: p.Event) -> None:
        if type(event) is p.Listening:
            if self.port is None:
                self.port = event.port
            else:
                self._pending -= 1
        elif type(event) is p.ListenFailed:
            cond = event.condition
            self.failure = ConnectionFailed(cond.description, cond.name)

    def _on_inbound(self, worker: WorkerHandle, event: p.LinkOpened) -> None:
        """A remote peer attached a link; a remote sender's messages go to `receiver`."""
        if event.is_sender:
            return  # a remote receiver: nothing to offer it yet, its link stays idle
        link = _ReceiverLink(event.link, worker, self.receiver, self._credit)
        link.opened = True
        self.receiver._links[event.link] = link
        self._container._routes[event.link] = link

    def close(self) -> None:
        for worker in self._container._sup.workers:
            self._container._command(worker, p.CloseListener(self.id))
        self._container._flush_all()
        self._container._listeners.pop(self.id, None)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
