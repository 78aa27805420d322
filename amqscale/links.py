"""Senders and receivers of the blocking API, and what they hand out: Trackers, Deliveries.

These are thin handles over the client core (``amqscale.core``: windows, batches, outcome
runs, arrivals, credit) and the driver (``amqscale._driver``: the rings, the lock, waits
with deadlines). A Sender or Receiver opened on a connection with `shards=K` is K AMQP
links, one per shard. Messages are spread over the shards' links; deliveries from every
link arrive in one stream. Sends are batched per link and handed over when a batch fills,
when the worker has caught up (so a lone message does not wait), when the user waits for
outcomes, or by the linger thread within LINGER. Settlements go with the next command or
the linger thread: they never wake a worker on their own. A message larger than a ring
record crosses in parts (SendPart / DeliveryPart) and goes out as one multi-frame transfer.

The batch face (`send_many`, `receive_many`) keeps no object per message: `Trackers` and
`Deliveries` index into per-batch state and make a Tracker or Delivery when asked.
"""

from __future__ import annotations

import bisect
import importlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

from . import _ops, codec
from ._driver import AWAKE_BATCH, Driver
from .core import (
    ACCEPTED,
    SEND_BATCH,
    SETTLE_BATCH,
    Arrival,
    Batch,
    ReceiverLink,
    ReceiverState,
    Result,
    SenderLink,
    SenderState,
    WorkerSlot,
)
from .errors import HandlerFailed, LinkDetached, MessageTooLarge
from .message import Message
from .terminus import Source, Target, decode_properties
from .transactions import Transaction as TransactionState
from .transactions import Transactions
from .types import symbol
from .workers import protocol as p

CLOSE_TIMEOUT = 5.0

# A bare message whose only section is one data section (amqp 1.0, 3.2.6).
_DATA8 = b"\x00\x53\x75\xa0"
_DATA32 = b"\x00\x53\x75\xb0"
_U32 = struct.Struct(">I")
_DATA8_PREFIXES = [_DATA8 + bytes((size,)) for size in range(256)]


def _py_encode_payloads(items: list[Any], limit: int) -> list[bytes] | None:
    """Bytes bodies only; Messages and the rest go one by one through Sender._encode."""
    if not all(type(body) is bytes and len(body) + 8 <= limit for body in items):
        return None
    prefixes = _DATA8_PREFIXES
    return [prefixes[len(body)] + body if len(body) < 256 else encode_body(body)
            for body in items]


def _py_data_bodies(payloads: list[bytes]) -> list[bytes | None]:
    return [decode_body(payload) for payload in payloads]


# What send_many sends and what Deliveries.bodies gives, a list at a time: in C when the
# codec's C fast path is on (several times cheaper), else the Python above. None means
# "not handled here": the caller takes the one-by-one path.
_ccodec = codec._ccodec
encode_payloads: Callable[[list[Any], int], list[bytes] | None] = (
    _py_encode_payloads if _ccodec is None else _ccodec.encode_payloads)
data_bodies: Callable[[list[bytes]], list[bytes | None]] = (
    _py_data_bodies if _ccodec is None else _ccodec.data_bodies)


def encode_body(body: bytes | bytearray | memoryview) -> bytes:
    """The AMQP encoding of a message that is just `body` as one data section."""
    size = len(body)
    if size < 256:
        return _DATA8_PREFIXES[size] + bytes(body)
    return _DATA32 + _U32.pack(size) + bytes(body)


def decode_body(payload: bytes) -> bytes | None:
    """The body of a message that is exactly one data section, else None (fast path)."""
    size = len(payload)
    if size >= 5 and payload.startswith(_DATA8) and size == 5 + payload[4]:
        return payload[5:]
    if size >= 8 and payload.startswith(_DATA32) and size == 8 + _U32.unpack_from(payload, 4)[0]:
        return payload[8:]
    return None


# One Delivery's body, the same in C when the codec's C fast path is on.
data_body: Callable[[bytes], bytes | None] = (
    decode_body if _ccodec is None else _ccodec.data_body)


_new_object = object.__new__


def _settle_now(delivery: Delivery, command: p.Settle) -> None:
    """Settle one delivery with a detailed outcome at once (not batched)."""
    arrival = delivery._arrival
    link = arrival.link
    arrival.check_live()
    if link.failure is not None:
        raise link.failure
    arrival.settled[delivery._index] = 1
    driver = link.receiver.waiter
    with driver.lock:
        link.settle_now(command)
        driver.write(link.slot)


class Tracker:
    """The state of one sent message: settled or not, and the outcome the peer gave it."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    @property
    def seq(self) -> int:
        """The message's number on its link, counting from 0."""
        return self._batch.first + self._index

    @property
    def payload(self) -> bytes | None:
        """The encoded message while it is unsettled (so it can be sent again), then None."""
        payloads = self._batch.payloads
        return None if payloads is None or self.settled else payloads[self._index]

    @property
    def _result(self) -> Result | None:
        return self._batch.result(self._index)

    @property
    def settled(self) -> bool:
        return self._result is not None

    @property
    def state(self) -> int | None:
        """The outcome's AMQP code (0x24 accepted ... 0x27 modified), None if none."""
        result = self._result
        return None if result is None else result.state

    @property
    def outcome(self) -> str | None:
        """'accepted', 'rejected', 'released', 'modified', or None (none yet / pre-settled)."""
        state = self.state
        return None if state is None else p.OUTCOME_NAMES.get(state)

    @property
    def accepted(self) -> bool:
        return self._result is ACCEPTED

    @property
    def condition(self) -> p.Condition | None:
        """A rejected outcome's error condition (name, description)."""
        result = self._result
        return None if result is None else result.condition

    @property
    def delivery_failed(self) -> bool:
        result = self._result
        return result is not None and result.delivery_failed

    @property
    def undeliverable_here(self) -> bool:
        result = self._result
        return result is not None and result.undeliverable_here

    @property
    def annotations(self) -> dict[Any, Any] | None:
        """A modified outcome's message annotations."""
        result = self._result
        return None if result is None else result.annotations

    def wait(self, timeout: float | None = None) -> Tracker:
        """Block until the peer settles this message; raises if its link fails first."""
        batch = self._batch
        _ops.run(batch.link.sender.waiter, _ops.settled(
            [batch], lambda: self.settled, f"message {self.seq} to be settled"), timeout)
        return self

    def __repr__(self) -> str:
        return f"<Tracker seq={self.seq} settled={self.settled} outcome={self.outcome}>"


_Item = TypeVar("_Item")


class _Parts(Sequence[_Item]):
    """A read-only sequence over slices of per-batch state: (owner, lo, hi) parts, whose
    items (a Tracker, a Delivery: an owner and an index) are made when asked for."""

    __slots__ = ("_parts", "_starts", "_length")

    def __init__(self, parts: list[tuple[Any, int, int]]) -> None:
        self._parts = parts
        self._starts: list[int] = []
        length = 0
        for _, lo, hi in parts:
            self._starts.append(length)
            length += hi - lo
        self._length = length

    def _item(self, owner: Any, index: int) -> _Item:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> _Item: ...
    @overload
    def __getitem__(self, index: slice) -> list[_Item]: ...

    def __getitem__(self, index: int | slice) -> _Item | list[_Item]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"{type(self).__name__} index out of range")
        which = bisect.bisect_right(self._starts, index) - 1
        owner, lo, _ = self._parts[which]
        return self._item(owner, lo + index - self._starts[which])

    def __iter__(self) -> Iterator[_Item]:
        make = self._item
        for owner, lo, hi in self._parts:
            for index in range(lo, hi):
                yield make(owner, index)


class Trackers(_Parts[Tracker]):
    """The Trackers of messages sent together by `send_many`, made on demand.

    A read-only sequence in the order the messages were given, with answers for the
    whole lot (`settled`, `accepted`, `counts`, `wait`) that need no Tracker objects.
    """

    __slots__ = ("_batches",)

    def __init__(self, batches: list[Batch]) -> None:
        super().__init__([(batch, 0, batch.size) for batch in batches])
        self._batches = batches

    _item = Tracker  # type: ignore[assignment]  # the class makes the item: no call between

    @property
    def settled(self) -> bool:
        """Every message is settled."""
        return all(batch.pending == 0 for batch in self._batches)

    @property
    def accepted(self) -> bool:
        """Every message was accepted."""
        return self.settled and all(
            batch.head is ACCEPTED if batch.results is None
            else all(result is ACCEPTED for result in batch.results)
            for batch in self._batches)

    def counts(self) -> dict[str | None, int]:
        """How many messages ended in each outcome ('accepted', ...; None: none yet or
        pre-settled)."""
        counts: dict[str | None, int] = {}
        for tracker in self:
            counts[tracker.outcome] = counts.get(tracker.outcome, 0) + 1
        return counts

    def wait(self, timeout: float | None = None) -> Trackers:
        """Block until every message is settled; raises if a link fails first."""
        if self._batches:
            _ops.run(self._batches[0].link.sender.waiter, _ops.settled(
                self._batches, lambda: self.settled, f"{len(self)} messages to be settled"),
                timeout)
        return self

    def __repr__(self) -> str:
        return f"<Trackers {len(self)} messages settled={self.settled}>"


def _first_opened(links: Iterable[Any]) -> Any:
    """The first link the peer attached (every link of one Sender or Receiver asks for the
    same termini), else the first link; None without links."""
    first = None
    for link in links:
        if link.opened:
            return link
        first = first or link
    return first


class SenderView:
    """What every face's Sender tells of its state (the core's SenderState), and its
    window, which may be changed."""

    _state: SenderState
    _tracker: type[Tracker]

    @property
    def target(self) -> Target | None:
        """The Target this sender asked for."""
        link = _first_opened(self._state.links)
        return Target.from_wire(link.attach.target) if link and link.attach else None

    @property
    def remote_target(self) -> Target | None:
        """The peer's answer: the Target it attached (a dynamic node's address in it)."""
        link = _first_opened(self._state.links)
        return Target.from_wire(link.remote_target) if link else None

    @property
    def remote_properties(self) -> dict[str, Any]:
        """The link properties of the peer's attach."""
        link = _first_opened(self._state.links)
        return decode_properties(link.remote_properties) if link else {}

    @property
    def window(self) -> int:
        """Messages each link (shard) keeps in flight at most; may be changed."""
        return self._state.window

    @window.setter
    def window(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"window must be a positive int, not {value!r}")
        self._state.window = value

    @property
    def counts(self) -> dict[int, int]:
        """How many messages ended in each state (p.ACCEPTED ...), by AMQP code."""
        return self._state.counts

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def resent(self) -> int:
        """Messages sent again because their connection was lost (or their worker died)
        before the peer settled them: the peer may have them twice (at-least-once)."""
        return self._state.resent

    @property
    def failures(self) -> list[Exception]:
        """Why links (shards) of this sender failed; the others go on taking messages."""
        return [x.failure for x in self._state.links
                if x.failure is not None and not self._state.closed]

    @property
    def unsettled(self) -> list[Tracker]:
        """Trackers of messages not yet settled, across every shard."""
        return [self._tracker(batch, i) for link in self._state.links
                for batch, i in link.unsettled_messages()]


class Sender(SenderView):
    """Sends messages to one address over every shard of a connection."""

    def __init__(self, driver: Driver, state: SenderState, owner: object = None,
                 tracker: type[Tracker] = Tracker) -> None:
        self._driver = driver
        self._tracker = tracker  # what send() returns (the asyncio face's is awaitable)
        self._state = state
        self._owner = owner  # its Connection: the Container lives as long as this does
        state.waiter = driver
        self.address = state.address
        self.presettled = state.presettled
        self._fragment = driver.core.fragment
        if _clinks is not None and type(self).send is Sender.send:
            # send(message, timeout=None) with its common case in C; this class's send()
            # for the rest (the reference).
            self.send = _clinks.Send(  # type: ignore[method-assign]
                state, driver, tracker, self.send, self._encode, self._send_payload,
                self._fragment)

    def send(self, message: Message | bytes | bytearray | memoryview,
             timeout: float | None = None) -> Tracker:
        """Hand a message over for sending; returns its Tracker.

        `message` is a Message, or bytes to send as the body (one data section). Blocks
        while every link has `window` messages in flight (backpressure); raises
        TimeoutError after `timeout` seconds, and the message is then not sent. A
        message larger than a ring record is handed over in parts: once its first part
        is, send() waits for the ring until the last one is (or the worker dies).
        """
        if type(message) is bytes and len(message) < 256 and not self._state.closed:
            payload = _DATA8_PREFIXES[len(message)] + message  # the common case, inline
        else:
            payload = self._encode(message)
        return self._send_payload(payload, timeout)

    def _send_payload(self, payload: bytes, timeout: float | None) -> Tracker:
        """send() once the message is encoded."""
        if len(payload) > self._fragment:
            return self._send_parts(payload, timeout)
        state = self._state
        link = state.links[state.current]
        if link.failure is not None or link.unsettled >= state.window:
            link = self._pick_link(timeout)
        return self._add(link, payload)

    def _add(self, link: SenderLink, payload: bytes) -> Tracker:
        """Take a message of at most a record's size on `link`, which has room: it joins
        the link's open batch, handed over at once if the worker wants work."""
        state = self._state
        if link.remote_max and len(payload) > link.remote_max:
            state.check_size(payload, link)
        driver = self._driver
        lock = driver.lock
        lock.acquire()  # not `with`: its __exit__ call costs twice the lock, once a message
        try:
            batch = link.open
            if batch is None:
                batch, index = link.add(payload)
            else:  # SenderLink.add, inlined: this runs once per message
                index = batch.size
                batch.payloads.append(payload)  # type: ignore[union-attr]
                batch.size = batch.pending = index + 1
                link.next_seq += 1
                link.unsettled += 1
            handed_over = index + 1 >= SEND_BATCH or driver.wants_work(link.slot, index + 1)
            if handed_over:
                link.hand_over()
                driver.write(link.slot)
                state.rotate()
        finally:
            lock.release()
        if handed_over:
            driver.take_events()
        elif not link.dirty:
            driver.mark_dirty(link)
        # Tracker(batch, index) without the __init__ call: less than half the cost. The
        # tracker classes (Tracker, the asyncio face's) add no fields of their own.
        tracker = _new_object(self._tracker)
        tracker._batch = batch
        tracker._index = index
        return tracker

    def _send_parts(self, payload: bytes, timeout: float | None) -> Tracker:
        """A message too large for one record, in parts (see _ops.send_parts)."""
        link = self._pick_link(timeout)
        self._state.check_size(payload)
        return Tracker(_ops.run(self._driver, _ops.send_parts(self._driver, link, payload),
                                None), 0)

    def send_many(self, messages: Iterable[Message | bytes | bytearray | memoryview],
                  timeout: float | None = None) -> Trackers:
        """Send many messages at once; the fast path for a firehose.

        Every message is encoded first, so a bad one raises before any is sent. Each
        link then takes as many as its window has room for, as one command. Returns
        the messages' Trackers, made on demand. If the windows stay full for `timeout`
        seconds, TimeoutError is raised: its `trackers` are the messages already handed
        over (the rest were not sent).
        """
        batches: list[Batch] = []
        try:
            _ops.run(self._driver, self._send_many(self._encode_many(messages), batches),
                     timeout)
        except TimeoutError as exc:
            exc.trackers = Trackers(batches)  # type: ignore[attr-defined]
            raise
        return Trackers(batches)

    def _encode_many(self, messages: Iterable[Message | bytes | bytearray | memoryview]
                     ) -> list[bytes]:
        """Every message encoded and checked for size: nothing is sent if one is bad."""
        state = self._state
        if state.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        items = messages if type(messages) is list else list(messages)
        payloads = encode_payloads(items, self._fragment)  # None if one is larger than a part
        if payloads is None:  # one by one (and a bad one raises here)
            payloads = [self._encode(m) for m in items]
        state.check_sizes(payloads)
        return payloads

    def _send_many(self, payloads: list[bytes], batches: list[Batch]) -> _ops.Steps[None]:
        """Hand `payloads` over as each link's window has room, a chunk per link and
        command; a message larger than a record goes alone, in parts. `batches` gets
        each chunk's batch as it is handed over."""
        state = self._state
        fragment = self._fragment
        large = max(map(len, payloads), default=0) > fragment
        done = 0
        driver = self._driver
        while done < len(payloads):
            link = yield from _ops.room(state)
            room = state.window - link.unsettled
            chunk = payloads[done:done + room] if done or room < len(payloads) else payloads
            if large:  # the messages before the first large one go together, then it
                first = next((i for i, x in enumerate(chunk) if len(x) > fragment), len(chunk))
                chunk = chunk[:first] or chunk[:1]
            if len(chunk) == 1 and len(chunk[0]) > fragment:
                state.check_size(chunk[0], link)
                batches.append((yield from _ops.send_parts(driver, link, chunk[0])))
            else:
                with driver.lock:
                    batches.append(link.send_chunk(chunk))
                    driver.write(link.slot)
                state.rotate()
            done += len(chunk)
        driver.take_events()

    def _encode(self, message: Message | bytes | bytearray | memoryview) -> bytes:
        state = self._state
        if state.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        if isinstance(message, Message):
            payload = message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = encode_body(message)
        else:
            raise TypeError(
                f"send() takes a Message or bytes, not {type(message).__name__}"
            )
        if state.max_message_size:
            state.check_size(payload)
        return payload

    def _pick_link(self, timeout: float | None) -> SenderLink:
        """The next shard's link with room in its window, waiting for room if none has."""
        return _ops.run(self._driver, _ops.room(self._state), timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Hand over every batched message and wait until each is settled.

        Raises the failure of a link (shard) that ended with messages unsettled (they
        stay in `unsettled`); the other links' messages are waited for first."""
        state = self._state
        if state.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        _ops.run(self._driver, _ops.flush(state), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (waiting up to `timeout` for the outcomes), then detach every link and
        wait (up to `timeout`, or CLOSE_TIMEOUT) for the peer to confirm."""
        state = self._state
        if state.closed:
            return
        try:
            if not any(link.failure for link in state.links):
                self.flush(timeout)
        finally:
            state.closed = True
            _ops.run(self._driver, _ops.close_links(
                self._driver, list(state.links), f"the sender to {self.address!r} to detach"),
                CLOSE_TIMEOUT if timeout is None else timeout)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_addressed(message: object) -> None:
    """A message for the anonymous relay must say where it goes (Message.address)."""
    if not isinstance(message, Message):
        raise TypeError("a sender without a target address (the anonymous relay) sends "
                        f"Messages with an address, not {type(message).__name__}")
    if not message.address:
        raise ValueError("a sender without a target address (the anonymous relay) needs "
                         "each Message's address")


class AnonymousSender(Sender):
    """A Sender with no target address (the anonymous relay, AMQP's ANONYMOUS-RELAY
    capability): each Message goes to its own ``address``."""

    def send(self, message: Message | bytes | bytearray | memoryview,
             timeout: float | None = None) -> Tracker:
        check_addressed(message)
        return super().send(message, timeout)

    def _encode_many(self, messages: Iterable[Message | bytes | bytearray | memoryview]
                     ) -> list[bytes]:
        items = list(messages)
        for message in items:
            check_addressed(message)
        return super()._encode_many(items)


class Transaction:
    """A local transaction of a Connection (``Connection.transaction()``): messages sent
    with ``send()`` and deliveries settled with ``accept()`` (or ``settle()``) take effect
    together at ``commit()``, or not at all (``abort()``). As a context manager it
    commits at the end, or aborts on an exception. It lives on one AMQP connection (a
    sharded connection's first shard): senders and receivers take part through their
    link on that shard. Its messages must fit one ring record."""

    def __init__(self, driver: Driver, state: TransactionState) -> None:
        self._driver = driver
        self._state = state

    @property
    def id(self) -> bytes | None:
        """The peer's transaction id."""
        return self._state.id

    @property
    def state(self) -> str:
        """"open", "committing", "aborting", "committed", "aborted" or "failed"."""
        return self._state.state

    def send(self, sender: Sender, message: Message | bytes | bytearray | memoryview
             ) -> Tracker:
        """Send `message` in the transaction (not subject to the sender's window); its
        Tracker settles with the peer's outcome, which takes effect at the commit."""
        payload = sender._encode(message)
        if isinstance(sender, AnonymousSender):
            check_addressed(message)
        if len(payload) > sender._fragment:
            raise MessageTooLarge(f"a message in a transaction must fit one ring record "
                                  f"({sender._fragment} bytes encoded), not {len(payload)}")
        driver = self._driver
        with driver.lock:
            transactions = Transactions(driver.core)
            link = transactions.link_on(self._state, sender._state.links)
            batch = transactions.send(self._state, link, payload)
            driver.write(link.slot)
        return sender._tracker(batch, 0)

    def accept(self, delivery: Delivery) -> None:
        """Accept `delivery` in the transaction (settled now; in effect at the commit)."""
        self.settle(delivery, p.ACCEPTED)

    def settle(self, delivery: Delivery, state: int) -> None:
        """Settle `delivery` with `state` (p.ACCEPTED, p.RELEASED, ...) in the transaction."""
        arrival = delivery._arrival
        if delivery.settled:
            raise ValueError("the delivery is settled already")
        arrival.check_live()
        driver = self._driver
        with driver.lock:
            Transactions(driver.core).settle(self._state, arrival.link, [delivery.id], state)
            arrival.settled[delivery._index] = 1
            driver.write(arrival.link.slot)

    def commit(self, timeout: float | None = None) -> None:
        """Commit; raises TransactionError (condition amqp:transaction:rollback when the
        peer rolled it back instead) if the peer refuses."""
        _ops.run(self._driver, _ops.discharge(self._driver, self._state, False), timeout)

    def abort(self, timeout: float | None = None) -> None:
        """Roll the transaction back: its messages are dropped, its deliveries released."""
        _ops.run(self._driver, _ops.discharge(self._driver, self._state, True), timeout)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if self._state.state != "open":
            return
        if kind is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<Transaction {self.state} id={self.id!r}>"


class Delivery:
    """A received message, and the means to settle it."""

    __slots__ = ("_arrival", "_index")

    def __init__(self, arrival: Arrival, index: int) -> None:
        self._arrival = arrival
        self._index = index

    @property
    def id(self) -> int:
        """The delivery's number on its link."""
        return self._arrival.first_id + self._index

    @property
    def payload(self) -> bytes:
        """The message as it was encoded (the transfer's payload)."""
        return self._arrival.payloads[self._index]

    @property
    def settled(self) -> bool:
        return bool(self._arrival.settled[self._index])

    @property
    def message(self) -> Message:
        """The decoded message (decoded on first use)."""
        return self._arrival.message(self._index)

    @property
    def body(self) -> Any:
        """The message body; a single data section comes back as bytes without a decode."""
        body = data_body(self._arrival.payloads[self._index])
        return self.message.body if body is None else body

    def accept(self) -> None:
        """Accept the delivery (batched with others: the settlement goes with the next
        batch, a credit grant, or the linger pass)."""
        self._dispose(p.ACCEPTED, None)

    def reject(self, condition: str = "amqp:internal-error", description: str = "") -> None:
        self._dispose(p.REJECTED, p.Condition(condition, description))

    def release(self) -> None:
        self._dispose(p.RELEASED, None)

    def modify(self, delivery_failed: bool = True, undeliverable_here: bool = False,
               annotations: dict[Any, Any] | None = None) -> None:
        """Settle as modified; `annotations` (str keys become symbols) go to the sender."""
        if self.settled:
            return
        encoded = None
        if annotations:
            encoded = codec.encode({symbol(k) if isinstance(k, str) else k: v
                                    for k, v in annotations.items()})
        _settle_now(self, p.Settle(
            self._arrival.link.id, [self.id], p.MODIFIED, delivery_failed=delivery_failed,
            undeliverable_here=undeliverable_here, annotations=encoded,
        ))

    def _dispose(self, state: int, condition: p.Condition | None) -> None:
        arrival = self._arrival
        index = self._index
        if arrival.settled[index]:
            return
        link = arrival.link
        if condition is not None:
            _settle_now(self, p.Settle(link.id, [arrival.first_id + index], state, condition))
            return
        if arrival.generation != link.generation:
            arrival.check_live()  # DeliveryLost: the peer has it again
        if link.failure is not None:
            raise link.failure  # nothing can settle it now: never pretend it was
        arrival.settled[index] = 1
        driver = link.receiver.waiter
        lock = driver.lock
        lock.acquire()  # not `with`, as in Sender._add: this runs once a message
        try:
            # Settlements wake no worker of their own: they go with a full batch, a
            # flow, a send, or the linger thread within LINGER.
            if link.settle_later(arrival.first_id + index, state):
                driver.write(link.slot)
                return
        finally:
            lock.release()
        if not link.dirty:
            driver.mark_dirty(link)

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} settled={self.settled} {len(self.payload)} bytes>"


class Deliveries(_Parts[Delivery]):
    """What `receive_many` took, in order: Deliveries made on demand, and bulk answers.

    `payloads`, `bodies` and `messages` give every message without a Delivery object
    each; `accept()` accepts them all with one command per link.
    """

    __slots__ = ("_receiver",)

    def __init__(self, receiver: Receiver, parts: list[tuple[Arrival, int, int]]) -> None:
        super().__init__(parts)  # (arrival, lo, hi): its messages lo..hi-1
        self._receiver = receiver

    _item = Delivery  # type: ignore[assignment]  # the class makes the item: no call between

    @property
    def payloads(self) -> list[bytes]:
        """Every message's encoded form."""
        if len(self._parts) == 1:
            arrival, lo, hi = self._parts[0]
            return arrival.payloads[lo:hi]
        return [x for arrival, lo, hi in self._parts for x in arrival.payloads[lo:hi]]

    @property
    def bodies(self) -> list[Any]:
        """Every message's body, as `Delivery.body` gives it."""
        bodies: list[Any] = []
        for arrival, lo, hi in self._parts:
            found = data_bodies(arrival.payloads[lo:hi])
            for index, body in enumerate(found, lo):
                if body is None:  # not one data section: decode the message
                    found[index - lo] = arrival.message(index).body
            bodies += found
        return bodies

    @property
    def messages(self) -> list[Message]:
        """Every message, decoded (once: Delivery.message gives the same objects)."""
        return [m for arrival, lo, hi in self._parts for m in arrival.messages_in(lo, hi)]

    def accept(self) -> None:
        """Accept every message not settled yet."""
        self._receiver.accept_many(self)

    def __repr__(self) -> str:
        return f"<Deliveries {len(self)} messages>"


class ReceiverView:
    """What every face's Receiver tells of its state (the core's ReceiverState)."""

    def __init__(self, state: ReceiverState) -> None:
        self._state = state
        self.credit = state.credit
        self.auto_accept = state.auto_accept

    @property
    def address(self) -> str | None:
        """The source's address (a dynamic source's: the one the peer gave it)."""
        return self._state.address

    @property
    def source(self) -> Source | None:
        """The Source this receiver asked for."""
        link = _first_opened(self._state.links.values())
        return Source.from_wire(link.attach.source) if link and link.attach else None

    @property
    def remote_source(self) -> Source | None:
        """The peer's answer: the Source it attached. Its `filters` are the ones the peer
        applies (a peer that ignores a selector leaves it out), its `distribution_mode`
        and `capabilities` what it does."""
        link = _first_opened(self._state.links.values())
        return Source.from_wire(link.remote_source) if link else None

    @property
    def remote_properties(self) -> dict[str, Any]:
        """The link properties of the peer's attach."""
        link = _first_opened(self._state.links.values())
        return decode_properties(link.remote_properties) if link else {}

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def lost(self) -> int:
        """Deliveries whose connection was lost before they were settled: dropped from
        the prefetch untaken, or refused a settlement (DeliveryLost). The peer holds
        them as unsettled and delivers them again."""
        return self._state.lost


class Receiver(ReceiverView):
    """Receives from one address over every shard; iterate it for Deliveries."""

    def __init__(self, driver: Driver, state: ReceiverState, owner: object = None) -> None:
        super().__init__(state)
        self._driver = driver
        self._owner = owner  # its Connection or Listener: the Container lives as long
        state.waiter = driver
        if _clinks is not None and type(self).receive is Receiver.receive:
            # receive(timeout=None) with its common case in C, as Sender.send.
            self.receive = _clinks.Receive(self, state, self.receive)  # type: ignore[method-assign]

    def receive(self, timeout: float | None = None) -> Delivery:
        """The next delivery; raises TimeoutError after `timeout` s, LinkDetached on failure."""
        state = self._state
        if not state.buffer:
            self._await_buffer(timeout)
        arrival, index = state.take()
        link = arrival.link
        link.consumed += 1
        if link.consumed * 2 >= link.credit:  # _taken, inlined: this runs once per message
            self._taken(link, 0)
        delivery = _new_object(Delivery)  # Delivery(arrival, index), as Sender._add does
        delivery._arrival = arrival
        delivery._index = index
        if self.auto_accept:
            delivery.accept()
        return delivery

    def receive_many(self, limit: int = 1024, timeout: float | None = None) -> Deliveries:
        """Up to `limit` deliveries: what is buffered now, or waits for at least one."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        self._await_buffer(timeout)
        parts = self._state.take_many(limit)
        for arrival, lo, hi in parts:
            self._taken(arrival.link, hi - lo)
        deliveries = Deliveries(self, parts)
        if self.auto_accept:
            self.accept_many(deliveries)
        return deliveries

    def _taken(self, link: ReceiverLink, count: int) -> None:
        """Grant credit for what the user took, in batches (half the link's credit)."""
        link.consumed += count
        if link.consumed * 2 >= link.credit and link.failure is None:
            driver = self._driver
            with driver.lock:
                link.grant()
                driver.write(link.slot)

    def accept_many(self, deliveries: Iterable[Delivery]) -> None:
        """Accept deliveries in bulk (one settle command per link).

        Raises the failure of a link whose deliveries can no longer be settled (the
        others are settled first)."""
        by_link: dict[ReceiverLink, list[int]] = {}
        lost: list[Arrival] = []  # their connection was lost since they arrived
        if isinstance(deliveries, Deliveries):
            for arrival, lo, hi in deliveries._parts:
                if arrival.generation != arrival.link.generation:
                    if arrival.settled.count(0, lo, hi):
                        lost.append(arrival)
                    continue
                ids = arrival.take_unsettled(lo, hi)
                if ids:
                    by_link.setdefault(arrival.link, []).extend(ids)
        else:
            for delivery in deliveries:
                arrival = delivery._arrival
                if not arrival.settled[delivery._index]:
                    if arrival.generation != arrival.link.generation:
                        lost.append(arrival)
                        continue
                    arrival.settled[delivery._index] = 1
                    by_link.setdefault(arrival.link, []).append(delivery.id)
        driver = self._driver
        failed = [link for link in by_link if link.failure is not None]
        with driver.lock:
            for link, ids in by_link.items():
                if link.failure is None:
                    link.settle_now(p.Settle(link.id, ids, p.ACCEPTED))
                    driver.write(link.slot)
        if failed:
            raise failed[0].failure  # type: ignore[misc]
        if lost:
            lost[0].check_live()  # raises DeliveryLost

    def _await_buffer(self, timeout: float | None) -> None:
        """Return once a delivery is buffered; raise if none can come."""
        if not self._state.buffer:
            _ops.run(self._driver, _ops.buffered(self._state), timeout)

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries as they come; ends when every link closed cleanly, raises on error."""
        while True:
            try:
                yield self.receive()
            except LinkDetached as exc:
                if exc.condition is None:
                    return
                raise

    def _settle_batches(self) -> None:
        self._driver.flush()

    def flow(self, credit: int) -> None:
        """Grant `credit` more, shared among the links as it divides: the way a receiver
        opened with ``credit=0`` gets messages at all (and ``drain()`` then asks for what
        is there now)."""
        if not isinstance(credit, int) or isinstance(credit, bool) or credit < 1:
            raise ValueError(f"credit must be a positive int, not {credit!r}")
        state = self._state
        if state.closed:
            raise LinkDetached(f"the receiver from {self.address!r} is closed")
        driver = self._driver
        with driver.lock:
            driver.core.flow(state, credit)
            driver.write_all()

    def drain(self, timeout: float | None = None) -> int:
        """Ask the peer to send now what it has for this receiver, within the credit, or
        give the credit back; returns once it answered (AMQP's drain), with how many
        deliveries are buffered to take. The credit is granted again after it: the
        receiver goes on (one opened with ``credit=0`` keeps none: a pull consumer's
        ``flow(n)`` then ``drain()`` takes at most n, what is there). A peer that never
        answers a drain (the Proton C example broker) raises TimeoutError after
        `timeout` seconds."""
        return _ops.run(self._driver, _ops.drain(self._driver, self._state), timeout)

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Release what was received but not taken, detach every link and wait (up to
        `timeout`) for the peer to confirm: nothing on its way is lost from view. The
        link is closed: a durable subscription ends with it (see detach)."""
        _ops.run(self._driver, _ops.close_receiver(self._driver, self._state), timeout)

    def detach(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """As close(), but detach the links without closing them: a durable subscription
        stays on the peer, to be resumed by a receiver with the same name (and the same
        container id) later; its messages accumulate meanwhile."""
        _ops.run(self._driver, _ops.close_receiver(self._driver, self._state, detach=True),
                 timeout)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COUNT_NAMES = ("handled", "accepted", "rejected", "released", "modified")


class HandlerReceiverView:
    """What every face's receiver tells of a handler inside the workers
    (``open_receiver(address, handler="package.module:Name")``).

    Each worker that carries a shard of it makes the handler once and calls its
    ``on_message`` for each message there: this process never sees the messages. It sees
    `counts()` (per worker: handled, accepted, rejected, released, modified), `failures`
    (a `HandlerFailed` with the worker's traceback for each link a callback ended), and
    waits with its face's `wait()`. Open at least as many shards as there are workers to
    use them all: a worker with no shard of the receiver runs no handler for it.
    """

    def __init__(self, driver: Driver, state: ReceiverState, owner: object = None) -> None:
        self._driver = driver
        self._state = state
        self._owner = owner  # its Connection: the Container lives as long
        self._reported: set[int] = set()
        state.waiter = driver
        self.address = state.address
        self.handler = state.handler
        self.credit = state.credit

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def links(self) -> int:
        """How many of its links (one per shard) are still attached."""
        return sum(not x.closed for x in self._state.links.values())

    def counts(self) -> dict[int, dict[str, int]]:
        """What the handlers did, by worker index (the workers' latest reports: they
        come at most every 20 ms per worker, and at once when a link ends)."""
        if not self._driver.closed:
            self._driver.refresh()
        by_worker: dict[int, dict[str, int]] = {}
        for link in self._state.links.values():
            row = by_worker.setdefault(link.slot.index, dict.fromkeys(COUNT_NAMES, 0))
            counts = link.counts
            if counts is not None:
                for name in COUNT_NAMES:
                    row[name] += getattr(counts, name)
        return by_worker

    @property
    def handled(self) -> int:
        """Messages the handlers finished with, over every worker."""
        return sum(row["handled"] for row in self.counts().values())

    @property
    def failures(self) -> list[HandlerFailed]:
        """The failure of each link a handler ended (the traceback in `.traceback`)."""
        return [x.failure for x in self._state.links.values()
                if isinstance(x.failure, HandlerFailed)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address!r} handler={self.handler!r}>"


class HandlerReceiver(HandlerReceiverView):
    """A receiver whose messages a handler takes inside the workers; see
    `HandlerReceiverView` for what it tells, and `wait()` / `close()`."""

    def wait(self, handled: int | None = None, timeout: float | None = None) -> None:
        """Until the handlers handled `handled` messages in all (None: until every link
        ended). Raises a `HandlerFailed` that was not raised yet as soon as it comes (once
        each: wait again to go on with the other links), the failure that ended every
        link if they all ended first, and TimeoutError after `timeout` s."""
        _ops.run(self._driver, _ops.handled(self._state, handled, self._reported), timeout)

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Detach every link and wait (up to `timeout`) for the workers to confirm; what
        the handlers were given and did not settle is released."""
        _ops.run(self._driver, _ops.close_receiver(self._driver, self._state), timeout)

    def __enter__(self) -> HandlerReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_clinks() -> Any:
    """``amqscale._clinks``, handed this module's classes, or None for pure Python: as
    the codec's C fast path (off with ``AMQSCALE_PURE_PYTHON``, or not built), and when
    the extension does not fit these classes."""
    if _ccodec is None:
        return None
    try:
        clinks = importlib.import_module("amqscale._clinks")  # by name, as codec.py does
        clinks.setup({
            "SenderState": SenderState, "SenderLink": SenderLink, "Batch": Batch,
            "WorkerSlot": WorkerSlot, "Tracker": Tracker, "ReceiverState": ReceiverState,
            "Arrival": Arrival, "ReceiverLink": ReceiverLink, "Delivery": Delivery,
            "SEND_BATCH": SEND_BATCH, "AWAKE_BATCH": AWAKE_BATCH,
            "SETTLE_BATCH": SETTLE_BATCH, "WAKE_INTERVAL": p.WAKE_INTERVAL,
            "ACCEPTED": p.ACCEPTED, "accept_python": Delivery.accept,
            "body_python": vars(Delivery)["body"].fget, "data_body": data_body,
            "message_python": vars(Delivery)["message"].fget, "Message": Message,
            "encode_message": _ccodec.encode_message,
        })
    except Exception:  # ImportError, or a setup() that does not recognise the classes
        return None
    return clinks


# Sender.send, Receiver.receive (per instance, in __init__), Delivery.accept, .body and
# .message: their common case in C, the Python above for the rest.
_clinks = _load_clinks()
if _clinks is not None:
    Delivery.accept = _clinks.accept_method(Delivery)  # type: ignore[method-assign]
    Delivery.body = property(_clinks.delivery_body,  # type: ignore[method-assign,assignment]
                             doc=Delivery.body.__doc__)
    Delivery.message = property(_clinks.delivery_message,  # type: ignore[method-assign,assignment]
                                doc=Delivery.message.__doc__)
