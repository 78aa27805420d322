"""Senders and receivers of the blocking API, and what they hand out: Trackers, Deliveries.

A Sender or Receiver opened on a connection with `shards=K` is K AMQP links, one per
shard. Messages are spread over the shards' links; deliveries from every link arrive in
one stream. Sends are batched per link and handed over when a batch fills, when the
worker has caught up (so a lone message does not wait), when the user waits for outcomes,
or by the linger thread within LINGER. Settlements go with the next command or the linger
thread: they never wake a worker on their own.

The batch face (`send_many`, `receive_many`) keeps no object per message: `Trackers` and
`Deliveries` index into per-batch state and make a Tracker or Delivery when asked.
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from . import codec
from .errors import LinkDetached, MessageTooLarge, WorkerDied
from .message import Message
from .types import symbol
from .workers import protocol as p

if TYPE_CHECKING:
    from ._supervisor import WorkerHandle
    from .container import Container, _Shard

SEND_BATCH = 128  # messages per Send command when the worker is busy
SETTLE_BATCH = 128

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
decode_messages: Callable[[list[bytes]], list[Message] | None] = (
    (lambda payloads: None) if _ccodec is None else _ccodec.decode_messages)


def encode_body(body: bytes | bytearray | memoryview) -> bytes:
    """The AMQP encoding of a message that is just `body` as one data section."""
    size = len(body)
    if size < 256:
        return _DATA8_PREFIXES[size] + bytes(body)
    return _DATA32 + _U32.pack(size) + bytes(body)


def decode_body(payload: bytes) -> bytes | None:
    """The body of a message that is exactly one data section, else None (fast path)."""
    if payload[:4] == _DATA8 and len(payload) == 5 + payload[4]:
        return payload[5:]
    if payload[:4] == _DATA32 and len(payload) == 8 + _U32.unpack_from(payload, 4)[0]:
        return payload[8:]
    return None


class _Result(NamedTuple):
    """How a sent message ended. Accepted and pre-settled are shared constants."""

    state: int | None
    condition: p.Condition | None = None
    delivery_failed: bool = False
    undeliverable_here: bool = False
    annotations: dict[Any, Any] | None = None


_ACCEPTED = _Result(p.ACCEPTED)
_SENT_SETTLED = _Result(None)


class _Batch:
    """Consecutive messages of one link, handed over as one Send command, and their results.

    Results are kept per batch, not per message: peers mostly settle in order with one
    outcome, so the usual state is "the first `done` messages ended as `head`", which
    costs nothing per message. A per-message list is made only when outcomes differ or
    come out of order.
    """

    __slots__ = ("link", "first", "size", "payloads", "done", "head", "results", "pending")

    def __init__(self, link: _SenderLink, first: int, payloads: list[bytes]) -> None:
        self.link = link
        self.first = first  # the seq of payloads[0]
        self.size = len(payloads)
        # Kept until every message is settled, so that unsettled ones can be sent again.
        self.payloads: list[bytes] | None = payloads
        self.done = 0
        self.head: _Result | None = None
        self.results: list[_Result | None] | None = None
        self.pending = len(payloads)  # messages not settled yet

    def result(self, index: int) -> _Result | None:
        results = self.results
        if results is None:
            return self.head if index < self.done else None
        return results[index]

    def settle(self, lo: int, hi: int, result: _Result) -> int:
        """Record `result` for messages lo..hi-1 (indexes); returns how many were pending."""
        results = self.results
        if results is None:
            if lo == self.done and (lo == 0 or result is self.head):
                self.done = hi
                self.head = result
                self.pending -= hi - lo
                return hi - lo
            results = self.results = [self.head] * self.done + [None] * (self.size - self.done)
        newly = results[lo:hi].count(None)
        results[lo:hi] = [result] * (hi - lo)
        self.pending -= newly
        return newly


def _first_seq(batch: _Batch) -> int:
    return batch.first


class Tracker:
    """The state of one sent message: settled or not, and the outcome the peer gave it."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
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
    def _result(self) -> _Result | None:
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
        return self._result is _ACCEPTED

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
        link = self._batch.link
        link.sender._container._wait(
            lambda: self.settled or link.failure is not None, timeout,
            f"message {self.seq} to be settled",
        )
        if not self.settled:
            assert link.failure is not None
            raise link.failure
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

    def __init__(self, batches: list[_Batch]) -> None:
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
            batch.head is _ACCEPTED if batch.results is None
            else all(result is _ACCEPTED for result in batch.results)
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
        if not self._batches:
            return self
        links = {batch.link for batch in self._batches}
        container = self._batches[0].link.sender._container
        container._wait(
            lambda: self.settled or any(link.failure for link in links), timeout,
            f"{len(self)} messages to be settled",
        )
        for batch in self._batches:
            if batch.pending and batch.link.failure is not None:
                raise batch.link.failure
        return self

    def __repr__(self) -> str:
        return f"<Trackers {len(self)} messages settled={self.settled}>"


class _SenderLink:
    """One shard's link of a Sender."""

    __slots__ = ("id", "worker", "sender", "next_seq", "batches", "open", "unsettled",
                 "opened", "failure", "remote_target", "dirty")

    def __init__(self, link_id: int, shard: _Shard, sender: Sender) -> None:
        self.id = link_id
        self.worker: WorkerHandle = shard.worker
        self.sender = sender
        self.next_seq = 0  # the seq of the next message taken
        self.batches: deque[_Batch] = deque()  # with unsettled messages, in seq order
        self.open: _Batch | None = None  # the batch send() adds to, not handed over yet
        self.unsettled = 0  # messages taken and not settled: the window's fill
        self.opened = False
        self.failure: Exception | None = None
        self.remote_target: p.Terminus | None = None
        self.dirty = False  # a partial batch waits for the linger thread

    def take(self, payloads: list[bytes]) -> _Batch:
        """Number `payloads` as the link's next messages, in a new batch (lock held)."""
        batch = _Batch(self, self.next_seq, payloads)
        self.next_seq += len(payloads)
        self.unsettled += len(payloads)
        self.batches.append(batch)
        return batch

    def hand_over(self) -> None:
        """Queue the open batch as one Send command for the shard's worker."""
        self.dirty = False
        batch = self.open
        if batch is not None:
            self.open = None
            assert batch.payloads is not None
            self.worker.queue(p.Send(self.id, batch.first, batch.payloads,
                                     self.sender.presettled))

    @property
    def unsettled_trackers(self) -> list[Tracker]:
        return [Tracker(batch, i) for batch in self.batches
                for i in range(batch.size) if batch.result(i) is None]

    def on_event(self, event: p.Event) -> None:
        kind = type(event)
        if kind is p.Outcomes:
            self._on_outcomes(event)  # type: ignore[arg-type]
        elif kind is p.LinkOpened:
            self.opened = True
            self.remote_target = event.remote_target  # type: ignore[union-attr]
        elif kind is p.LinkClosed:
            cond = event.condition  # type: ignore[union-attr]
            self.failure = LinkDetached(
                f"sender to {self.sender.address!r} detached"
                + (f": {cond.name}: {cond.description}" if cond else ""),
                cond.name if cond else None, cond.description if cond else "",
            )

    def _on_outcomes(self, event: p.Outcomes) -> None:
        state = event.state
        if state == p.ACCEPTED:
            result = _ACCEPTED
        elif state == p.SENT_SETTLED:
            result = _SENT_SETTLED
        else:
            result = _Result(
                state, event.condition, event.delivery_failed, event.undeliverable_here,
                codec.decode(event.annotations) if event.annotations else None)
        runs = event.runs
        for i in range(0, len(runs), 2):
            self._settle_run(runs[i], runs[i + 1], result)
        batches = self.batches
        while batches and batches[0].pending == 0 and batches[0] is not self.open:
            batches.popleft().payloads = None
        counts = self.sender.counts
        counts[state] = counts.get(state, 0) + p.run_length(runs)

    def _settle_run(self, start: int, end: int, result: _Result) -> None:
        """Record `result` for seqs start..end-1; seqs of no unsettled batch are ignored."""
        batches = self.batches
        i = bisect.bisect_right(batches, start, key=_first_seq) - 1
        while start < end and 0 <= i < len(batches):
            batch = batches[i]
            size = batch.size
            lo = start - batch.first
            if lo >= size:
                return
            hi = min(end - batch.first, size)
            self.unsettled -= batch.settle(lo, hi, result)
            start = batch.first + hi
            i += 1


class Sender:
    """Sends messages to one address over every shard of a connection."""

    def __init__(self, container: Container, address: str | None, window: int,
                 presettled: bool) -> None:
        self._container = container
        self.address = address
        self.window = window
        self.presettled = presettled
        self._links: list[_SenderLink] = []
        self._current = 0  # the link taking messages until its batch is handed over
        self.counts: dict[int, int] = {}
        self.closed = False
        self._max_payload = container._max_payload

    def send(self, message: Message | bytes | bytearray | memoryview,
             timeout: float | None = None) -> Tracker:
        """Hand a message over for sending; returns its Tracker.

        `message` is a Message, or bytes to send as the body (one data section). Blocks
        while every link has `window` messages in flight (backpressure); raises
        TimeoutError after `timeout` seconds, and the message is then not sent.
        """
        if type(message) is bytes and len(message) < 256 and not self.closed:
            payload = _DATA8_PREFIXES[len(message)] + message  # the common case, inline
        else:
            payload = self._encode(message)
        link = self._links[self._current]
        if link.failure is not None or link.unsettled >= self.window:
            link = self._pick_link(timeout)
        container = self._container
        with container._lock:
            batch = link.open
            if batch is None:
                batch = link.open = link.take([payload])
                index = 0
            else:
                index = batch.size
                batch.payloads.append(payload)  # type: ignore[union-attr]
                batch.size = batch.pending = index + 1
                link.next_seq += 1
                link.unsettled += 1
            handed_over = index + 1 >= SEND_BATCH or link.worker.wants_work()
            if handed_over:
                link.hand_over()
                link.worker.flush(timeout=None)
                self._current = (self._current + 1) % len(self._links)
        if handed_over:
            container._take_events()
            return Tracker(batch, index)
        if not link.dirty:
            link.dirty = True
            container._mark_dirty(link)
        return Tracker(batch, index)

    def send_many(self, messages: Iterable[Message | bytes | bytearray | memoryview],
                  timeout: float | None = None) -> Trackers:
        """Send many messages at once; the fast path for a firehose.

        Every message is encoded first, so a bad one raises before any is sent. Each
        link then takes as many as its window has room for, as one command. Returns
        the messages' Trackers, made on demand. If the windows stay full for `timeout`
        seconds, TimeoutError is raised: its `trackers` are the messages already handed
        over (the rest were not sent).
        """
        if self.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        items = messages if type(messages) is list else list(messages)
        payloads = encode_payloads(items, self._max_payload)
        if payloads is None:  # one by one (and a bad one raises here)
            payloads = [self._encode(m) for m in items]
        batches: list[_Batch] = []
        done = 0
        while done < len(payloads):
            try:
                link = self._pick_link(timeout)
            except TimeoutError as exc:
                exc.trackers = Trackers(batches)  # type: ignore[attr-defined]
                raise
            room = self.window - link.unsettled
            chunk = payloads[done:done + room] if done or room < len(payloads) else payloads
            batches.append(self._hand_over_chunk(link, chunk))
            done += len(chunk)
            self._current = (self._current + 1) % len(self._links)
        self._container._take_events()
        return Trackers(batches)

    def _hand_over_chunk(self, link: _SenderLink, chunk: list[bytes]) -> _Batch:
        with self._container._lock:
            link.hand_over()  # what send() batched goes first: order is kept
            batch = link.take(chunk)
            link.worker.queue(p.Send(link.id, batch.first, chunk, self.presettled))
            link.worker.flush(timeout=None)
        return batch

    def _encode(self, message: Message | bytes | bytearray | memoryview) -> bytes:
        if self.closed:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        if isinstance(message, Message):
            payload = message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = encode_body(message)
        else:
            raise TypeError(
                f"send() takes a Message or bytes, not {type(message).__name__}"
            )
        if len(payload) > self._max_payload:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes encoded is larger than the "
                f"{self._max_payload} bytes that fit in a worker's ring (ring_capacity)"
            )
        return payload

    def _pick_link(self, timeout: float | None) -> _SenderLink:
        """The next shard's link with room in its window, waiting for room if none has."""
        links = self._links
        for _ in range(2):
            for _ in range(len(links)):
                link = links[self._current]
                if link.failure is not None:
                    raise link.failure
                if link.unsettled < self.window:
                    return link
                self._current = (self._current + 1) % len(links)
            self._container._wait(
                lambda: any(x.unsettled < self.window or x.failure for x in links),
                timeout, f"room in the window of the sender to {self.address!r}",
            )
        raise AssertionError("unreachable: a link had room after waiting")

    @property
    def unsettled(self) -> list[Tracker]:
        """Trackers of messages not yet settled, across every shard."""
        return [t for link in self._links for t in link.unsettled_trackers]

    def flush(self, timeout: float | None = None) -> None:
        """Hand over every batched message and wait until each is settled."""
        self._container._flush_all()
        self._container._wait(
            lambda: all(not x.unsettled or x.failure for x in self._links), timeout,
            f"every message to {self.address!r} to be settled",
        )
        for link in self._links:
            if link.unsettled and link.failure is not None:
                raise type(link.failure)(
                    f"{link.unsettled} message(s) unsettled: {link.failure}",
                    getattr(link.failure, "condition", None),
                )

    def close(self, timeout: float | None = None) -> None:
        """Flush, then detach every link."""
        if self.closed:
            return
        try:
            if not any(link.failure for link in self._links):
                self.flush(timeout)
        finally:
            self.closed = True
            self._container._close_links(self._links)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Arrival:
    """The messages of one Deliveries event, as the user takes them.

    Deliveries point into it by index, and settled flags and decoded messages are kept
    here, so taking a batch of messages costs no object per message.
    """

    __slots__ = ("link", "first_id", "payloads", "settled", "messages")

    def __init__(self, link: _ReceiverLink, event: p.Deliveries) -> None:
        self.link = link
        self.first_id = event.first_id
        self.payloads = event.payloads
        self.settled = bytearray(len(event.payloads))  # 1: settled (by us or pre-settled)
        for index in event.settled or ():
            self.settled[index] = 1
        self.messages: list[Message | None] | None = None  # decoded on first use

    def message(self, index: int) -> Message:
        messages = self.messages
        if messages is None:
            messages = self.messages = [None] * len(self.payloads)
        message = messages[index]
        if message is None:
            message = messages[index] = Message.decode(self.payloads[index])
        return message

    def messages_in(self, lo: int, hi: int) -> list[Message]:
        """Messages lo..hi-1, decoded (a list at a time in C when none is yet)."""
        messages = self.messages
        if messages is None:
            messages = self.messages = [None] * len(self.payloads)
        if messages[lo:hi].count(None) == hi - lo:
            decoded = decode_messages(self.payloads[lo:hi])
            if decoded is not None:
                messages[lo:hi] = decoded
                return decoded
        return [self.message(index) for index in range(lo, hi)]

    def take_unsettled(self, lo: int, hi: int) -> list[int]:
        """Mark messages lo..hi-1 settled; returns the delivery ids of those that were not."""
        flags = self.settled
        first = self.first_id
        if flags.count(1, lo, hi):
            ids = [first + i for i in range(lo, hi) if not flags[i]]
        else:
            ids = list(range(first + lo, first + hi))
        flags[lo:hi] = b"\x01" * (hi - lo)
        return ids


class Delivery:
    """A received message, and the means to settle it."""

    __slots__ = ("_arrival", "_index")

    def __init__(self, arrival: _Arrival, index: int) -> None:
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
        body = decode_body(self.payload)
        return self.message.body if body is None else body

    def accept(self) -> None:
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
        link = self._arrival.link
        link.dispose(self, p.Settle(
            link.id, [self.id], p.MODIFIED, delivery_failed=delivery_failed,
            undeliverable_here=undeliverable_here, annotations=encoded,
        ))

    def _dispose(self, state: int, condition: p.Condition | None) -> None:
        if self.settled:
            return
        link = self._arrival.link
        if condition is None:
            link.dispose_plain(self, state)
        else:
            link.dispose(self, p.Settle(link.id, [self.id], state, condition))

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} settled={self.settled} {len(self.payload)} bytes>"


class Deliveries(_Parts[Delivery]):
    """What `receive_many` took, in order: Deliveries made on demand, and bulk answers.

    `payloads`, `bodies` and `messages` give every message without a Delivery object
    each; `accept()` accepts them all with one command per link.
    """

    __slots__ = ("_receiver",)

    def __init__(self, receiver: Receiver, parts: list[tuple[_Arrival, int, int]]) -> None:
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


class _ReceiverLink:
    __slots__ = ("id", "worker", "receiver", "credit", "consumed", "settling", "opened",
                 "failure", "remote_source")

    def __init__(self, link_id: int, worker: WorkerHandle, receiver: Receiver,
                 credit: int) -> None:
        self.id = link_id
        self.worker = worker
        self.receiver = receiver
        self.credit = credit
        self.consumed = 0
        self.settling: dict[int, list[int]] = {}
        self.opened = False
        self.failure: Exception | None = None
        self.remote_source: p.Terminus | None = None

    def on_event(self, event: p.Event) -> None:
        kind = type(event)
        if kind is p.Deliveries:
            self.receiver._buffer.append(_Arrival(self, event))  # type: ignore[arg-type]
        elif kind is p.LinkOpened:
            self.opened = True
            self.remote_source = event.remote_source  # type: ignore[union-attr]
        elif kind is p.LinkClosed:
            cond = event.condition  # type: ignore[union-attr]
            self.failure = LinkDetached(
                f"receiver from {self.receiver.address!r} detached"
                + (f": {cond.name}: {cond.description}" if cond else ""),
                cond.name if cond else None, cond.description if cond else "",
            )

    def taken(self, count: int = 1) -> None:
        """The user took deliveries: there is room for as many more; grant in batches."""
        self.consumed += count
        if self.consumed * 2 >= self.credit and self.failure is None:
            container = self.receiver._container
            with container._lock:
                self.hand_over()  # settle first: a broker may count unsettled against us
                self.worker.queue(p.Flow(self.id, self.consumed))
                self.worker.flush(timeout=None)
            self.consumed = 0

    def dispose_plain(self, delivery: Delivery, state: int) -> None:
        delivery._arrival.settled[delivery._index] = 1
        container = self.receiver._container
        with container._lock:
            ids = self.settling.get(state)
            if ids is None:
                ids = self.settling[state] = []
            ids.append(delivery.id)
            # Settlements wake no worker of their own: they go with a full batch, a
            # flow, a send, or the linger thread within LINGER.
            if len(ids) >= SETTLE_BATCH:
                self.hand_over()
                self.worker.flush(timeout=None)
                return
        container._mark_dirty(self)

    def dispose(self, delivery: Delivery, command: p.Settle) -> None:
        delivery._arrival.settled[delivery._index] = 1
        with self.receiver._container._lock:
            self.hand_over()
            self.worker.queue(command)
            self.worker.flush(timeout=None)

    def hand_over(self) -> None:
        if self.settling and self.failure is None:
            for state, ids in self.settling.items():
                self.worker.queue(p.Settle(self.id, ids, state))
        self.settling = {}


class Receiver:
    """Receives from one address over every shard; iterate it for Deliveries."""

    def __init__(self, container: Container, address: str | None, credit: int,
                 auto_accept: bool = False, endless: bool = False) -> None:
        self._container = container
        self.address = address
        # A listener's receiver: links come and go, it only ends when closed.
        self._endless = endless
        self.credit = credit
        self.auto_accept = auto_accept
        self._links: dict[int, _ReceiverLink] = {}
        self._buffer: deque[_Arrival] = deque()
        self._position = 0  # how many of the buffer's first arrival were taken
        self.closed = False

    def receive(self, timeout: float | None = None) -> Delivery:
        """The next delivery; raises TimeoutError after `timeout` s, LinkDetached on failure."""
        self._await_buffer(timeout)
        return self._take()

    def receive_many(self, limit: int = 1024, timeout: float | None = None) -> Deliveries:
        """Up to `limit` deliveries: what is buffered now, or waits for at least one."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        self._await_buffer(timeout)
        return self._take_many(limit)

    def accept_many(self, deliveries: Iterable[Delivery]) -> None:
        """Accept deliveries in bulk (one settle command per link)."""
        by_link: dict[_ReceiverLink, list[int]] = {}
        if isinstance(deliveries, Deliveries):
            for arrival, lo, hi in deliveries._parts:
                ids = arrival.take_unsettled(lo, hi)
                if ids:
                    by_link.setdefault(arrival.link, []).extend(ids)
        else:
            for delivery in deliveries:
                arrival = delivery._arrival
                if not arrival.settled[delivery._index]:
                    arrival.settled[delivery._index] = 1
                    by_link.setdefault(arrival.link, []).append(delivery.id)
        with self._container._lock:
            for link, ids in by_link.items():
                if link.failure is None:
                    link.hand_over()
                    link.worker.queue(p.Settle(link.id, ids, p.ACCEPTED))
                    link.worker.flush(timeout=None)

    def _await_buffer(self, timeout: float | None) -> None:
        """Return once a delivery is buffered; raise if none can come."""
        if self._buffer:
            return
        if self.closed:
            raise LinkDetached(f"the receiver from {self.address!r} is closed")
        self._container._wait(
            lambda: bool(self._buffer) or self._all_failed(), timeout,
            f"a message from {self.address!r}", settlements=False,
        )
        if not self._buffer:
            failures = [x.failure for x in self._links.values() if x.failure]
            raise failures[0] if failures else LinkDetached(
                f"the receiver from {self.address!r} is closed")

    def _all_failed(self) -> bool:
        if self._endless:
            return self.closed
        return bool(self._links) and all(x.failure for x in self._links.values())

    def _take(self) -> Delivery:
        arrival = self._buffer[0]
        position = self._position
        delivery = Delivery(arrival, position)
        if position + 1 == len(arrival.payloads):
            self._buffer.popleft()
            self._position = 0
        else:
            self._position = position + 1
        arrival.link.taken()
        if self.auto_accept:
            delivery.accept()
        return delivery

    def _take_many(self, limit: int) -> Deliveries:
        """Up to `limit` buffered deliveries, a slice of each arrival at a time."""
        parts: list[tuple[_Arrival, int, int]] = []
        buffer = self._buffer
        room = limit
        while buffer and room:
            arrival = buffer[0]
            position = self._position
            end = min(len(arrival.payloads), position + room)
            parts.append((arrival, position, end))
            room -= end - position
            if end == len(arrival.payloads):
                buffer.popleft()
                self._position = 0
            else:
                self._position = end
            arrival.link.taken(end - position)
        deliveries = Deliveries(self, parts)
        if self.auto_accept:
            self.accept_many(deliveries)
        return deliveries

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
        self._container._flush_all()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._settle_batches()
        self._container._close_links(list(self._links.values()))

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_failure(index: int, code: int | None) -> WorkerDied:
    return WorkerDied(
        f"worker {index} died (exit code {code}); its unsettled messages are kept",
        "amqscale:worker-died",
    )
