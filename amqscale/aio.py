"""amqscale on asyncio: the same Container, Connection, Sender and Receiver, awaited::

    import amqscale.aio as aio

    async with aio.Container(workers=2) as container:
        conn = await container.connect("amqp://127.0.0.1:5672", shards=2)
        sender = await conn.open_sender("orders")
        tracker = await sender.send(b"...")           # returns with the outcome
        receiver = await conn.open_receiver("orders")
        async for delivery in receiver:
            delivery.accept()

It runs on the running loop, asyncio's own or uvloop's (``uvloop.run(main())``, or
``asyncio.run(main(), loop_factory=uvloop.new_event_loop)`` on Python 3.12+): the workers'
eventfds are watched with ``loop.add_reader`` and deadlines with ``loop.call_at``, so no
thread carries a message (a thread is used only to start and to stop the workers, which
takes a few hundred milliseconds). A Container and what is opened on it belong to the
loop that opened them.

The names, arguments, defaults and errors are the blocking face's (``amqscale.Container``).
What differs:

- ``await sender.send(m)`` waits for room in the window and then for the outcome; it
  returns the settled Tracker, and raises only if the link fails (``check=True`` raises
  :class:`~amqscale.errors.SendFailed` for an outcome other than accepted).
  As with ``asyncio.Queue``, ``await sender.put(m)`` waits only for room and returns the
  Tracker (await it for the outcome), and ``sender.put_nowait(m)`` waits for nothing: it
  returns a Tracker or raises :class:`~amqscale.errors.WindowFull`.
  ``await sender.send_many(ms)`` waits for room only, like the blocking face's, and returns
  Trackers: one awaitable for the whole batch.
- Cancelling a wait ends only the wait: a message handed over stays in flight and its
  outcome is still recorded; a receive that is cancelled takes nothing, so nothing is
  lost or released that the user did not get.
- ``aclose()`` in place of ``close()``; ``async with`` everywhere.
- ``await conn.open_receiver(address, handler="package.module:Name")`` runs the consumer
  inside the workers and gives a :class:`HandlerReceiver`, whose ``wait()`` is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, overload

from . import _ops, security
from ._driver import Driver
from ._loop import LoopBinding, loop_binding
from ._supervisor import DEFAULT_RING_CAPACITY
from .container import (
    OPEN_TIMEOUT,
    ConnectionView,
    InboundLink,
    ListenerView,
    check_credit,
    check_limit,
    check_positive,
    check_windows,
    check_worker_handler,
    connect_options,
    default_worker_count,
    explain_tls_failure,
    link_policy,
    natives,
    receiver_options,
    sender_options,
    session_state_of,
    tls_in_use,
)
from .core import ConnectionState, ListenerState, ReceiverState, SenderState, SessionState
from .errors import (
    ContainerClosed,
    LinkDetached,
    MessageTooLarge,
    SendFailed,
    TLSError,
    WindowFull,
)
from .links import (
    _DATA8_PREFIXES,
    CLOSE_TIMEOUT,
    Deliveries,
    Delivery,
    HandlerReceiverView,
    ReceiverView,
    SenderView,
    check_addressed,
)
from .links import AnonymousSender as _BlockingAnonymousSender
from .links import Receiver as _BlockingReceiver
from .links import Sender as _BlockingSender
from .links import Tracker as _BlockingTracker
from .links import Trackers as _BlockingTrackers
from .links import Transaction as _BlockingTransaction
from .message import Message
from .reconnect import Backoff
from .terminus import Source, Target
from .transactions import Transaction as TransactionState
from .url import parse_url

__all__ = ["AnonymousSender", "Connection", "Container", "Deliveries", "Delivery",
           "HandlerReceiver", "Listener", "Receiver", "Sender", "Session", "Tracker", "Trackers",
           "Transaction"]

Sendable = Message | bytes | bytearray | memoryview


class Tracker(_BlockingTracker):
    """A sent message's state, as in the blocking face; ``await tracker`` (or
    ``await tracker.wait(timeout)``) for its outcome."""

    __slots__ = ()

    async def wait(self, timeout: float | None = None) -> Tracker:  # type: ignore[override]
        """Wait until the peer settles this message (up to `timeout` s); raises the
        link's failure if it ends first. Cancelling this leaves the message in flight."""
        batch = self._batch
        binding = loop_binding(batch.link.sender.waiter)
        await binding.run(_ops.settled([batch], lambda: self.settled,
                                       f"message {self.seq} to be settled"),
                          timeout, key=batch.link)
        return self

    def __await__(self) -> Generator[Any, None, Tracker]:
        return self.wait().__await__()


class Trackers(_BlockingTrackers):
    """The Trackers of a `send_many` batch; await it for every outcome."""

    __slots__ = ()
    _item = Tracker

    async def wait(self, timeout: float | None = None) -> Trackers:  # type: ignore[override]
        """Wait until every message is settled (up to `timeout` s); raises if a link
        fails first. Cancelling this leaves the messages in flight."""
        batches = self._batches
        if batches:
            binding = loop_binding(batches[0].link.sender.waiter)
            key = batches[0].link if len({b.link for b in batches}) == 1 else None
            await binding.run(_ops.settled(batches, lambda: self.settled,
                                           f"{len(self)} messages to be settled"),
                              timeout, key=key)
        return self

    def __await__(self) -> Generator[Any, None, Trackers]:
        return self.wait().__await__()


class Container:
    """Runs the worker processes and opens connections and listeners on them, for the
    running asyncio loop. Start it with ``async with`` (or ``await start()``)."""

    def __init__(self, workers: int | None = None, container_id: str | None = None,
                 ring_capacity: int = DEFAULT_RING_CAPACITY,
                 restart_workers: bool = True) -> None:
        check_positive(workers if workers is not None else 1, "workers")
        self._restart_workers = bool(restart_workers)
        self._workers = default_worker_count() if workers is None else workers
        self._container_id = container_id
        self._ring_capacity = ring_capacity
        self._driver: Driver | None = None
        self._binding: LoopBinding | None = None

    async def start(self) -> Container:
        """Start the workers (in a thread: it takes a moment) and bind them to the loop."""
        if self._driver is not None:
            return self
        self.container_id = self._container_id or f"amqscale-{uuid.uuid4()}"
        loop = asyncio.get_running_loop()
        driver = await loop.run_in_executor(
            None, lambda: Driver(self._workers, self.container_id, self._ring_capacity,
                                 threads=False, restart_workers=self._restart_workers))
        self._driver = driver
        self._binding = LoopBinding(driver, loop)
        return self

    @property
    def _live(self) -> tuple[Driver, LoopBinding]:
        if self._driver is None or self._binding is None:
            raise ContainerClosed("the Container is not started: use `async with` or "
                                  "`await container.start()`")
        if self._binding.closed:
            raise ContainerClosed("the Container is closed")
        return self._driver, self._binding

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def closed(self) -> bool:
        return self._binding is not None and self._binding.closed

    def worker_pids(self) -> list[int]:
        driver, _ = self._live
        return [h.process.pid for h in driver.handles]

    @property
    def worker_restarts(self) -> int:
        """How many dead workers were replaced."""
        driver, _ = self._live
        return driver.restarts

    async def worker_stats(self, timeout: float | None = 10.0) -> list[dict[str, int]]:
        """Each live worker's counters: index, pid, connections, messages sent and received."""
        driver, binding = self._live
        return await binding.run(_ops.worker_stats(driver), timeout)

    async def connect(self, url: str | None = None, shards: int = 1, *,
                      tls: security.TLS | None = None, user: str | None = None,
                      password: str | None = None,
                      sasl_mechanisms: str | Sequence[str] | None = None,
                      allow_insecure_mechanisms: bool = False, authzid: str | None = None,
                      virtual_host: str | None = None, idle_timeout: float = 0.0,
                      urls: Sequence[str] | None = None,
                      reconnect: bool | Backoff | Sequence[float] = True,
                      properties: Mapping[str, Any] | None = None,
                      offered_capabilities: Sequence[str] | str | None = None,
                      desired_capabilities: Sequence[str] | str | None = None,
                      max_frame_size: int = 0, channel_max: int = 0,
                      timeout: float | None = OPEN_TIMEOUT) -> Connection:
        """Open `shards` AMQP connections to `url` (see amqscale.Container.connect:
        failover over `urls` and `reconnect`, and our open's fields, work the same)."""
        driver, binding = self._live
        parsed, options = connect_options(
            url, shards, tls=tls, user=user, password=password,
            sasl_mechanisms=sasl_mechanisms,
            allow_insecure_mechanisms=allow_insecure_mechanisms, authzid=authzid,
            virtual_host=virtual_host, idle_timeout=idle_timeout, urls=urls,
            reconnect=reconnect, properties=properties,
            offered_capabilities=offered_capabilities,
            desired_capabilities=desired_capabilities, max_frame_size=max_frame_size,
            channel_max=channel_max)
        try:
            state = await binding.run(_ops.connect(driver, parsed, shards, **options),
                                      timeout)
        except TLSError as exc:  # explaining it makes one more connection: not on the loop
            explained = await asyncio.get_running_loop().run_in_executor(
                None, explain_tls_failure, exc, parsed, tls_in_use(tls, url, urls))
            raise explained from None
        return Connection(self, state)

    async def listen(self, url: str, *, credit: int = 1000,
                     max_message_size: int | None = None,
                     tls: security.TLS | None = None,
                     sasl: security.ServerSASL | None = None,
                     accept_link: Callable[[InboundLink], Any] | None = None,
                     timeout: float | None = OPEN_TIMEOUT) -> Listener:
        """Accept inbound AMQP connections on `url` (see amqscale.Container.listen:
        `accept_link` decides each inbound link; it runs on the event loop)."""
        driver, binding = self._live
        parsed = parse_url(url)
        check_positive(credit, "credit")
        limit = check_limit(max_message_size)
        options = security.listener_options(parsed, tls=tls, sasl=sasl)
        state = await binding.run(_ops.listen(driver, parsed, credit, limit,
                                              policy=link_policy(accept_link), **options),
                                  timeout)
        return Listener(self, state)

    async def aclose(self) -> None:
        """Close every connection and listener and stop the workers; every wait still
        pending raises ContainerClosed."""
        driver, binding = self._driver, self._binding
        if driver is None or binding is None or binding.closed:
            return
        binding.detach()
        await asyncio.get_running_loop().run_in_executor(None, driver.close)

    async def __aenter__(self) -> Container:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        driver = self._driver
        if driver is not None and not driver.closed:
            with contextlib.suppress(Exception):
                driver.close()


class Connection(ConnectionView):
    """A connection to one peer: `shards` AMQP connections placed over the workers."""

    def __init__(self, container: Container, state: ConnectionState) -> None:
        super().__init__(state)
        self._container = container
        self._driver, self._binding = container._live

    async def open_sender(self, address: str | Target | None, *, window: int = 1000,
                          presettled: bool = False, name: str | None = None,
                          max_message_size: int | None = None,
                          properties: Mapping[str, Any] | None = None,
                          timeout: float | None = OPEN_TIMEOUT,
                          session: Session | None = None,
                          rcv_settle_mode: str = "first") -> Sender:
        """A Sender to `address`: one link per shard (see the blocking open_sender: a
        Target, None for the anonymous relay, `properties`, `session`)."""
        check_positive(window, "window")
        limit = check_limit(max_message_size)
        options = sender_options(address, name, properties, session_state_of(self, session),
                                 rcv_settle_mode)
        driver = self._driver
        state = await self._binding.run(_ops.open_sender(
            driver, self._state, options.address, window, presettled, name, limit,
            options.target, options.settings), timeout)
        return (AnonymousSender if options.anonymous else Sender)(self, state)

    async def transaction(self, timeout: float | None = OPEN_TIMEOUT) -> Transaction:
        """Declare a local transaction (see the blocking Connection.transaction);
        ``async with`` commits at the end, aborts on an exception."""
        state = await self._binding.run(_ops.declare(self._driver, self._state), timeout)
        return Transaction(self, state)

    def session(self, incoming_window: int = 0, outgoing_window: int = 0) -> Session:
        """A session of its own on each shard (see the blocking Connection.session)."""
        check_windows(incoming_window, outgoing_window)
        driver = self._driver
        with driver.lock:
            state = driver.core.begin_session(self._state, incoming_window, outgoing_window)
            driver.write_all()
        return Session(self, state)

    @overload
    async def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                            auto_accept: bool = False, name: str | None = None,
                            max_message_size: int | None = None,
                            timeout: float | None = OPEN_TIMEOUT,
                            handler: None = None, handler_args: None = None,
                            dynamic: bool = False, selector: str | None = None,
                            properties: Mapping[str, Any] | None = None,
                            session: Session | None = None, datetimes: bool = False,
                            decimals: bool = False, rcv_settle_mode: str = "first") -> Receiver: ...

    @overload
    async def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                            auto_accept: bool = False, name: str | None = None,
                            max_message_size: int | None = None,
                            timeout: float | None = OPEN_TIMEOUT,
                            handler: str | Any,
                            handler_args: dict[str, Any] | None = None,
                            dynamic: bool = False, selector: str | None = None,
                            properties: Mapping[str, Any] | None = None,
                            session: Session | None = None, datetimes: bool = False,
                            decimals: bool = False, rcv_settle_mode: str = "first"
                            ) -> HandlerReceiver: ...

    async def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                            auto_accept: bool = False, name: str | None = None,
                            max_message_size: int | None = None,
                            timeout: float | None = OPEN_TIMEOUT,
                            handler: Any = None, handler_args: dict[str, Any] | None = None,
                            dynamic: bool = False, selector: str | None = None,
                            properties: Mapping[str, Any] | None = None,
                            session: Session | None = None, datetimes: bool = False,
                            decimals: bool = False, rcv_settle_mode: str = "first"
                            ) -> Receiver | HandlerReceiver:
        """A Receiver from `address`: one link per shard, `credit` shared among them.
        With `handler`, a HandlerReceiver: the consumer runs inside the workers, as with
        the blocking ``Connection.open_receiver``."""
        check_credit(credit, handler)
        limit = check_limit(max_message_size)
        path = check_worker_handler(handler, handler_args, auto_accept)
        options = receiver_options(address, name, dynamic=dynamic, selector=selector,
                                   properties=properties,
                                   session=session_state_of(self, session),
                                   rcv_settle_mode=rcv_settle_mode)
        decoding = natives(datetimes, decimals)
        state = await self._binding.run(_ops.open_receiver(
            self._driver, self._state, options.address, credit, auto_accept, name, limit,
            path, handler_args, options.source, options.settings), timeout)
        state.natives = decoding
        if path is not None:
            return HandlerReceiver(self._driver, state, owner=self)
        return Receiver(self._driver, state, owner=self)

    async def aclose(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close every shard and wait (up to `timeout`) for the peer to confirm."""
        await self._binding.run(_ops.close_connection(self._driver, self._state), timeout)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Sender(SenderView):
    """Sends messages to one address over every shard of a connection."""

    _blocking = _BlockingSender  # what encodes and checks (see AnonymousSender)

    def __init__(self, owner: Connection, state: SenderState) -> None:
        self._binding = owner._binding
        self._state = state
        self._tracker = Tracker
        self._sender = self._blocking(owner._driver, state, owner, tracker=Tracker)
        self.address = state.address
        self.presettled = state.presettled
        self._fragment = owner._driver.core.fragment

    def put_nowait(self, message: Sendable) -> Tracker:
        """Hand a message over without waiting; await the Tracker for its outcome.

        Raises WindowFull (nothing sent) when every link's window is full, and
        MessageTooLarge for a message larger than a ring record (send() takes those)."""
        payload = self._payload(message)
        if len(payload) > self._fragment:
            raise MessageTooLarge(f"a message of {len(payload)} bytes encoded goes "
                                  "in parts, which needs waits: await send() for it")
        tracker = self._take(payload)
        if tracker is None:
            raise WindowFull(f"every link's window to {self.address!r} is full "
                             "(nothing was sent)")
        return tracker

    def _payload(self, message: Sendable) -> bytes:
        """The message encoded (a short bytes body inline, the common case)."""
        if type(message) is bytes and len(message) < 256 and not self._state.closed:
            return _DATA8_PREFIXES[len(message)] + message
        return self._sender._encode(message)

    def _take(self, payload: bytes) -> Tracker | None:
        """Take a message of at most a record's size if a link has room, else None."""
        state = self._state
        link = state.links[state.current]
        if link.failure is not None or link.unsettled >= state.window:
            picked = state.pick()
            if picked is None:
                return None
            link = picked
        return self._sender._add(link, payload)  # type: ignore[return-value]

    async def send(self, message: Sendable, *, timeout: float | None = None,
                   check: bool = False) -> Tracker:
        """Send a message and wait for its outcome; returns its settled Tracker.

        Waits for room in the window first (backpressure). `timeout` bounds the whole
        call: TimeoutError before the message was handed over means it was not sent;
        after, it stays in flight (its Tracker is on `unsettled`). A rejected, released
        or modified message raises SendFailed only with `check=True`."""
        loop_time = self._binding.loop.time
        deadline = None if timeout is None else loop_time() + timeout
        tracker = await self.put(message, timeout)
        remaining = None if deadline is None else max(0.0, deadline - loop_time())
        try:
            await tracker.wait(remaining)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for message "
                               f"{tracker.seq} to be settled (it stays in flight)") from None
        if check and tracker.state is not None and not tracker.accepted:
            raise SendFailed(tracker)
        return tracker

    async def put(self, message: Sendable, timeout: float | None = None) -> Tracker:
        """Hand a message over, waiting only for room in the window (like the blocking
        face's send()); returns its Tracker: await it for the outcome. TimeoutError after
        `timeout` s means the message was not sent."""
        payload = self._payload(message)
        if len(payload) <= self._fragment:
            tracker = self._take(payload)
            if tracker is not None:
                return tracker
        state = self._state
        link = await self._binding.run(_ops.room(state), timeout, key=state)
        if len(payload) <= self._fragment:
            return self._sender._add(link, payload)  # type: ignore[return-value]
        state.check_size(payload, link)
        batch = await self._binding.run(
            _ops.send_parts(self._sender._driver, link, payload), None, key=link)
        return Tracker(batch, 0)

    async def send_many(self, messages: Iterable[Sendable],
                        timeout: float | None = None) -> Trackers:
        """Hand many messages over, waiting for room as needed; returns their Trackers
        (await them for the outcomes). Every message is encoded first, so a bad one
        raises before any is sent. TimeoutError carries `trackers`: those handed over."""
        sender = self._sender
        batches: list[Any] = []
        steps = sender._send_many(sender._encode_many(messages), batches)
        try:
            await self._binding.run(steps, timeout, key=self._state)
        except TimeoutError as exc:
            exc.trackers = Trackers(batches)  # type: ignore[attr-defined]
            raise
        return Trackers(batches)

    async def flush(self, timeout: float | None = None) -> None:
        """Hand over every batched message and wait until each is settled (see the
        blocking Sender.flush)."""
        state = self._state
        if state.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        await self._binding.run(_ops.flush(state), timeout, key=state)

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`), then detach every link and wait for the peer."""
        state = self._state
        if state.closed:
            return
        try:
            if not any(link.failure for link in state.links):
                await self.flush(timeout)
        finally:
            state.closed = True
            await self._binding.run(_ops.close_links(
                self._sender._driver, list(state.links),
                f"the sender to {self.address!r} to detach"),
                CLOSE_TIMEOUT if timeout is None else timeout)

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AnonymousSender(Sender):
    """A Sender with no target address (the anonymous relay): each Message goes to its
    own ``address``."""

    _blocking = _BlockingAnonymousSender

    def _payload(self, message: Sendable) -> bytes:
        check_addressed(message)
        return super()._payload(message)


class Transaction:
    """A local transaction (see amqscale.Transaction): ``send`` and ``accept`` take part,
    ``await commit()`` / ``await abort()`` end it."""

    def __init__(self, connection: Connection, state: TransactionState) -> None:
        self._binding = connection._binding
        self._driver = connection._driver
        self._state = state
        self._sync = _BlockingTransaction(connection._driver, state)

    @property
    def id(self) -> bytes | None:
        return self._state.id

    @property
    def state(self) -> str:
        return self._state.state

    def send(self, sender: Sender, message: Sendable) -> Tracker:
        """Send `message` in the transaction; await the Tracker for its outcome."""
        tracker: Tracker = self._sync.send(sender._sender, message)  # type: ignore[assignment]
        return tracker  # the sender makes the asyncio face's Trackers

    def accept(self, delivery: Delivery) -> None:
        self._sync.accept(delivery)

    def settle(self, delivery: Delivery, state: int) -> None:
        self._sync.settle(delivery, state)

    async def commit(self, timeout: float | None = None) -> None:
        await self._binding.run(_ops.discharge(self._driver, self._state, False), timeout)

    async def abort(self, timeout: float | None = None) -> None:
        await self._binding.run(_ops.discharge(self._driver, self._state, True), timeout)

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, kind: object, *exc: object) -> None:
        if self._state.state == "open":
            await (self.commit() if kind is None else self.abort())


class Session:
    """A session of its own on each shard of a Connection (see amqscale.Session)."""

    def __init__(self, connection: Connection, state: SessionState) -> None:
        self.connection = connection
        self._state = state

    @property
    def ended(self) -> bool:
        return self._state.ended

    async def open_sender(self, address: str | Target | None, **options: Any) -> Sender:
        return await self.connection.open_sender(address, session=self, **options)

    async def open_receiver(self, address: str | Source | None,
                            **options: Any) -> Receiver | HandlerReceiver:
        return await self.connection.open_receiver(address, session=self, **options)

    def close(self) -> None:
        """End the session on every shard; its links end with it."""
        driver = self.connection._driver
        with driver.lock:
            driver.core.end_session(self._state)
            driver.write_all()


class Receiver(ReceiverView):
    """Receives from one address over every shard; ``async for`` it for Deliveries."""

    def __init__(self, driver: Driver, state: ReceiverState, owner: object = None) -> None:
        super().__init__(state)
        self._binding = loop_binding(driver)
        self._receiver = _BlockingReceiver(driver, state, owner)

    async def _buffered(self, timeout: float | None) -> None:
        state = self._state
        if not state.buffer:
            await self._binding.run(_ops.buffered(state), timeout, key=state)

    async def receive(self, timeout: float | None = None) -> Delivery:
        """The next delivery; TimeoutError after `timeout` s, LinkDetached on failure.
        Cancelled, it takes nothing."""
        await self._buffered(timeout)
        return self._receiver.receive(0)

    async def receive_many(self, limit: int = 1024,
                           timeout: float | None = None) -> Deliveries:
        """Up to `limit` deliveries: what is buffered now, or waits for at least one."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        await self._buffered(timeout)
        return self._receiver.receive_many(limit, 0)

    def accept_many(self, deliveries: Iterable[Delivery]) -> None:
        """Accept deliveries in bulk (one settle command per link)."""
        self._receiver.accept_many(deliveries)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries as they come; ends when every link closed cleanly, raises on error."""
        while True:
            try:
                yield await self.receive()
            except LinkDetached as exc:
                if exc.condition is None:
                    return
                raise

    def flow(self, credit: int) -> None:
        """Grant `credit` more (see the blocking Receiver.flow)."""
        self._receiver.flow(credit)

    async def drain(self, timeout: float | None = None) -> int:
        """Ask the peer to send what it has within the credit, or give the credit back;
        once it answered, how many deliveries are buffered (see the blocking drain)."""
        driver = self._receiver._driver
        return await self._binding.run(_ops.drain(driver, self._state), timeout,
                                       key=self._state)

    async def aclose(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Release what was received and not taken, detach every link and wait (up to
        `timeout`) for the peer to confirm."""
        driver = self._receiver._driver
        await self._binding.run(_ops.close_receiver(driver, self._state), timeout)

    async def detach(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """As aclose(), but a durable subscription stays (see the blocking detach)."""
        driver = self._receiver._driver
        await self._binding.run(_ops.close_receiver(driver, self._state, detach=True),
                                timeout)

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HandlerReceiver(HandlerReceiverView):
    """A receiver whose messages a handler takes inside the workers (see
    `amqscale.HandlerReceiver`): ``await wait(handled=N)``, ``await aclose()``."""

    def __init__(self, driver: Driver, state: ReceiverState, owner: object = None) -> None:
        super().__init__(driver, state, owner)
        self._binding = loop_binding(driver)

    async def wait(self, handled: int | None = None, timeout: float | None = None) -> None:
        """Until the handlers handled `handled` messages in all (None: until every link
        ended); a `HandlerFailed` not raised yet is raised as it comes (once each)."""
        state = self._state
        await self._binding.run(_ops.handled(state, handled, self._reported), timeout,
                                key=state)

    async def aclose(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Detach every link and wait (up to `timeout`) for the workers to confirm; what
        the handlers were given and did not settle is released."""
        await self._binding.run(_ops.close_receiver(self._driver, self._state), timeout)

    async def __aenter__(self) -> HandlerReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Listener(ListenerView):
    """Inbound connections on one port, spread over the workers."""

    def __init__(self, container: Container, state: ListenerState) -> None:
        driver, binding = container._live
        super().__init__(driver, state)
        self._container = container
        self._binding = binding  # what its Senders wait with
        self.receiver = Receiver(driver, state.receiver, owner=container)

    async def accept_sender(self, timeout: float | None = None) -> Sender:
        """The Sender of the next remote receiver that attached (see the blocking
        Listener.accept_sender)."""
        state = await self._binding.run(_ops.offered_sender(self._state), timeout,
                                        key=self._state)
        return Sender(self, state)  # type: ignore[arg-type]

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
