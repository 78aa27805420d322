"""The client's state and policy, sans I/O: worker events in, commands out.

Everything the faces (the blocking API today; asyncio and handlers next) share lives here
in plain objects: connections and their shards, links, windows, credit, send batches and
their outcome runs, arrivals of received messages, routing, ids, placement and what a dead
worker means. Nothing here touches a ring, a thread, a lock, a clock or a socket, in the
manner of h11's ``Connection``: the driver (``amqscale._driver``) feeds events in with
:meth:`ClientCore.handle_events` and writes what :attr:`WorkerSlot.queued` holds; a face
asks questions (``has_room``, ``settled``) and waits with its own means. So every state
machine here is tested in memory with scripted events (``amqscale.testing.core``).

The caller serialises calls (the driver's lock); nothing here is thread-safe by itself.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import msgspec

from . import codec
from .errors import (
    AuthenticationError,
    ConnectionFailed,
    DeliveryLost,
    HandlerFailed,
    LinkDetached,
    MessageTooLarge,
    TLSError,
    WorkerDied,
)
from .message import Message, convert_natives
from .reconnect import Policy
from .url import URL
from .workers import protocol as p

# Messages decoded a list at a time, in C when the codec's C fast path is on; None means
# "not handled here" (the caller decodes one by one).
decode_messages: Callable[[list[bytes]], list[Message] | None] = (
    (lambda payloads: None) if codec._ccodec is None else codec._ccodec.decode_messages)

frames_log = logging.getLogger("amqscale.frames")

SEND_BATCH = 128  # messages per Send command when the worker is busy
# Parts of a large message handed to a worker and not yet given to its engine, at most:
# the worker keeps what it is sent, so this bounds what the message costs it.
PARTS_IN_FLIGHT = 4
SETTLE_BATCH = 128
DECODE_AHEAD = 32  # messages of an arrival decoded together when one is asked for
# A receiving link's `credit` when the user grants it (credit=0, Receiver.flow): so large
# that taking deliveries never reaches the automatic grant's threshold.
MANUAL_CREDIT = 1 << 62
# A connection lost sooner than this after it opened does not start the reconnect
# schedule afresh, but goes on with it: a peer (or a message) that breaks every
# connection at once meets the backoff, not a reconnect storm.
STABLE_CONNECTION = 1.0
INBOUND_WINDOW = 1000  # messages in flight on a link a remote receiver attached to us


def condition_text(cond: p.Condition | None) -> str:
    return f": {cond.name}: {cond.description}" if cond else ""


def link_failure(kind: str, address: str | None, cond: p.Condition | None,
                 worker: int | None = None, where: str = "") -> LinkDetached:
    """The error of a link the peer (or the worker) ended: it names the link's address
    and, `where` given, the peer it is attached to."""
    on = f" on {where}" if where else ""
    if cond is not None and cond.name in (p.HANDLER_ERROR, p.HANDLER_NOT_FOUND):
        summary = cond.description.partition("\n")[0]
        return HandlerFailed(f"{kind} {address!r}{on}: {summary}", cond.name,
                             cond.description, worker)
    return LinkDetached(f"{kind} {address!r}{on} detached{condition_text(cond)}",
                        cond.name if cond else None, cond.description if cond else "")


def worker_failure(index: int, code: int | None) -> WorkerDied:
    return WorkerDied(
        f"worker {index} died (exit code {code}); its unsettled messages are kept",
        "amqscale:worker-died",
    )


class WorkerSlot:
    """The core's side of one worker: the commands queued for it, and whether it died."""

    __slots__ = ("index", "queued", "failure")

    def __init__(self, index: int) -> None:
        self.index = index
        self.queued: list[p.Command] = []  # in order; the driver writes and clears them
        self.failure: WorkerDied | None = None

    def queue(self, command: p.Command) -> None:
        self.queued.append(command)


# ---- sending ----------------------------------------------------------------------------


class Result(NamedTuple):
    """How a sent message ended. Accepted and pre-settled are shared constants."""

    state: int | None
    condition: p.Condition | None = None
    delivery_failed: bool = False
    undeliverable_here: bool = False
    annotations: dict[Any, Any] | None = None
    data: Any = None  # the outcome's own fields: a declared's [txn-id]


ACCEPTED = Result(p.ACCEPTED)
SENT_SETTLED = Result(None)
# A transactional message (or a transaction's control message) whose connection was lost
# before it was settled: the peer rolls the transaction back, so it is not sent again.
ROLLED_BACK = Result(p.REJECTED, p.Condition(
    "amqp:transaction:rollback",
    "the connection was lost: the peer rolled the transaction back"))


class Batch:
    """Consecutive messages of one link, handed over together, and their results.

    Results are kept per batch, not per message: peers mostly settle in order with one
    outcome, so the usual state is "the first `done` messages ended as `head`", which
    costs nothing per message. A per-message list is made only when outcomes differ or
    come out of order.
    """

    __slots__ = ("link", "first", "size", "payloads", "done", "head", "results", "pending",
                 "txn")

    def __init__(self, link: SenderLink, first: int, payloads: list[bytes],
                 txn: bytes | None = None) -> None:
        self.link = link
        self.txn = txn  # sent in this transaction: never sent again after a loss
        self.first = first  # the seq of payloads[0]
        self.size = len(payloads)
        # Kept until every message is settled, so that unsettled ones can be sent again.
        self.payloads: list[bytes] | None = payloads
        self.done = 0
        self.head: Result | None = None
        self.results: list[Result | None] | None = None
        self.pending = len(payloads)  # messages not settled yet

    def result(self, index: int) -> Result | None:
        results = self.results
        if results is None:
            return self.head if index < self.done else None
        return results[index]

    def settle(self, lo: int, hi: int, result: Result) -> int:
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


def _first_seq(batch: Batch) -> int:
    return batch.first


class SenderLink:
    """One shard's link of a Sender: its window, its batches, its outcomes."""

    __slots__ = ("id", "slot", "sender", "next_seq", "batches", "open", "unsettled",
                 "opened", "closed", "failure", "remote_target", "remote_source", "dirty",
                 "remote_max",
                 "parts_seq", "parts_written", "parts_busy",
                 "attach", "attached", "generation", "lost", "handed", "resent",
                 "remote_properties", "where")

    def __init__(self, link_id: int, slot: WorkerSlot, sender: SenderState) -> None:
        self.id = link_id
        self.slot = slot
        self.sender = sender
        self.next_seq = 0  # the seq of the next message taken
        self.batches: deque[Batch] = deque()  # with unsettled messages, in seq order
        self.open: Batch | None = None  # the batch send() adds to, not handed over yet
        self.unsettled = 0  # messages taken and not settled: the window's fill
        self.opened = False
        self.closed = False  # the detach is complete (ours or the peer's)
        self.failure: Exception | None = None
        self.remote_target: p.Terminus | None = None
        self.remote_source: p.Terminus | None = None
        self.dirty = False  # a partial batch waits for the linger pass
        self.remote_max = 0  # the peer's max-message-size (0: none)
        # How many parts of the large message `parts_seq` the worker gave the engine.
        self.parts_seq = -1
        self.parts_written = 0
        # A message in parts is being handed over: nothing else may go between its parts
        # (pick() passes this link by, hand_over() keeps the open batch for later).
        self.parts_busy = False
        self.attach: p.OpenLink | None = None  # what attaches it again after a reconnect
        # Its connection is up and it is attached there; False from a loss until it is
        # attached again (what it takes meanwhile waits, and goes with the replay).
        self.attached = True
        self.generation = 0  # connections lost under it
        self.lost: p.Condition | None = None  # why its connection went, while it is down
        self.handed = 0  # seqs below this went to a worker (a loss puts them in doubt)
        self.resent = 0  # messages sent again after a loss
        self.remote_properties: bytes | None = None  # the peer's link properties
        self.where = ""  # the URL of its peer, for errors

    def take(self, payloads: list[bytes], txn: bytes | None = None) -> Batch:
        """Number `payloads` as the link's next messages, in a new batch."""
        batch = Batch(self, self.next_seq, payloads, txn)
        self.next_seq += len(payloads)
        self.unsettled += len(payloads)
        self.batches.append(batch)
        return batch

    def add(self, payload: bytes) -> tuple[Batch, int]:
        """Add one message to the open batch (a new one if none); its batch and index."""
        batch = self.open
        if batch is None:
            batch = self.open = self.take([payload])
            return batch, 0
        index = batch.size
        batch.payloads.append(payload)  # type: ignore[union-attr]
        batch.size = batch.pending = index + 1
        self.next_seq += 1
        self.unsettled += 1
        return batch, index

    def hand_over(self) -> None:
        """Queue the open batch as one Send command for the shard's worker (not while a
        message in parts is being handed over: it goes once that is done)."""
        self.dirty = False
        batch = self.open
        if self.parts_busy:
            return
        if batch is not None:
            self.open = None
            if not self.attached:
                return  # kept in `batches`: the replay sends it once attached again
            assert batch.payloads is not None
            self.handed = batch.first + batch.size
            self.slot.queue(p.Send(self.id, batch.first, batch.payloads,
                                   self.sender.presettled))

    def send_chunk(self, payloads: list[bytes], txn: bytes | None = None) -> Batch:
        """Hand over `payloads` as one Send after what send() batched (order is kept),
        in transaction `txn` if one is given."""
        self.hand_over()
        batch = self.take(payloads, txn)
        if self.attached:
            self.handed = batch.first + batch.size
            self.slot.queue(p.Send(self.id, batch.first, payloads, self.sender.presettled,
                                   txn))
        elif txn is not None or self.sender.coordinator:
            self._roll_back(batch)  # its transaction went with the connection
        return batch

    def parts_done(self, seq: int, count: int) -> bool:
        """Has the worker given `count` parts of message `seq` to its engine?"""
        return self.parts_seq == seq and self.parts_written >= count

    def parts(self, payload: bytes, fragment: int) -> tuple[Batch, Iterator[p.SendPart]]:
        """Take a message too large for one record; its batch, and its parts to queue one
        at a time (memoryview slices: the payload is not copied)."""
        self.hand_over()
        batch = self.take([payload])
        if self.attached:
            self.handed = batch.first + 1
        view = memoryview(payload)
        link_id, seq, settled = self.id, batch.first, self.sender.presettled

        def parts() -> Iterator[p.SendPart]:
            for start in range(0, len(view), fragment):
                chunk = view[start:start + fragment]
                last = start + fragment >= len(view)
                yield p.SendPart(link_id, seq, chunk, last, settled)  # type: ignore[arg-type]

        return batch, parts()

    def unsettled_messages(self) -> Iterator[tuple[Batch, int]]:
        """(batch, index) of every message taken and not settled, in seq order."""
        for batch in self.batches:
            for i in range(batch.size):
                if batch.result(i) is None:
                    yield batch, i

    def on_event(self, event: p.Event) -> None:
        kind = type(event)
        if kind is p.Outcomes:
            self._on_outcomes(event)  # type: ignore[arg-type]
        elif kind is p.PartsWritten:
            if event.seq != self.parts_seq:  # type: ignore[union-attr]
                self.parts_seq, self.parts_written = event.seq, 0  # type: ignore[union-attr]
            self.parts_written += event.count  # type: ignore[union-attr]
        elif kind is p.LinkOpened:
            self.opened = True
            self.remote_target = event.remote_target  # type: ignore[union-attr]
            self.remote_source = event.remote_source  # type: ignore[union-attr]
            self.remote_max = event.remote_max_message_size  # type: ignore[union-attr]
            self.remote_properties = event.remote_properties  # type: ignore[union-attr]
            if not self.attached and self.failure is None:
                self._replay()
            self.attached = True
        elif kind is p.LinkClosed:
            if event.with_connection and self.failure is None:  # type: ignore[union-attr]
                self._lose(event.condition)  # type: ignore[union-attr]
                return  # its connection's ConnectionClosed decides what comes next
            self.closed = True
            if self.failure is None:
                self.failure = link_failure("sender to", self.sender.address,
                                            event.condition,  # type: ignore[union-attr]
                                            where=self.where)

    def _lose(self, condition: p.Condition | None) -> None:
        """Its connection is gone: what went to the worker unsettled is in doubt."""
        self.attached = False
        self.generation += 1
        self.lost = condition
        self.parts_seq, self.parts_written = -1, 0

    def fail_lost(self, failure: Exception) -> None:
        """Its connection will not come back."""
        self.closed = True
        if self.failure is None:
            self.failure = failure

    def _replay(self) -> None:
        """Attached again: every unsettled message goes again, in seq order (those that
        had gone to the worker count as resent), then what was taken meanwhile."""
        self.attached = True
        self.lost = None
        self.open = None
        presettled, fragment = self.sender.presettled, self.sender.fragment
        for batch in list(self.batches):
            if batch.txn is not None or self.sender.coordinator:
                self._roll_back(batch)
                continue
            assert batch.payloads is not None
            run: list[bytes] = []
            for i in range(batch.size):
                seq = batch.first + i
                if batch.result(i) is not None:
                    self._queue_run(seq - len(run), run, presettled)
                    run = []
                    continue
                if seq < self.handed:
                    self.resent += 1
                payload = batch.payloads[i]
                if len(payload) > fragment:
                    self._queue_run(seq - len(run), run, presettled)
                    run = []
                    self._queue_parts(seq, payload, fragment, presettled)
                else:
                    run.append(payload)
            self._queue_run(batch.first + batch.size - len(run), run, presettled)
        self.handed = self.next_seq

    def _roll_back(self, batch: Batch) -> None:
        """A transaction's messages whose connection was lost: the peer rolled it back."""
        rolled_back = 0
        for i in range(batch.size):
            if batch.result(i) is None:
                rolled_back += batch.settle(i, i + 1, ROLLED_BACK)
        self.unsettled -= rolled_back
        counts = self.sender.counts
        counts[p.REJECTED] = counts.get(p.REJECTED, 0) + rolled_back

    def _queue_run(self, first: int, payloads: list[bytes], presettled: bool) -> None:
        if payloads:
            self.slot.queue(p.Send(self.id, first, payloads, presettled))

    def _queue_parts(self, seq: int, payload: bytes, fragment: int,
                     presettled: bool) -> None:
        """A large message again: all its parts at once (a replay does not wait for
        PartsWritten; the window bounds how many such messages there are)."""
        view = memoryview(payload)
        for start in range(0, len(view), fragment):
            self.slot.queue(p.SendPart(self.id, seq, view[start:start + fragment],  # type: ignore[arg-type]
                                       start + fragment >= len(view), presettled))

    def _on_outcomes(self, event: p.Outcomes) -> None:
        state = event.state
        if state == p.ACCEPTED:
            result = ACCEPTED
        elif state == p.SENT_SETTLED:
            result = SENT_SETTLED
        else:
            result = Result(
                state, event.condition, event.delivery_failed, event.undeliverable_here,
                codec.decode(event.annotations) if event.annotations else None,
                codec.decode(event.data) if event.data else None)
        runs = event.runs
        for i in range(0, len(runs), 2):
            self._settle_run(runs[i], runs[i + 1], result)
        batches = self.batches
        while batches and batches[0].pending == 0 and batches[0] is not self.open:
            batches.popleft().payloads = None
        counts = self.sender.counts
        counts[state] = counts.get(state, 0) + p.run_length(runs)

    def _settle_run(self, start: int, end: int, result: Result) -> None:
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


class SenderState:
    """A Sender's links (one per shard), which one takes messages, and its counters."""

    __slots__ = ("address", "window", "presettled", "links", "current", "counts", "closed",
                 "max_message_size", "waiter", "listener", "fragment", "coordinator")

    def __init__(self, address: str | None, window: int, presettled: bool,
                 max_message_size: int) -> None:
        self.address = address
        self.window = window
        self.presettled = presettled
        self.max_message_size = max_message_size  # ours: 0 for none
        self.links: list[SenderLink] = []
        self.current = 0  # the link taking messages until its batch is handed over
        self.counts: dict[int, int] = {}
        self.closed = False
        self.waiter: Any = None  # what the face waits with (opaque here)
        # An inbound sender's listener: a remote receiver attached to it (one link).
        self.listener: ListenerState | None = None
        self.fragment = p.MAX_FRAGMENT  # larger messages cross in SendParts
        # A transaction coordinator's link: its declares and discharges are never resent.
        self.coordinator = False

    @property
    def resent(self) -> int:
        """Messages sent again after their connection was lost (duplicates possible)."""
        return sum(x.resent for x in self.links)

    def rotate(self) -> None:
        self.current = (self.current + 1) % len(self.links)

    def pick(self) -> SenderLink | None:
        """The next live link with room in its window, or None (wait for room).

        A failed link is skipped: one failed shard does not stop the others. When every
        link failed, the first failure is raised."""
        links = self.links
        live = False
        for _ in range(len(links)):
            link = links[self.current]
            if link.failure is None:
                live = True
                if link.unsettled < self.window and not link.parts_busy:
                    return link
            self.rotate()
        if not live:
            raise self.failure()
        return None

    def has_room(self) -> bool:
        """A live link has room in its window, or none is live (pick() then raises)."""
        live = [x for x in self.links if x.failure is None]
        return not live or any(x.unsettled < self.window and not x.parts_busy for x in live)

    def failure(self) -> Exception:
        """The failure to report when no link can take messages."""
        for link in self.links:
            if link.failure is not None:
                return link.failure
        return LinkDetached(f"sender to {self.address!r} is closed")

    def check_size(self, payload: bytes, link: SenderLink | None = None) -> None:
        """MessageTooLarge if the message exceeds our limit or the peer's on `link` (the
        current one by default)."""
        size = len(payload)
        limit = self.max_message_size
        if limit and size > limit:
            raise MessageTooLarge(
                f"message of {size} bytes encoded is larger than this sender's "
                f"max_message_size of {limit} bytes")
        link = link or self.links[self.current]
        if link.remote_max and size > link.remote_max:
            raise MessageTooLarge(
                f"message of {size} bytes encoded is larger than the {link.remote_max} "
                f"bytes the peer accepts (its max-message-size) on {self.address!r}")

    def check_sizes(self, payloads: list[bytes]) -> None:
        """check_size for a batch, on every link (a batch may go over several): nothing
        of it is sent if one message is too large."""
        if payloads and (self.max_message_size or any(x.remote_max for x in self.links)):
            largest = max(payloads, key=len)
            for link in self.links:
                self.check_size(largest, link)

    def all_settled(self) -> bool:
        return all(not x.unsettled or x.failure for x in self.links)

    def failed_with_unsettled(self) -> list[SenderLink]:
        return [x for x in self.links if x.unsettled and x.failure is not None]


# ---- receiving --------------------------------------------------------------------------


class Arrival:
    """The messages of one Deliveries event, as the user takes them.

    Deliveries point into it by index, and settled flags and decoded messages are kept
    here, so taking a batch of messages costs no object per message.
    """

    __slots__ = ("link", "first_id", "payloads", "settled", "messages", "generation",
                 "one_by_one")

    def __init__(self, link: ReceiverLink, first_id: int, payloads: list[bytes],
                 settled: Iterable[int] | None) -> None:
        self.link = link
        # Its ids mean nothing once its link was lost (None: a link-less test arrival).
        self.generation = link.generation if link is not None else 0
        self.first_id = first_id
        self.payloads = payloads
        self.settled = bytearray(len(payloads))  # 1: settled (by us or pre-settled)
        for index in settled or ():
            self.settled[index] = 1
        self.messages: list[Message | None] | None = None  # decoded on first use
        self.one_by_one = False  # a list of them failed to decode at once

    def message(self, index: int) -> Message:
        messages = self.messages
        if messages is None:
            messages = self.messages = [None] * len(self.payloads)
        message = messages[index]
        if message is None:
            # Taken one at a time, they are taken in order: decode the next few with this
            # one, a list at a time in C (less than half the cost each).
            if self._decode_together(index, min(len(messages), index + DECODE_AHEAD)):
                return messages[index]  # type: ignore[return-value]
            message = messages[index] = Message.decode(self.payloads[index])
            natives = self._natives()
            if natives is not None:
                convert_natives(message, *natives)
        return message

    def _decode_together(self, lo: int, hi: int) -> bool:
        """Decode messages lo..hi-1 as one list if none of them is yet; False if not done
        (one of them is malformed, or not for the C fast path: they go one by one)."""
        messages = self.messages
        assert messages is not None
        if hi - lo < 2 or self.one_by_one or messages[lo:hi].count(None) != hi - lo:
            return False
        decoded = decode_messages(self.payloads[lo:hi])
        if decoded is None:
            self.one_by_one = True  # not again for every message before the bad one
            return False
        natives = self._natives()
        if natives is not None:
            for message in decoded:
                convert_natives(message, *natives)
        messages[lo:hi] = decoded
        return True

    def _natives(self) -> tuple[bool, bool] | None:
        """Its receiver's decoding opt-ins (None: an arrival of no receiver's, in tests)."""
        link = self.link
        return link.receiver.natives if link is not None else None

    def messages_in(self, lo: int, hi: int) -> list[Message]:
        """Messages lo..hi-1, decoded (a list at a time in C when none is yet)."""
        messages = self.messages
        if messages is None:
            messages = self.messages = [None] * len(self.payloads)
        if self._decode_together(lo, hi):
            return messages[lo:hi]  # type: ignore[return-value]
        return [self.message(index) for index in range(lo, hi)]

    def check_live(self) -> None:
        """DeliveryLost if the connection that brought these messages was lost since."""
        if self.generation != self.link.generation:
            self.link.receiver.lost += 1
            raise DeliveryLost(
                f"this message from {self.link.receiver.address!r} cannot be settled: "
                f"its connection was lost after it arrived (the peer still holds it "
                f"unsettled: a broker delivers it again)",
                "amqscale:delivery-lost")

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


class ReceiverLink:
    """One shard's link of a Receiver (or an inbound link of a Listener)."""

    __slots__ = ("id", "slot", "receiver", "credit", "consumed", "settling", "opened",
                 "closed", "failure", "remote_source", "remote_target", "parts", "dirty",
                 "counts", "attach", "attached", "generation", "lost", "counts_base",
                 "remote_properties", "draining", "where")

    def __init__(self, link_id: int, slot: WorkerSlot, receiver: ReceiverState,
                 credit: int) -> None:
        self.id = link_id
        self.slot = slot
        self.receiver = receiver
        self.credit = credit
        self.consumed = 0  # taken by the user since credit was last granted
        self.settling: dict[int, list[int]] = {}  # state -> delivery ids, not handed over
        self.opened = False
        self.closed = False
        self.failure: Exception | None = None
        self.remote_source: p.Terminus | None = None
        self.remote_target: p.Terminus | None = None
        self.parts: list[bytes] = []  # a large message arriving in DeliveryParts
        self.dirty = False
        self.counts: p.HandlerCounts | None = None  # an in-worker handler's, the latest
        self.attach: p.OpenLink | None = None  # see SenderLink
        self.counts_base: p.HandlerCounts | None = None  # counts of earlier attaches
        self.attached = True
        self.generation = 0
        self.lost: p.Condition | None = None
        self.remote_properties: bytes | None = None
        self.draining = False  # a drain asked for, not answered yet
        self.where = ""  # the URL of its peer, for errors

    def on_event(self, event: p.Event) -> None:
        kind = type(event)
        if kind is p.Deliveries:
            self.receiver.buffer.append(Arrival(
                self, event.first_id, event.payloads, event.settled))  # type: ignore
        elif kind is p.DeliveryPart:
            self._on_part(event)  # type: ignore[arg-type]
        elif kind is p.LinkOpened:
            self.opened = True
            self.attached = True
            self.lost = None
            self.remote_source = event.remote_source  # type: ignore[union-attr]
            self.remote_target = event.remote_target  # type: ignore[union-attr]
            self.remote_properties = event.remote_properties  # type: ignore[union-attr]
        elif kind is p.Credit:
            self._drained()
        elif kind is p.HandlerCounts:
            # Totals since the link's attach: those of earlier attaches are added.
            base = self.counts_base
            self.counts = event if base is None else _add_counts(base, event)  # type: ignore[assignment,arg-type]
        elif kind is p.LinkClosed and event.with_connection and (  # type: ignore[union-attr]
                self.failure is None and not self.receiver.endless):
            self._lose(event.condition)  # type: ignore[union-attr]
        elif kind is p.LinkClosed:
            # (An inbound link gone with its connection keeps what it brought for the
            # user to take: its peer may never send it again.)
            self.closed = True
            self.parts = []
            condition = event.condition  # type: ignore[union-attr]
            handler_failed = condition is not None and condition.name in (
                p.HANDLER_ERROR, p.HANDLER_NOT_FOUND)
            if self.failure is None or handler_failed:
                self.failure = link_failure("receiver from", self.receiver.address,
                                            condition, self.slot.index, self.where)
            self.receiver.on_link_closed(self)

    def drain(self) -> None:
        """Ask the peer to send what it has within the credit, or give the credit back."""
        if self.failure is None and self.attached:
            self.hand_over()
            self.draining = True
            self.slot.queue(p.Flow(self.id, 0, drain=True))

    def _drained(self) -> None:
        """The peer answered a drain: it holds no credit now. What the user has not
        taken, and took since the last grant, is granted as it is taken (see grant());
        the rest of the link's credit is granted again now."""
        self.draining = False
        if self.failure is None and self.attached and self.credit != MANUAL_CREDIT:
            rest = self.credit - self.receiver.untaken_count(self) - self.consumed
            if rest > 0:
                self.slot.queue(p.Flow(self.id, rest))

    def _lose(self, condition: p.Condition | None) -> None:
        """Its connection is gone: what it delivered unsettled is the peer's again (it
        redelivers), so the untaken part of it leaves the buffer and the rest cannot be
        settled (Arrival.check_live). The credit is granted afresh on the new attach."""
        self.draining = False
        self.attached = False
        self.generation += 1
        self.lost = condition
        self.counts_base = self.counts
        self.settling = {}
        self.parts = []
        self.consumed = 0
        self.dirty = False
        self.receiver.drop_untaken(self)

    def fail_lost(self, failure: Exception) -> None:
        """Its connection will not come back."""
        self.closed = True
        if self.failure is None:
            self.failure = failure
        self.receiver.on_link_closed(self)

    def _on_part(self, event: p.DeliveryPart) -> None:
        payload = p.gather_part(self.parts, event)
        if payload is not None:
            self.receiver.buffer.append(
                Arrival(self, event.id, [payload], (0,) if event.settled else None))

    def grant(self) -> None:
        """Grant as much credit as the user took deliveries since the last grant (the
        face grants in batches: credit only as the user takes, never ahead of it)."""
        self.hand_over()  # settle first: a broker may count unsettled against us
        if self.attached:  # else the new attach grants the link's whole credit
            self.slot.queue(p.Flow(self.id, self.consumed))
        self.consumed = 0

    def settle_later(self, delivery_id: int, state: int) -> bool:
        """Batch a plain disposition; True when the batch is full and was queued."""
        ids = self.settling.get(state)
        if ids is None:
            ids = self.settling[state] = []
        ids.append(delivery_id)
        if len(ids) >= SETTLE_BATCH:
            self.hand_over()
            return True
        return False

    def settle_now(self, command: p.Settle) -> None:
        self.hand_over()
        self.slot.queue(command)

    def hand_over(self) -> None:
        self.dirty = False
        if self.settling and self.failure is None and self.attached:
            for state, ids in self.settling.items():
                self.slot.queue(p.Settle(self.id, ids, state))
        self.settling = {}


class ReceiverState:
    """A Receiver's links and the arrivals buffered for the user, in arrival order."""

    __slots__ = ("address", "credit", "auto_accept", "endless", "links", "buffer",
                 "position", "closed", "ended", "waiter", "handler", "lost", "natives")

    def __init__(self, address: str | None, credit: int, auto_accept: bool = False,
                 endless: bool = False) -> None:
        self.address = address
        self.credit = credit
        self.auto_accept = auto_accept
        # A listener's receiver: links come and go, it only ends when closed.
        self.endless = endless
        self.links: dict[int, ReceiverLink] = {}
        self.buffer: deque[Arrival] = deque()
        self.position = 0  # how many of the buffer's first arrival were taken
        self.closed = False
        self.ended: Exception | None = None  # a listener's: why nothing more can come
        self.waiter: Any = None
        self.handler: str | None = None  # the import path of its in-worker handler
        # Deliveries whose connection was lost before they were settled: dropped from
        # the buffer untaken, or refused a settlement (DeliveryLost). The peer has them.
        self.lost = 0
        # (datetimes, decimals): timestamps and decimals decoded as datetime and Decimal.
        self.natives: tuple[bool, bool] | None = None

    def drop_untaken(self, link: ReceiverLink) -> None:
        """Forget what `link` delivered and the user has not taken, except pre-settled
        messages (at-most-once: the peer will not send those again)."""
        kept: deque[Arrival] = deque()
        for n, arrival in enumerate(self.buffer):
            if arrival.link is not link:
                kept.append(arrival)
                continue
            start = self.position if n == 0 else 0
            flags = arrival.settled
            keep = [i for i in range(start, len(arrival.payloads)) if flags[i]]
            self.lost += len(arrival.payloads) - start - len(keep)
            if n == 0:
                self.position = 0
            if keep:
                presettled = Arrival(link, 0, [arrival.payloads[i] for i in keep],
                                     range(len(keep)))
                presettled.generation = arrival.generation
                kept.append(presettled)
        self.buffer = kept

    def on_link_closed(self, link: ReceiverLink) -> None:
        # An inbound link leaves its Listener once nothing of it is left to take.
        if self.endless and not any(a.link is link for a in self.buffer):
            self.links.pop(link.id, None)

    def all_failed(self) -> bool:
        if self.endless:
            return self.closed or self.ended is not None
        return bool(self.links) and all(x.failure for x in self.links.values())

    def failure(self) -> Exception:
        if self.ended is not None:
            return self.ended
        for link in self.links.values():
            if link.failure is not None:
                return link.failure
        return LinkDetached(f"the receiver from {self.address!r} is closed")

    def take(self) -> tuple[Arrival, int]:
        """The next buffered delivery (the buffer must not be empty)."""
        arrival = self.buffer[0]
        position = self.position
        if position + 1 == len(arrival.payloads):
            self.buffer.popleft()
            self.position = 0
            self._forget_if_closed(arrival.link)
        else:
            self.position = position + 1
        return arrival, position

    def take_many(self, limit: int) -> list[tuple[Arrival, int, int]]:
        """Up to `limit` buffered deliveries, a slice of each arrival at a time."""
        parts: list[tuple[Arrival, int, int]] = []
        buffer = self.buffer
        room = limit
        while buffer and room:
            arrival = buffer[0]
            position = self.position
            end = min(len(arrival.payloads), position + room)
            parts.append((arrival, position, end))
            room -= end - position
            if end == len(arrival.payloads):
                buffer.popleft()
                self.position = 0
                self._forget_if_closed(arrival.link)
            else:
                self.position = end
        return parts

    def _forget_if_closed(self, link: ReceiverLink) -> None:
        if self.endless and link.closed:
            self.on_link_closed(link)

    def untaken_count(self, link: ReceiverLink | None = None) -> int:
        """How many buffered deliveries of `link` (None: of every link) the user has not
        taken."""
        count = 0
        for n, arrival in enumerate(self.buffer):
            if link is None or arrival.link is link:
                count += len(arrival.payloads) - (self.position if n == 0 else 0)
        return count

    def untaken(self) -> dict[ReceiverLink, list[int]]:
        """The ids of buffered deliveries not yet taken and not settled, by link; they
        are marked settled (the caller releases them)."""
        by_link: dict[ReceiverLink, list[int]] = {}
        position = self.position
        for arrival in self.buffer:
            ids = arrival.take_unsettled(position, len(arrival.payloads))
            if ids:
                by_link.setdefault(arrival.link, []).extend(ids)
            position = 0
        self.buffer.clear()
        self.position = 0
        return by_link


# ---- connections, listeners and the core itself -------------------------------------------


class LinkSettings(NamedTuple):
    """What a link's attach carries beyond its address and credit (the faces build them
    from amqscale.terminus): the sender's source (rarely set), link properties (AMQP
    encoded), the user's session, the receiver settle mode, and whether it is one link
    on the first shard rather than one per shard."""

    source: p.Terminus | None = None
    properties: bytes | None = None
    session: SessionState | None = None
    rcv_settle_mode: int = p.RCV_FIRST
    one_link: bool = False
    shards: list[Shard] | None = None  # only these (a transaction coordinator's shard)
    # Every link takes the user's name as given, on each shard (a shared subscription's
    # links share it by name); else only a lone link does.
    exact_name: bool = False


class SessionState:
    """A session the user began: one AMQP session on each shard it began on."""

    __slots__ = ("ids", "ended")

    def __init__(self) -> None:
        self.ids: dict[Shard, int] = {}  # shard -> the session's id there
        self.ended = False

    def check_usable(self) -> None:
        if self.ended:
            raise LinkDetached("the session is ended")


class Shard:
    """One AMQP connection of a (possibly sharded) Connection, opened again on a new
    transport (a new id each time) when it is lost and its Connection reconnects."""

    __slots__ = ("id", "slot", "opened", "closed", "failure", "security", "connection",
                 "command", "links", "url_index", "delays", "delay", "lost_at", "tries",
                 "reconnects", "ever_opened", "last_error", "closing", "sessions", "remote",
                 "up_since")

    def __init__(self, shard_id: int, slot: WorkerSlot,
                 connection: ConnectionState | None = None,
                 command: p.OpenConnection | None = None) -> None:
        self.id = shard_id  # the current transport's
        self.slot = slot
        self.opened = False
        self.closed = False
        self.failure: Exception | None = None
        self.security: p.Security | None = None  # what its open negotiated
        self.connection = connection
        self.command = command  # what opens it (host and port: the first URL's)
        self.links: list[SenderLink | ReceiverLink] = []  # attached again after a loss
        self.url_index = 0  # the failover list's URL tried now
        self.delays: Iterator[float] | None = None  # the backoff since the last loss
        self.delay = 0.0  # this round's
        self.lost_at = 0.0
        self.tries = 0  # rounds through the URL list since the last loss
        self.reconnects = 0  # opened again after a loss
        self.ever_opened = False
        self.last_error: ConnectionFailed | None = None  # why it was lost last
        self.closing = False  # the user asked it to close: never reopened
        self.sessions: list[p.BeginSession] = []  # the user's, begun again after a loss
        self.up_since: float | None = None  # when it last opened, while it is open
        self.remote: p.ConnectionOpened | None = None  # what the peer's open said

    @property
    def reconnecting(self) -> bool:
        return self.delays is not None and self.failure is None and self.up_since is None

    def on_event(self, event: p.Event) -> None:
        if type(event) is p.ConnectionOpened:
            self.opened = True
            self.security = event.security
            self.remote = event
        elif type(event) is p.ConnectionClosed:
            self.closed = True
            if self.failure is None:
                self.failure = connection_failure(event)


def heals(event: p.ConnectionClosed) -> bool:
    """May opening the connection again help? Not after an authentication failure or a
    refused certificate (they fail the same way every time), nor after the peer closed it
    with an error other than amqp:connection:forced (proton's rule: the peer meant it)."""
    cond = event.condition
    name = cond.name if cond is not None else None
    if event.failed_in == "sasl" or name in ("amqp:unauthorized-access", p.TLS_SETUP_FAILED):
        return False
    if event.failed_in == "tls" and cond is not None and not any(
            hint in cond.description for hint in ("unexpected eof", "reset", "EOF")):
        return False
    if event.by_peer:
        return name == "amqp:connection:forced"
    return True


def _link_gone(kind: str, address: str | None, failure: Exception) -> LinkDetached:
    """A link whose connection failed for good (gave up reconnecting)."""
    error = LinkDetached(f"{kind} {address!r} is gone with its connection: {failure}",
                         getattr(failure, "condition", None),
                         getattr(failure, "description", ""))
    error.__cause__ = failure
    return error


def connection_failure(event: p.ConnectionClosed) -> ConnectionFailed:
    """The error for a connection that ended: TLSError or AuthenticationError when it
    failed in its TLS handshake or its authentication, else ConnectionFailed."""
    cond = event.condition
    name, description = (cond.name, cond.description) if cond else (None, "")
    if event.failed_in == "tls":
        hint = ""
        if "unexpected eof" in description or "wrong version number" in description:
            hint = " (does the peer speak TLS on this port?)"
        return TLSError("TLS failed" + condition_text(cond) + hint, name, description)
    if name == "amqp:unauthorized-access" and event.failed_in != "sasl":
        # Authenticated, then refused (an authzid, a virtual host the user may not use).
        return AuthenticationError("not authorized" + condition_text(cond), name,
                                   description)
    if event.failed_in == "sasl":
        security = event.security or p.Security()
        mechanism = security.sasl_mechanism
        hint = ""
        if mechanism is None and security.tls_protocol is None:
            hint = (" (no mechanism both sides allow: does the peer require credentials? "
                    "PLAIN is used only over TLS, or with allow_insecure_mechanisms=True)")
        return AuthenticationError(
            f"authentication failed (SASL {mechanism or 'no agreed mechanism'}"
            f", outcome {security.sasl_outcome or 'none'})" + condition_text(cond) + hint,
            name, description, mechanism, security.sasl_outcome)
    hint = ""
    if event.security is not None and (
            "Expected AMQP protocol header" in description
            or "Expected SASL protocol header" in description):
        hint = (" (the peer did not speak AMQP: a TLS port reached with amqp://? "
                "use amqps://)")
    return ConnectionFailed("connection closed" + condition_text(cond) + hint, name,
                            description)


class InboundConnection:
    """A connection a peer opened to a listener, routed by the worker's (negative) id:
    its `remote_container`, and whether it is still up (`closed`, `condition`)."""

    __slots__ = ("id", "slot", "listener", "remote_container", "opened", "closed",
                 "condition", "failure", "security", "remote")

    def __init__(self, conn_id: int, slot: WorkerSlot, listener: ListenerState,
                 remote_container: str | None, security: p.Security | None = None) -> None:
        self.id = conn_id
        self.slot = slot
        self.listener = listener
        self.remote_container = remote_container
        self.security = security  # on this side: the user the peer authenticated as
        self.opened = True
        self.closed = False
        self.condition: p.Condition | None = None
        self.failure: Exception | None = None
        self.remote: p.ConnectionOpened | None = None  # what the peer's open said

    def on_event(self, event: p.Event) -> None:
        if type(event) is p.ConnectionClosed:
            self.closed = True
            self.condition = event.condition


class ConnectionState:
    __slots__ = ("url", "shards", "closed", "urls", "policy")

    def __init__(self, url: URL, urls: list[URL] | None = None,
                 policy: Policy | None = None) -> None:
        self.url = url
        self.urls = urls or [url]  # the failover list, `url` first
        self.policy = policy  # None: a lost shard is not opened again
        self.shards: list[Shard] = []
        self.closed = False

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.shards)

    @property
    def state(self) -> str:
        """"open", "reconnecting" (a shard is lost and being opened again), "failed"
        (every shard failed) or "closed"."""
        if self.closed:
            return "closed"
        if all(s.failure is not None for s in self.shards):
            return "failed"
        if any(s.reconnecting for s in self.shards):
            return "reconnecting"
        return "open"

    def check_usable(self) -> None:
        if self.closed:
            raise ConnectionFailed(f"the connection to {self.url} is closed")
        failures = [s.failure for s in self.shards if s.failure is not None]
        if failures and len(failures) == len(self.shards):
            raise failures[0]


class LinkRequest(NamedTuple):
    """An inbound link a listener's `accept_link` decides on: its name, the peer's role
    ("sender": it sends to us; "receiver": it takes from us), the peer's termini and link
    properties (AMQP-encoded), the peer's container id and what its connection
    negotiated (the user it authenticated as, ...)."""

    name: str
    role: str
    source: p.Terminus | None
    target: p.Terminus | None
    properties: bytes | None
    container_id: str | None
    security: p.Security | None


class ListenerState:
    """A listener: its port, the receiver its remote senders' messages go to, and a
    SenderState per remote receiver attached (`senders`, each with one link, `window`
    messages in flight)."""

    __slots__ = ("id", "host", "port", "credit", "max_message_size", "failure", "pending",
                 "receiver", "closed", "senders", "window", "connections", "defer_attach",
                 "defer_open", "tls", "sasl", "relisten", "offered", "policy")

    def __init__(self, listener_id: int, host: str, credit: int,
                 max_message_size: int, window: int = INBOUND_WINDOW,
                 defer_attach: bool = False, defer_open: bool = False,
                 tls: p.TLSConfig | None = None, sasl: p.ServerSASL | None = None) -> None:
        self.tls = tls
        self.sasl = sasl
        self.id = listener_id
        self.host = host
        self.port: int | None = None
        self.credit = credit
        self.max_message_size = max_message_size
        self.failure: Exception | None = None
        self.pending = 0  # workers yet to confirm they adopt its connections
        self.receiver = ReceiverState(None, credit, endless=True)
        self.closed = False
        self.senders: list[SenderState] = []  # inbound links where we send, attached now
        self.window = window
        self.connections: dict[int, InboundConnection] = {}  # inbound ones, open now
        self.defer_attach = defer_attach  # its links wait for accept_link()
        self.defer_open = defer_open  # its connections wait for accept_connection()
        self.relisten = False  # a new worker 0 is binding its port again
        # Remote receivers' senders the user has not taken yet (Listener.accept_sender).
        self.offered: deque[SenderState] = deque()
        # Decides each inbound link of a defer_attach listener whose face does not:
        # called with a LinkRequest, returns None (attach it) or a Condition (refuse it).
        self.policy: Callable[[LinkRequest], p.Condition | None] | None = None

    def on_event(self, event: p.Event) -> None:
        if type(event) is p.Listening:
            if self.port is None:
                self.port = event.port
            elif self.relisten:  # a new worker 0 bound the port again
                self.relisten = False
            else:
                self.pending = max(0, self.pending - 1)
        elif type(event) is p.ListenFailed:
            cond = event.condition
            kind = TLSError if cond.name == p.TLS_SETUP_FAILED else ConnectionFailed
            self.failure = kind(cond.description, cond.name)


class ClientCore:
    """All client state of one Container; worker events in, commands out.

    >>> core = ClientCore(workers=2, container_id="c", fragment=1 << 20)
    >>> conn = core.open_connection(URL("amqp", "127.0.0.1", 5672), shards=2)
    >>> [type(c).__name__ for s in core.slots for c in s.queued]
    ['OpenConnection', 'OpenConnection']
    """

    def __init__(self, workers: int, container_id: str, fragment: int,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.container_id = container_id
        # Only reconnect deadlines read the clock; the backoff's jitter draws from rng.
        self.clock = clock
        self.rng = rng or random.Random()
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self.fragment = fragment  # messages larger than this cross in SendParts
        # Each shard's transaction coordinator link, kept for its next transaction
        # (amqscale.transactions).
        self.coordinators: dict[Shard, SenderState] = {}
        self._ids = itertools.count(1)
        self._placement = itertools.count()
        self.routes: dict[int, Any] = {}  # connection and link ids -> their state
        self.listeners: dict[int, ListenerState] = {}
        self.stats: dict[int, p.WorkerStats] = {}
        self.dirty: set[SenderLink | ReceiverLink] = set()  # partial batches waiting
        # Called after each event is applied, with the state it was applied to (a Shard,
        # SenderLink, ReceiverLink, ListenerState or InboundConnection; the core itself
        # for WorkerStats), for faces that react to events (asyncio futures, handler
        # callbacks); with (slot, None) when a worker died.
        self.observer: Callable[[Any, p.Event | None], None] | None = None

    def next_id(self) -> int:
        return next(self._ids)

    def live_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.failure is None]

    def place(self) -> WorkerSlot:
        """The next live worker, round-robin; WorkerDied when none is left."""
        for _ in range(len(self.slots)):
            slot = self.slots[next(self._placement) % len(self.slots)]
            if slot.failure is None:
                return slot
        raise WorkerDied("every worker of this Container died", "amqscale:worker-died")

    # ---- opening and closing --------------------------------------------------------------

    def open_connection(self, url: URL, shards: int, urls: list[URL] | None = None,
                        policy: Policy | None = None, **options: Any) -> ConnectionState:
        """`shards` connections to `url`. The first open tries each URL of `urls` (the
        failover list, `url` first) once, in order; once open, a shard that is lost is
        opened again as `policy` says (None: never)."""
        connection = ConnectionState(url, urls, policy)
        for _ in range(shards):
            shard_id = self.next_id()
            command = p.OpenConnection(shard_id, url.host, url.port, self.container_id,
                                       **options)
            shard = Shard(shard_id, self.place(), connection, command)
            self.routes[shard.id] = shard
            connection.shards.append(shard)
            shard.slot.queue(command)
        return connection

    def close_connection(self, connection: ConnectionState) -> None:
        connection.closed = True
        for shard in connection.shards:
            shard.closing = True
            if shard.failure is None and not shard.closed:
                shard.slot.queue(p.CloseConnection(shard.id))
            if shard.reconnecting:  # nothing is open to confirm the close
                shard.closed = True
                shard.failure = ConnectionFailed(f"the connection to {connection.url} "
                                                 f"is closed")

    def forget_connection(self, connection: ConnectionState) -> None:
        """The connection is closed: nothing routes to it or to its links any more."""
        for shard in connection.shards:
            self.coordinators.pop(shard, None)
            if shard.failure is None:
                shard.failure = ConnectionFailed(f"the connection to {connection.url} is closed")
            self.routes.pop(shard.id, None)
            for link in shard.links:
                if link.failure is None:
                    link.failure = LinkDetached(
                        f"the link is closed: its connection to {connection.url} is closed")
                link.closed = True
                self.routes.pop(link.id, None)
                self.dirty.discard(link)
            shard.links = []

    def open_sender(self, connection: ConnectionState, address: str | None, window: int,
                    presettled: bool, name: str | None, max_message_size: int,
                    target: p.Terminus | None = None,
                    settings: LinkSettings | None = None) -> SenderState:
        sender = SenderState(address, window, presettled, max_message_size)
        sender.fragment = self.fragment
        settings = settings or LinkSettings()
        shards = self._link_shards(connection, settings)
        if target is not None and target.address is None and not (
                target.dynamic or target.coordinator):
            _check_relay(shards)
        for shard in shards:
            link = SenderLink(self.next_id(), shard.slot, sender)
            sender.links.append(link)
            self._open_link(shard, link, True, address, name, presettled, 0, 0, target,
                            settings, len(shards))
        return sender

    def open_receiver(self, connection: ConnectionState, address: str | None, credit: int,
                      name: str | None, auto_accept: bool, max_message_size: int,
                      source: p.Terminus | None = None, handler: str | None = None,
                      handler_args: dict[str, Any] | None = None,
                      settings: LinkSettings | None = None) -> ReceiverState:
        """A receiver over every usable shard, the links' shares of `credit` adding up to
        it (as even as they divide). With `handler` (an import path), a handler in each
        worker that carries a shard takes the messages, and that worker keeps the share
        granted."""
        receiver = ReceiverState(address, credit, auto_accept)
        receiver.handler = handler
        settings = settings or LinkSettings()
        shards = self._link_shards(connection, settings)
        group = self.next_id() if handler is not None else 0
        # The links' shares add up to `credit` (a link's grant threshold counts from 1);
        # an in-worker handler's link gets at least 1, or its worker would get nothing.
        split = shares(credit, len(shards))
        if handler is not None:
            split = [max(1, x) for x in split]
        for shard, share in zip(shards, split, strict=True):
            # With no credit the user grants it (Receiver.flow): no automatic grants.
            base = max(1, share) if credit else MANUAL_CREDIT
            link = ReceiverLink(self.next_id(), shard.slot, receiver, base)
            receiver.links[link.id] = link
            self._open_link(shard, link, False, address, name, False, share,
                            max_message_size, source, settings, len(shards))
            if handler is not None:
                command = shard.slot.queued[-1]
                assert type(command) is p.OpenLink
                command.handler, command.handler_args = handler, handler_args
                command.handler_group = group
        return receiver

    @staticmethod
    def _usable_shards(connection: ConnectionState) -> list[Shard]:
        connection.check_usable()
        return [s for s in connection.shards if s.failure is None]

    @staticmethod
    def _link_shards(connection: ConnectionState, settings: LinkSettings) -> list[Shard]:
        """The shards that get a link: every usable one, or the first (`one_link`: a
        dynamic node or a durable subscription is one node, one name), or the session's."""
        shards = ClientCore._usable_shards(connection)
        if settings.shards is not None:
            shards = [x for x in shards if x in settings.shards]
            if not shards:
                raise ConnectionFailed("the connection's shard failed")
        session = settings.session
        if session is not None:
            session.check_usable()
            shards = [x for x in shards if x in session.ids]
            if not shards:
                raise ConnectionFailed("every connection of the session failed")
        return shards[:1] if settings.one_link else shards

    def _open_link(self, shard: Shard, link: SenderLink | ReceiverLink, is_sender: bool,
                   address: str | None, name: str | None, presettled: bool, credit: int,
                   max_message_size: int, terminus: p.Terminus | None,
                   settings: LinkSettings | None = None, links: int = 0) -> None:
        self.routes[link.id] = link
        settings = settings or LinkSettings()
        if shard.connection is not None:
            link.where = str(shard.connection.urls[shard.url_index])
        if name and (links == 1 or settings.exact_name):
            link_name = name  # the user's, as given: a durable subscription's name
        else:
            link_name = f"{name or address or 'link'}-{'s' if is_sender else 'r'}-{link.id}"
        terminus = terminus or p.Terminus(address=address)
        session = settings.session
        link.attach = p.OpenLink(
            link.id, shard.id, link_name, is_sender,
            source=(settings.source or p.Terminus()) if is_sender else terminus,
            target=terminus if is_sender else p.Terminus(),
            snd_settle_mode=p.SND_SETTLED if presettled else p.SND_UNSETTLED,
            rcv_settle_mode=settings.rcv_settle_mode,
            credit=credit, max_message_size=max_message_size,
            properties=settings.properties,
            session=session.ids[shard] if session is not None else 0,
        )
        shard.links.append(link)
        shard.slot.queue(link.attach)

    def close_links(self, links: Iterable[SenderLink | ReceiverLink],
                    detach: bool = False) -> None:
        """Close `links` (with `detach`, detach them only: a durable terminus stays);
        each is closed once the worker confirms (LinkClosed)."""
        for link in links:
            self.dirty.discard(link)
            link.hand_over()  # what was batched goes before the detach
            if link.failure is None:
                link.slot.queue(p.CloseLink(link.id, detach=detach))
                link.failure = LinkDetached("closed by the user")
                if not link.attached:
                    link.closed = True  # its connection is lost: nothing will confirm
            elif link.slot.failure is not None:
                link.closed = True  # its worker is gone: nothing will confirm

    def begin_session(self, connection: ConnectionState, incoming_window: int = 0,
                      outgoing_window: int = 0) -> SessionState:
        """A session of the user's on each usable shard (its links go there), begun
        again with the shard after a reconnect."""
        session = SessionState()
        for shard in self._usable_shards(connection):
            begin = p.BeginSession(self.next_id(), shard.id, incoming_window, outgoing_window)
            session.ids[shard] = begin.session
            shard.sessions.append(begin)
            shard.slot.queue(begin)
        return session

    def end_session(self, session: SessionState) -> None:
        """End the session on every shard (its links end with it)."""
        if session.ended:
            return
        session.ended = True
        for shard, session_id in session.ids.items():
            shard.sessions = [x for x in shard.sessions if x.session != session_id]
            if shard.failure is None:
                shard.slot.queue(p.EndSession(session_id))

    def forget_links(self, links: Iterable[SenderLink | ReceiverLink]) -> None:
        for link in links:
            self.routes.pop(link.id, None)
            shard = self.routes.get(link.attach.conn) if link.attach is not None else None
            if type(shard) is Shard:
                _discard(shard.links, link)

    def release_untaken(self, receiver: ReceiverState) -> None:
        """Release what was prefetched but not taken (before the receiver detaches)."""
        for link, ids in receiver.untaken().items():
            if link.failure is None:
                link.settle_now(p.Settle(link.id, ids, p.RELEASED))

    def listen(self, host: str, port: int, credit: int, max_message_size: int,
               window: int = INBOUND_WINDOW, defer_attach: bool = False,
               defer_open: bool = False, tls: p.TLSConfig | None = None,
               sasl: p.ServerSASL | None = None) -> ListenerState:
        """Worker 0 binds and accepts; `adopt` (after Listening) tells the others.
        `credit` per remote sender; `window` messages in flight per remote receiver.
        With `defer_attach`, each inbound link is answered by `accept_link`; with
        `defer_open`, each inbound connection's open by `accept_connection`."""
        listener = ListenerState(self.next_id(), host, credit, max_message_size, window,
                                 defer_attach, defer_open, tls, sasl)
        self.listeners[listener.id] = listener
        self.slots[0].queue(p.Listen(listener.id, host, port, self.container_id, credit,
                                     max_message_size=max_message_size,
                                     defer_attach=defer_attach, defer_open=defer_open,
                                     tls=tls, sasl=sasl))
        return listener

    def accept_connection(self, connection: InboundConnection,
                          offered_capabilities: list[str] | None = None,
                          desired_capabilities: list[str] | None = None,
                          properties: bytes | None = None) -> None:
        """Answer the open of an inbound connection of a `defer_open` listener."""
        if not connection.closed and connection.slot.failure is None:
            connection.slot.queue(p.AcceptConnection(
                connection.id, offered_capabilities, desired_capabilities, properties))

    def accept_link(self, link: SenderLink | ReceiverLink, source: p.Terminus | None,
                    target: p.Terminus | None) -> None:
        """Answer the attach of an inbound link of a `defer_attach` listener: our termini
        mirror the peer's, with what `source` and `target` set on top."""
        if not link.closed and link.slot.failure is None:
            link.slot.queue(p.AcceptLink(link.id, source, target))

    def adopt(self, listener: ListenerState) -> None:
        """Ask every other live worker to take the connections worker 0 deals it."""
        for slot in self.slots[1:]:
            if slot.failure is None:
                listener.pending += 1
                slot.queue(self._listen_command(listener, adopt_only=True))

    def _listen_command(self, listener: ListenerState, adopt_only: bool) -> p.Listen:
        """What makes a worker take part in `listener` again (its port now known)."""
        return p.Listen(listener.id, listener.host, listener.port or 0, self.container_id,
                        listener.credit, adopt_only=adopt_only,
                        max_message_size=listener.max_message_size,
                        defer_attach=listener.defer_attach, defer_open=listener.defer_open,
                        tls=listener.tls, sasl=listener.sasl)

    def close_listener(self, listener: ListenerState, senders: bool = True) -> None:
        """Stop accepting; release what was delivered and not taken, detach the inbound
        links (remote senders): the listener's receiver is closed with it. With `senders`,
        the links of remote receivers are detached too (after what was sent on them)."""
        listener.closed = listener.receiver.closed = True
        self.release_untaken(listener.receiver)
        self.close_links(list(listener.receiver.links.values()))
        if senders:
            for sender in listener.senders:
                sender.closed = True
                self.close_links(sender.links)
        for slot in self.live_slots():
            slot.queue(p.CloseListener(listener.id))
        self.listeners.pop(listener.id, None)

    def ask_stats(self) -> list[WorkerSlot]:
        self.stats = {}
        live = self.live_slots()
        for slot in live:
            slot.queue(p.Stats())
        return live

    # ---- events in -------------------------------------------------------------------------

    def handle_events(self, slot: WorkerSlot, events: list[p.Event]) -> None:
        """Apply one record's events in order. An event that fails to apply does not stop
        the others (an event read is never dropped); the first error is raised after."""
        error: BaseException | None = None
        for event in events:
            try:
                self._route(slot, event)
            except Exception as exc:  # a bug here must not lose the record's other events
                error = error or exc
        if error is not None:
            raise error

    def _route(self, slot: WorkerSlot, event: p.Event) -> None:
        kind = type(event)
        if kind is p.Trace:
            self._log_frames(slot, event)  # type: ignore[arg-type]
            return
        link_id = getattr(event, "link", None)
        if link_id is not None:
            target = self.routes.get(link_id)
            if target is not None:
                target.on_event(event)
                if kind is p.LinkClosed:
                    if type(target) is ReceiverLink and target.receiver.endless:
                        del self.routes[link_id]  # an inbound link: gone for good
                    elif type(target) is SenderLink and target.sender.listener is not None:
                        del self.routes[link_id]
                        _discard(target.sender.listener.senders, target.sender)
            elif kind is p.LinkOpened and event.inbound:  # type: ignore[union-attr]
                target = self._on_inbound(slot, event)  # type: ignore[arg-type]
            if target is not None and self.observer is not None:
                self.observer(target, event)
            return
        if kind is p.WorkerStats:
            self.stats[event.index] = event  # type: ignore[union-attr,assignment]
            if self.observer is not None:
                self.observer(self, event)  # the core's own state changed (`stats`)
            return
        if kind is p.Listening or kind is p.ListenFailed:
            target = self.listeners.get(event.listener)  # type: ignore[union-attr,arg-type]
        elif kind is p.ConnectionOpened and event.listener is not None:  # type: ignore[union-attr]
            target = self._on_inbound_connection(slot, event)  # type: ignore[arg-type]
            if target is not None and self.observer is not None:
                self.observer(target, event)
            return
        else:
            target = self.routes.get(getattr(event, "conn", 0))
        if type(target) is Shard and kind is p.ConnectionClosed:
            self._on_shard_closed(target, event)  # type: ignore[arg-type]
        elif type(target) is Shard and kind is p.ConnectionOpened:
            target.on_event(event)
            self._on_shard_opened(target)
        elif target is not None:
            target.on_event(event)
            if type(target) is InboundConnection and kind is p.ConnectionClosed:
                del self.routes[target.id]  # gone for good
                target.listener.connections.pop(target.id, None)
        if target is not None and self.observer is not None:
            self.observer(target, event)

    # ---- reconnecting ------------------------------------------------------------------------

    def _on_shard_opened(self, shard: Shard) -> None:
        if shard.ever_opened:
            shard.reconnects += 1
        shard.ever_opened = True
        shard.up_since = self.clock()

    def _on_shard_closed(self, shard: Shard, event: p.ConnectionClosed) -> None:
        """A shard's transport ended: open it again if that may help and the policy
        allows, else it fails, and so do its links that went down with it."""
        if self._retry(shard, event):
            return
        shard.on_event(event)
        failure = shard.failure
        for link in list(shard.links):
            if not link.attached and link.failure is None:
                kind = "sender to" if type(link) is SenderLink else "receiver from"
                address = (link.sender.address if type(link) is SenderLink
                           else link.receiver.address)  # type: ignore[union-attr]
                # A shard that tried to reconnect names that; one that never would, the
                # link's own condition (the connection's, as the worker reported it).
                link.fail_lost(_link_gone(kind, address, failure)
                               if shard.last_error is not None and failure is not None
                               else link_failure(kind, address, link.lost))
                if self.observer is not None:
                    self.observer(link, p.LinkClosed(link.id, link.lost))

    def _retry(self, shard: Shard, event: p.ConnectionClosed) -> bool:
        """Queue the shard's next open, if there is to be one (True)."""
        connection = shard.connection
        if (connection is None or connection.closed or shard.closing
                or shard.failure is not None or not heals(event)):
            return False
        urls = connection.urls
        if not shard.ever_opened:  # the first open tries each URL once, then gives up
            if shard.url_index + 1 >= len(urls):
                return False
            shard.url_index += 1
            self._reopen(shard, 0.0)
            return True
        policy = connection.policy
        if policy is None:
            return False
        now = self.clock()
        shard.last_error = connection_failure(event)
        if shard.up_since is not None:  # it was open: lost now
            if now - shard.up_since >= STABLE_CONNECTION:
                shard.delays = None  # it stayed up: the schedule starts afresh
            else:
                shard.url_index = len(urls) - 1  # lost at once: the schedule goes on,
            shard.up_since = None  # so that a peer that drops it every time is not hammered
        if shard.delays is None:  # just lost: a new schedule, from the list's start
            shard.delays = policy.delays(self.rng)
            shard.lost_at = now
            shard.tries = 0
            shard.url_index = len(urls) - 1
        shard.url_index += 1
        if shard.url_index >= len(urls):  # a new round, at its delay
            delay = next(shard.delays, None)
            deadline = policy.deadline
            if delay is None or (deadline is not None
                                 and now + delay - shard.lost_at > deadline):
                shard.failure = self._gave_up(shard, now)
                return False
            shard.tries += 1
            shard.url_index = 0
            shard.delay = delay
        self._reopen(shard, shard.delay)
        return True

    def _gave_up(self, shard: Shard, now: float) -> ConnectionFailed:
        assert shard.connection is not None and shard.last_error is not None
        urls = ", ".join(str(u) for u in shard.connection.urls)
        last = shard.last_error
        return type(last)(
            f"gave up reconnecting to {urls} after {shard.tries} "
            f"{'round' if shard.tries == 1 else 'rounds'} in {now - shard.lost_at:.1f} s; "
            f"the last attempt: {last}", last.condition, last.description)

    def _reopen(self, shard: Shard, delay: float) -> None:
        """Open the shard again on a new transport (a new id: the old one's events may
        still come), after `delay` seconds, and attach its links again, same names."""
        assert shard.connection is not None and shard.command is not None
        self.routes.pop(shard.id, None)
        shard.id = self.next_id()
        self.routes[shard.id] = shard
        shard.opened = shard.closed = False
        url = shard.connection.urls[shard.url_index]
        shard.slot.queue(msgspec.structs.replace(
            shard.command, conn=shard.id, host=url.host, port=url.port, delay=delay))
        shard.sessions = [msgspec.structs.replace(x, conn=shard.id) for x in shard.sessions]
        for begin in shard.sessions:
            shard.slot.queue(begin)
        for link in shard.links:
            if link.failure is None and link.attach is not None:
                link.attach = msgspec.structs.replace(link.attach, conn=shard.id)
                shard.slot.queue(link.attach)

    def _on_inbound_connection(self, slot: WorkerSlot, event: p.ConnectionOpened
                               ) -> InboundConnection | None:
        """A peer opened a connection to a listener: its state, routed by the worker's
        id until it closes (None if the listener is gone: its links are refused)."""
        listener = self.listeners.get(event.listener)  # type: ignore[arg-type]
        if listener is None:
            return None
        connection = InboundConnection(event.conn, slot, listener, event.remote_container,
                                       event.security)
        connection.remote = event
        listener.connections[event.conn] = connection
        self.routes[event.conn] = connection
        return connection

    def close_inbound(self, connection: InboundConnection,
                      condition: p.Condition | None = None) -> None:
        """Close a connection a peer opened to a listener (its links end with it)."""
        if not connection.closed and connection.slot.failure is None:
            connection.slot.queue(p.CloseConnection(connection.id, condition))

    def _on_inbound(self, slot: WorkerSlot, event: p.LinkOpened
                    ) -> ReceiverLink | SenderLink | None:
        """A remote peer attached a link to a listener; its new link is returned. A remote
        sender's messages go to the listener's receiver; a remote receiver gets a
        SenderState of its own (`ListenerState.senders`), its one link open. One attached
        after the listener closed is detached."""
        listener = self.listeners.get(event.conn)
        if listener is None:
            slot.queue(p.CloseLink(event.link, p.Condition(
                "amqp:resource-deleted", "the listener is closed")))
            return None
        if event.is_sender:  # a remote receiver: we send on this link
            source = event.remote_source
            # Its address is our source's, the node the peer reads from (the listener's
            # max_message_size is for what we receive: the peer's limit applies here).
            sender = SenderState(source.address if source is not None else None,
                                 listener.window, False, 0)
            sender.listener = listener
            sending = SenderLink(event.link, slot, sender)
            sending.opened = True
            sending.remote_target = event.remote_target
            sending.remote_source = source
            sending.remote_max = event.remote_max_message_size
            sender.links.append(sending)
            listener.senders.append(sender)
            self.routes[event.link] = sending
            if self._decide(listener, sending, event):
                listener.offered.append(sender)
            return sending
        link = ReceiverLink(event.link, slot, listener.receiver, listener.credit)
        link.opened = True
        link.remote_source = event.remote_source
        link.remote_target = event.remote_target
        listener.receiver.links[event.link] = link
        self.routes[event.link] = link
        self._decide(listener, link, event)
        return link

    def _decide(self, listener: ListenerState, link: SenderLink | ReceiverLink,
                event: p.LinkOpened) -> bool:
        """Let the listener's policy attach or refuse an inbound link; True if attached
        (or left to the face: no policy)."""
        if listener.policy is None:
            return True
        connection = listener.connections.get(event.inbound_conn)
        request = LinkRequest(
            event.name, "receiver" if event.is_sender else "sender", event.remote_source,
            event.remote_target, event.remote_properties,
            connection.remote_container if connection is not None else None,
            connection.security if connection is not None else None)
        try:
            refusal = listener.policy(request)
        except Exception as exc:  # the user's code: the link is refused, nothing else
            refusal = p.Condition("amqp:internal-error",
                                  f"the listener's accept_link raised {exc!r}")
        if refusal is None:
            self.accept_link(link, None, None)
            return True
        link.slot.queue(p.CloseLink(link.id, refusal))
        link.failure = LinkDetached(f"refused: {refusal.name}", refusal.name,
                                    refusal.description)
        return False

    def _log_frames(self, slot: WorkerSlot, event: p.Trace) -> None:
        """A worker's frame trace, to the logger "amqscale.frames" (DEBUG), or to stderr
        when nothing handles that logger: PN_TRACE_FRM=1 shows frames as with proton."""
        target = self.routes.get(event.conn)
        if type(target) is Shard and target.connection is not None:
            where = f"connection {event.conn} to {target.connection.urls[target.url_index]}"
        elif type(target) is InboundConnection:
            where = f"inbound connection {event.conn} (listener {target.listener.id})"
        else:
            where = f"connection {event.conn}"
        prefix = f"[worker {slot.index}, {where}] "
        if frames_log.hasHandlers():
            for line in event.lines:
                frames_log.debug("%s%s", prefix, line)
        else:
            sys.stderr.write("".join(f"{prefix}{line}\n" for line in event.lines))

    def worker_died(self, slot: WorkerSlot, code: int | None) -> None:
        """Everything on a dead worker fails with WorkerDied; unsettled messages stay."""
        if slot.failure is not None:
            return
        failure = slot.failure = worker_failure(slot.index, code)
        slot.queued.clear()
        for target in self.routes.values():
            if target.slot is slot and target.failure is None:
                target.failure = failure
        for listener in self.listeners.values():
            if slot.index == 0 and listener.failure is None:  # the accepting worker
                listener.failure = listener.receiver.ended = failure
        if self.observer is not None:
            self.observer(slot, None)

    def worker_restarted(self, slot: WorkerSlot, code: int | None) -> None:
        """A new worker took the place of the dead one in `slot`: its shards are opened
        again there (their links attached again, unsettled messages resent), as after a
        lost connection; the connections peers had opened to it are gone (they
        reconnect); its listeners listen again (worker 0 on the same port)."""
        if slot.failure is not None:
            return
        slot.queued.clear()  # written to the dead worker's ring or not, all of it is redone
        condition = p.Condition("amqscale:worker-died",
                                f"worker {slot.index} died (exit code {code})")
        shards = {id(t): t for t in self.routes.values()
                  if type(t) is Shard and t.slot is slot and t.failure is None}
        for shard in shards.values():
            for link in shard.links:
                if link.attached and link.failure is None:
                    link.on_event(p.LinkClosed(link.id, condition, True))
            self._on_shard_closed(shard, p.ConnectionClosed(shard.id, condition))
            if self.observer is not None:
                self.observer(shard, p.ConnectionClosed(shard.id, condition))
        for listener in list(self.listeners.values()):
            # What peers opened to it there is gone, as if their connections dropped.
            inbound: list[SenderLink | ReceiverLink] = [
                *listener.receiver.links.values(),
                *(x for sender in listener.senders for x in sender.links)]
            ended: list[p.Event] = [p.LinkClosed(link.id, condition) for link in inbound
                                    if link.slot is slot and not link.closed]
            ended += [p.ConnectionClosed(c.id, condition)
                      for c in listener.connections.values() if c.slot is slot]
            for event in ended:
                self._route(slot, event)
            if listener.failure is None and not listener.closed:
                self._listen_again(listener, slot)

    def _listen_again(self, listener: ListenerState, slot: WorkerSlot) -> None:
        if slot.index == 0:  # the accepting worker binds the same port again
            listener.relisten = True
        else:
            listener.pending += 1
        slot.queue(self._listen_command(listener, adopt_only=slot.index != 0))

    def close(self) -> None:
        """The Container closed: every connection, link and listener is closed, and a
        later call on one raises what a call on a closed one raises."""
        for target in self.routes.values():
            if target.failure is None:
                target.failure = (
                    ConnectionFailed("the connection is closed: its Container closed")
                    if type(target) is Shard or type(target) is InboundConnection else
                    LinkDetached("the link is closed: its Container closed"))
        for listener in self.listeners.values():
            listener.closed = listener.receiver.closed = True

    # ---- batching ---------------------------------------------------------------------------

    def mark_dirty(self, link: SenderLink | ReceiverLink) -> bool:
        """`link` holds a partial batch; True if it was not marked yet."""
        if link.dirty:
            return False
        link.dirty = True
        self.dirty.add(link)
        return True

    def hand_over_dirty(self, settlements: bool = True) -> None:
        """Queue partial batches: all, or (settlements False) only messages to send."""
        dirty = self.dirty
        if settlements:
            while dirty:
                dirty.pop().hand_over()
            return
        for link in [x for x in dirty if type(x) is SenderLink]:
            dirty.discard(link)
            link.hand_over()


    # ---- for the event-driven face (amqscale.reactor) ---------------------------------------

    def open_receiver_exact(self, connection: ConnectionState, address: str | None,
                            credit: int, name: str | None, max_message_size: int,
                            source: p.Terminus | None = None,
                            settings: LinkSettings | None = None) -> ReceiverState:
        """open_receiver with exactly `credit` granted at the attach, shared among the
        links as it divides (see `shares`), 0 included: a receiver whose user grants
        credit (the handlers' ``prefetch=0`` and ``Receiver.flow``) starts with none.
        Each link's `credit` is its share, at least 1 (the grant threshold's base)."""
        receiver = ReceiverState(address, credit, False)
        settings = settings or LinkSettings()
        shards = self._link_shards(connection, settings)
        for shard, share in zip(shards, shares(credit, len(shards)), strict=True):
            link = ReceiverLink(self.next_id(), shard.slot, receiver, max(1, share))
            receiver.links[link.id] = link
            self._open_link(shard, link, False, address, name, False, share,
                            max_message_size, source, settings, len(shards))
        return receiver

    def flow(self, receiver: ReceiverState, credit: int, drain: bool = False) -> None:
        """Grant `credit` more to the receiver's live links, shared as it divides (the
        links that get no share are still told with `drain`)."""
        live = [x for x in receiver.links.values() if x.failure is None]
        for link, share in zip(live, shares(credit, len(live)), strict=True):
            if share or drain:
                link.hand_over()  # settle first: a broker may count unsettled against us
                link.slot.queue(p.Flow(link.id, share, drain))


def _check_relay(shards: list[Shard]) -> None:
    """A sender with no target address needs a peer that offers the anonymous relay
    (AMQP 1.0 names the capability ANONYMOUS-RELAY; a peer without it may refuse the link,
    or worse: the Proton C example broker crashes on a null address). Shards whose peer
    has not opened yet are not judged."""
    for shard in shards:
        remote = shard.remote
        if remote is not None and RELAY not in (remote.remote_offered_capabilities or ()):
            raise LinkDetached(
                f"the peer does not offer {RELAY} (its open offers "
                f"{remote.remote_offered_capabilities or 'no capabilities'}): a sender "
                "needs a target address there", "amqp:not-implemented")


RELAY = "ANONYMOUS-RELAY"


def _add_counts(a: p.HandlerCounts, b: p.HandlerCounts) -> p.HandlerCounts:
    return p.HandlerCounts(b.link, a.handled + b.handled, a.accepted + b.accepted,
                           a.rejected + b.rejected, a.released + b.released,
                           a.modified + b.modified)


def _discard(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` shares as even as can be, the larger ones first.

    >>> shares(10, 4)
    [3, 3, 2, 2]
    """
    if parts <= 0:
        return []
    each, extra = divmod(total, parts)
    return [each + 1 if i < extra else each for i in range(parts)]
