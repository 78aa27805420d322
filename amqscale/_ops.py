"""What every face does, written once as steps: each face only decides how to wait.

An operation (opening a connection, a link or a listener, closing one, sending a message
in parts, waiting for outcomes) is a generator. It queues commands through the driver and,
whenever it needs the workers to answer, yields a :class:`Wait`: a predicate over the
core's state and what it waits for. A face runs it: the blocking face with
:func:`run` (``Driver.wait``, one deadline for the whole operation), the asyncio face with
futures on its loop (``amqscale.aio``). The handler face needs no waits: it reacts to the
events themselves.

An operation that is abandoned (its deadline passed, its task cancelled) gets the exception
thrown in at its yield: it undoes what it started, without waiting, and re-raises. Closing
operations swallow a TimeoutError: they give up waiting for the peer's confirmation, not the
close.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple, TypeVar

import msgspec

from ._driver import Driver
from .core import (
    PARTS_IN_FLIGHT,
    Batch,
    ConnectionState,
    LinkSettings,
    ListenerState,
    ReceiverLink,
    ReceiverState,
    SenderLink,
    SenderState,
)
from .errors import AMQPError, ConnectionFailed, HandlerFailed, LinkDetached
from .transactions import Transaction, Transactions
from .url import URL
from .workers import protocol as p

T = TypeVar("T")


class Wait(NamedTuple):
    """Wait until `ready()`; `what` names it in a TimeoutError."""

    ready: Callable[[], bool]
    what: str
    # Hand batched settlements over before waiting (waiting for messages needs none).
    settlements: bool = True
    # False: not bound by the operation's deadline (the rest of a message in parts).
    bounded: bool = True


Steps = Generator[Wait, None, T]


def run(driver: Driver, steps: Steps[T], timeout: float | None) -> T:
    """Run `steps` in the calling thread, all of it within `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    outcome: tuple[bool, Any] = (True, None)  # (ok, the value sent or the error thrown)
    while True:
        try:
            ok, value = outcome
            wait = steps.send(value) if ok else steps.throw(value)
        except StopIteration as done:
            return done.value
        try:
            remaining = None
            if deadline is not None and wait.bounded:
                remaining = max(0.0, deadline - time.monotonic())
            driver.wait(wait.ready, remaining, wait.what, wait.settlements)
            outcome = (True, None)
        except TimeoutError:
            outcome = (False, TimeoutError(
                f"timed out after {timeout} s waiting for {wait.what}"))
        except BaseException as exc:
            outcome = (False, exc)


# ---- connections ----------------------------------------------------------------------------


def connect(driver: Driver, url: URL, shards: int, **options: Any) -> Steps[ConnectionState]:
    """Open `shards` connections to `url` on live workers; raise ConnectionFailed (and
    close the others) if one cannot be opened."""
    driver.refresh()  # notice workers that died since the last call: place none there
    with driver.lock:
        state = driver.core.open_connection(url, shards, **options)
        driver.write_all()
    try:
        yield Wait(lambda: all(s.opened or s.failure for s in state.shards),
                   f"connection to {url}")
        for shard in state.shards:
            if shard.failure is not None:
                raise connect_error(url, shard.failure)
    except BaseException:
        abandon_connection(driver, state)
        raise
    return state


def connect_error(url: URL, failure: Exception) -> Exception:
    """A shard's failure as connect() raises it: its type kept (TLSError, ...), its
    message naming the URL."""
    if not isinstance(failure, ConnectionFailed):
        return ConnectionFailed(f"cannot connect to {url}: {failure}")
    error = copy.copy(failure)
    error.args = (f"cannot connect to {url}: {failure}",)
    return error


def abandon_connection(driver: Driver, state: ConnectionState) -> None:
    """Close every shard without waiting for the peer, and forget them."""
    if driver.closed or state.closed:
        state.closed = True
        return
    with driver.lock:
        driver.core.close_connection(state)
        driver.write_all()
    driver.core.forget_connection(state)


def close_connection(driver: Driver, state: ConnectionState) -> Steps[None]:
    """Close every shard; wait for the peer to confirm (giving up at the deadline)."""
    if state.closed:
        return
    if driver.closed:
        state.closed = True
        return
    core = driver.core
    with driver.lock:
        core.hand_over_dirty()
        core.close_connection(state)
        driver.write_all()
    try:
        yield Wait(lambda: all(s.closed or s.slot.failure for s in state.shards),
                   f"the connection to {state.url} to close")
    except TimeoutError:
        pass
    finally:
        core.forget_connection(state)


# ---- links ----------------------------------------------------------------------------------


def open_sender(driver: Driver, connection: ConnectionState, address: str | None,
                window: int, presettled: bool, name: str | None,
                max_message_size: int, target: p.Terminus | None = None,
                settings: LinkSettings | None = None) -> Steps[SenderState]:
    connection.check_usable()
    driver.check_open()
    with driver.lock:
        state = driver.core.open_sender(connection, address, window, presettled, name,
                                        max_message_size, target, settings)
        driver.write_all()
    yield from _links_opened(driver, state.links, f"sender to {address!r}")
    if target is not None and target.dynamic:
        state.address = _dynamic_address(driver, state.links, False)
    return state


def _dynamic_address(driver: Driver, links: list[Any], is_source: bool) -> str:
    """The address the peer gave the node it created for a dynamic terminus."""
    remote = links[0].remote_source if is_source else links[0].remote_target
    address = remote.address if remote is not None else None
    if not address:
        abandon_links(driver, links)
        raise LinkDetached("the peer attached the dynamic "
                           f"{'source' if is_source else 'target'} without an address")
    return address


def open_receiver(driver: Driver, connection: ConnectionState, address: str | None,
                  credit: int, auto_accept: bool, name: str | None,
                  max_message_size: int, handler: str | None = None,
                  handler_args: dict[str, Any] | None = None,
                  source: p.Terminus | None = None,
                  settings: LinkSettings | None = None) -> Steps[ReceiverState]:
    connection.check_usable()
    driver.check_open()
    with driver.lock:
        state = driver.core.open_receiver(connection, address, credit, name, auto_accept,
                                          max_message_size, source, handler=handler,
                                          handler_args=handler_args, settings=settings)
        driver.write_all()
    links = list(state.links.values())
    yield from _links_opened(driver, links, f"receiver from {address!r}")
    if source is not None and source.dynamic:
        state.address = _dynamic_address(driver, links, True)
    return state


def drain(driver: Driver, state: ReceiverState) -> Steps[int]:
    """Ask every live link's peer to send what it has within the credit or give the
    credit back; once each answered, how many deliveries are buffered."""
    if state.closed:
        raise LinkDetached(f"the receiver from {state.address!r} is closed")
    links = [x for x in state.links.values() if x.failure is None and x.attached]
    with driver.lock:
        for link in links:
            link.drain()
        driver.write_all()
    yield Wait(lambda: not any(x.draining and x.failure is None and x.attached
                               for x in links),
               f"the peer of the receiver from {state.address!r} to answer the drain",
               settlements=False)
    if not state.buffer and state.all_failed():
        raise state.failure()
    return state.untaken_count()


def declare(driver: Driver, connection: ConnectionState) -> Steps[Transaction]:
    """Declare a transaction (its coordinator link opened first, if the shard has none);
    TransactionError if the peer refuses."""
    driver.check_open()
    with driver.lock:
        txn = Transactions(driver.core).declare(connection)
        driver.write_all()
    yield Wait(lambda: txn.declared, "the transaction to be declared")
    if txn.failure is not None:
        raise txn.failure
    return txn


def discharge(driver: Driver, txn: Transaction, fail: bool) -> Steps[None]:
    """Commit (`fail`: abort) the transaction; TransactionError if the peer refuses."""
    driver.check_open()
    with driver.lock:
        Transactions(driver.core).discharge(txn, fail)
        driver.write_all()
    yield Wait(lambda: txn.discharged,
               f"the transaction to be {'aborted' if fail else 'committed'}")
    if txn.failure is not None:
        raise txn.failure


def _links_opened(driver: Driver, links: list[Any], what: str) -> Steps[None]:
    """Every link attached; the first refusal is raised (and every link detached)."""
    try:
        yield Wait(lambda: all(x.opened or x.failure for x in links), what)
    except BaseException:
        abandon_links(driver, links)
        raise
    failed = [x for x in links if x.failure is not None]
    if failed:
        abandon_links(driver, links)
        raise failed[0].failure


def abandon_links(driver: Driver, links: list[Any]) -> None:
    """Detach `links` without waiting for the peer, and forget them."""
    if driver.closed:
        return
    with driver.lock:
        driver.core.close_links(links)
        driver.write_all()
    driver.core.forget_links(links)


def close_links(driver: Driver, links: list[SenderLink] | list[ReceiverLink],
                what: str, detach: bool = False) -> Steps[None]:
    """Close (or only `detach`) `links`; wait for the worker to confirm (giving up at
    the deadline)."""
    core = driver.core
    if driver.closed:
        return
    with driver.lock:
        core.close_links(links, detach)
        driver.write_all()
    try:
        yield Wait(lambda: all(x.closed or x.slot.failure for x in links), what)
    except TimeoutError:
        pass
    finally:
        core.forget_links(links)


def close_receiver(driver: Driver, state: ReceiverState,
                   detach: bool = False) -> Steps[None]:
    """Release what was received and not taken, then close (or only `detach`) every
    link."""
    if state.closed:
        return
    state.closed = True
    if driver.closed:
        return
    with driver.lock:
        driver.core.release_untaken(state)
    yield from close_links(driver, list(state.links.values()),
                           f"the receiver from {state.address!r} to detach", detach)


# ---- listening ------------------------------------------------------------------------------


def listen(driver: Driver, url: URL, credit: int, max_message_size: int,
           policy: Any = None, **security: Any) -> Steps[ListenerState]:
    """Worker 0 binds and accepts, then every other worker adopts the listener. With a
    `policy` (see ListenerState.policy) every inbound link waits for its decision."""
    driver.check_open()
    driver.refresh()
    core = driver.core
    if core.slots[0].failure is not None:
        raise core.slots[0].failure  # the accepting worker is gone
    with driver.lock:
        state = core.listen(url.host, url.port, credit, max_message_size,
                            defer_attach=policy is not None, **security)
        state.policy = policy
        driver.write_all()
    try:
        yield Wait(lambda: state.port is not None or state.failure is not None,
                   f"listening on {url}")
        if state.failure is None:
            with driver.lock:
                core.adopt(state)
                driver.write_all()
            yield Wait(lambda: state.pending <= 0 or state.failure is not None,
                       f"listening on {url}")
    except BaseException:
        close_listener(driver, state)
        raise
    if state.failure is not None:
        close_listener(driver, state)
        raise state.failure
    return state


def offered_sender(state: ListenerState) -> Steps[SenderState]:
    """The next remote receiver's sender that the user has not taken."""
    while True:
        if state.offered:
            sender = state.offered.popleft()
            if not sender.closed and not all(x.failure for x in sender.links):
                return sender
            continue
        if state.closed or state.failure is not None:
            raise state.failure or ConnectionFailed("the listener is closed")
        yield Wait(lambda: bool(state.offered) or state.closed or state.failure is not None,
                   "a remote receiver to attach", settlements=False)


def close_listener(driver: Driver, state: ListenerState) -> None:
    """Stop accepting; release what was delivered and not taken; detach inbound links."""
    if state.closed:
        return
    if driver.closed:
        state.closed = state.receiver.closed = True
        return
    with driver.lock:
        driver.core.close_listener(state)
        driver.write_all()


# ---- sending and receiving ------------------------------------------------------------------


def send_parts(driver: Driver, link: SenderLink, payload: bytes) -> Steps[Batch]:
    """A message too large for one record, on `link` (which has room): see
    hand_over_parts."""
    with driver.lock:
        batch, parts = link.parts(payload, driver.core.fragment)
        driver.write(link.slot)  # what send() batched before it goes first
    yield from hand_over_parts(driver, link, batch, parts)
    return batch


def hand_over_parts(driver: Driver, link: SenderLink, batch: Batch,
                    parts: Iterator[p.SendPart]) -> Steps[None]:
    """A large message's parts in order, one record each, with at most PARTS_IN_FLIGHT of
    them waiting in the worker (it reports PartsWritten). Once the first part is handed
    over, the rest go whatever the deadline. Meanwhile the link takes messages but hands
    none over, so that nothing goes between the parts; they go after the last."""
    seq = batch.first
    generation = link.generation
    link.parts_busy = True
    try:
        for sent, part in enumerate(parts):
            if sent >= PARTS_IN_FLIGHT:
                done = sent - PARTS_IN_FLIGHT + 1
                yield Wait(lambda done=done: link.parts_done(seq, done)  # type: ignore[misc]
                           or link.failure is not None or link.generation != generation,
                           f"part {sent} of message {seq} to go out", bounded=False)
            if link.failure is not None or not link.attached or (
                    link.generation != generation):
                # It stays unsettled, with its payload: a failed link's for a resend by
                # the user, a lost one's for the replay once it is attached again.
                break
            with driver.lock:
                link.slot.queue(part)
                driver.write(link.slot)  # a dead worker ends this: the link then fails
    finally:
        link.parts_busy = False
        if link.open is not None and link.failure is None and not driver.closed:
            with driver.lock:
                link.hand_over()
                driver.write(link.slot)
    link.sender.rotate()
    driver.take_events()


def room(state: SenderState) -> Steps[SenderLink]:
    """The next shard's link with room in its window, waiting for room if none has."""
    link = state.pick()
    while link is None:
        yield Wait(state.has_room, f"room in the window of the sender to {state.address!r}")
        link = state.pick()
    return link


def settled(batches: list[Batch], ready: Callable[[], bool], what: str) -> Steps[None]:
    """Wait until `ready()` (the messages of `batches` are settled); raise the failure of
    a link that ended with one of them unsettled."""
    links = {batch.link for batch in batches}
    yield Wait(lambda: ready() or any(link.failure for link in links), what)
    if not ready():
        for batch in batches:
            if batch.pending and batch.link.failure is not None:
                raise batch.link.failure


def flush(state: SenderState) -> Steps[None]:
    """Every message settled; then the failure of a link that left some unsettled."""
    yield Wait(state.all_settled, f"every message to {state.address!r} to be settled")
    failed = state.failed_with_unsettled()
    if failed:
        failure: Any = failed[0].failure
        count = sum(x.unsettled for x in failed)
        raise type(failure)(f"{count} message(s) unsettled: {failure}",
                            getattr(failure, "condition", None))


def buffered(state: ReceiverState) -> Steps[None]:
    """A delivery is buffered; raise why if none can come."""
    if state.buffer:
        return
    if state.closed:
        raise LinkDetached(f"the receiver from {state.address!r} is closed")
    yield Wait(lambda: bool(state.buffer) or state.all_failed(),
               f"a message from {state.address!r}", settlements=False)
    if not state.buffer:
        raise state.failure()


def handled(state: ReceiverState, count: int | None, reported: set[int]) -> Steps[None]:
    """An in-worker handler's receiver: `count` messages handled over every link (None:
    every link ended). A handler failure not raised yet is raised (once each: `reported`
    keeps the ids of the links whose failure was); if every link ended first, the first
    failure (or a LinkDetached saying how many were handled) is raised."""
    links = list(state.links.values())

    def total() -> int:
        return sum(x.counts.handled for x in links if x.counts is not None)

    def unreported() -> ReceiverLink | None:
        for link in links:
            if (link.closed and isinstance(link.failure, HandlerFailed)
                    and link.id not in reported):
                return link
        return None

    def ready() -> bool:
        if unreported() is not None or all(x.closed or x.slot.failure for x in links):
            return True
        return count is not None and total() >= count

    try:
        yield Wait(ready, f"the handlers of the receiver from {state.address!r}")
    except TimeoutError as exc:
        if count is None:
            raise
        raise TimeoutError(f"{exc} ({total()} of {count} handled)") from None
    failed = unreported()
    if failed is not None:
        reported.add(failed.id)
        raise failed.failure  # type: ignore[misc]
    if count is not None and total() < count:
        failures = [x.failure for x in links if isinstance(x.failure, AMQPError)
                    and x.failure.condition is not None]
        raise failures[0] if failures else LinkDetached(
            f"the receiver from {state.address!r} ended after {total()} of {count} messages")


def worker_stats(driver: Driver) -> Steps[list[dict[str, int]]]:
    core = driver.core
    driver.check_open()
    with driver.lock:
        live = core.ask_stats()
        driver.write_all()
    yield Wait(lambda: len(core.stats) >= len(core.live_slots())
               or any(s.failure for s in live), "the workers' counters")
    return [msgspec.structs.asdict(core.stats[i]) for i in sorted(core.stats)]
