"""The blocking face's once-a-message calls in C (amqscale/_clinks.c) against links.py's
Python, their reference.

Each C call does the whole of its common case or changes nothing and calls the Python.
These tests drive the core's real objects (SenderState, SenderLink, Batch, ReceiverState,
Arrival, ReceiverLink) with a scripted driver, the one layer under test: that the common
case leaves the same state the Python leaves, and that everything else reaches the Python
untouched. End to end, every other test of the suite runs on the C path; the last test
here runs a pair on the pure-Python path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from amqscale import links
from amqscale._driver import AWAKE_BATCH
from amqscale.codec import DecodeError
from amqscale.core import (
    SEND_BATCH,
    SETTLE_BATCH,
    Arrival,
    ReceiverLink,
    ReceiverState,
    SenderLink,
    SenderState,
    WorkerSlot,
)
from amqscale.errors import DeliveryLost, LinkDetached
from amqscale.message import Message
from amqscale.workers import protocol as p

clinks = pytest.importorskip("amqscale._clinks")
if links._clinks is None:
    pytest.skip("the C path is off (AMQSCALE_PURE_PYTHON)", allow_module_level=True)

CAUGHT_UP, BEHIND, PARKED = 1, 0, 2


class ScriptedRing:
    def __init__(self, reader: int) -> None:
        self.reader = reader

    def reader_state(self) -> int:
        return self.reader


class ScriptedDriver:
    """What the calls use of a Driver: its lock, its rings' reader states, the times of
    the last hand-overs, mark_dirty and write (recorded)."""

    def __init__(self, reader: int = BEHIND) -> None:
        self.lock = threading.Lock()
        self._outbound = [ScriptedRing(reader)]
        self._handed_over_at = [time.monotonic()]
        self.marked: list[Any] = []
        self.written: list[WorkerSlot] = []

    def mark_dirty(self, link: Any) -> None:
        link.dirty = True
        self.marked.append(link)

    def write(self, slot: WorkerSlot) -> None:
        self.written.append(slot)


class Fallback:
    """The Python method's stand-in: records its calls, returns a marker."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        return "python"


# ---- Sender.send --------------------------------------------------------------------


class Encode(Fallback):
    """Sender._encode's stand-in: encodes as it does, records what it was given."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        (message,) = args
        return message.encode() if isinstance(message, Message) else links.encode_body(message)


class SendUnderTest:
    def __init__(self, window: int = 1000, tracker: type = links.Tracker,
                 reader: int = BEHIND) -> None:
        self.state = SenderState("q", window, False, 0)
        self.link = SenderLink(0, WorkerSlot(0), self.state)
        self.state.links = [self.link]
        self.driver = ScriptedDriver(reader)
        self.fallback, self.encode, self.send_payload = Fallback(), Encode(), Fallback()
        self.send = clinks.Send(self.state, self.driver, tracker, self.fallback, self.encode,
                                self.send_payload, 1000)

    def snapshot(self) -> tuple[Any, ...]:
        link, batch = self.link, self.link.open
        return (link.next_seq, link.unsettled, link.dirty,
                None if batch is None else (batch.size, batch.pending, list(batch.payloads or [])))


def test_a_message_joins_the_open_batch_as_link_add_would() -> None:
    c = SendUnderTest()
    twin = SendUnderTest()
    messages: list[Any] = [bytes([i]) * (i * 2) for i in range(1, 30)]
    messages += [Message(id=7, body=b"m", properties={"a": 1}), bytearray(b"ba"), b"x" * 300]
    c.link.add(links.encode_body(b"first"))  # the batch a first message opens
    twin.link.add(links.encode_body(b"first"))
    trackers = [c.send(m) for m in messages]
    for m in messages:
        twin.link.add(m.encode() if isinstance(m, Message) else links.encode_body(m))
    assert c.snapshot()[:2] == twin.snapshot()[:2] and c.snapshot()[3] == twin.snapshot()[3]
    assert [t.seq for t in trackers] == list(range(1, len(messages) + 1))
    assert all(type(t) is links.Tracker and t._batch is c.link.open for t in trackers)
    assert c.driver.marked == [c.link]  # once: then the link is dirty
    # Short bytes and Messages are encoded in C, the rest by the Python.
    assert [args[0] for args, _ in c.encode.calls] == messages[-2:]
    assert c.fallback.calls == [] and c.send_payload.calls == []


def test_an_awaitable_tracker_class_is_made_as_given() -> None:
    from amqscale.aio import Tracker as AioTracker

    c = SendUnderTest(tracker=AioTracker)
    c.link.add(b"x")
    assert type(c.send(b"y")) is AioTracker
    with pytest.raises(TypeError, match="Tracker"):
        SendUnderTest(tracker=dict)


def test_a_message_the_python_encodes_when_a_max_message_size_is_set() -> None:
    c = SendUnderTest()
    c.state.max_message_size = 10_000
    c.link.add(b"x")
    message = Message(body=b"m")
    c.send(message)
    assert c.encode.calls == [((message,), {})]


def _not_the_common_case(case: str, c: SendUnderTest) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Set up `case`; the arguments send() is called with."""
    link, state, driver = c.link, c.state, c.driver
    link.add(b"opening")
    if case == "no open batch":
        link.open = None
    elif case == "closed":
        state.closed = True
    elif case == "failed link":
        link.failure = LinkDetached("gone")
    elif case == "window full":
        state.window = link.unsettled
    elif case == "peer's max-message-size":
        link.remote_max = 10
    elif case == "batch full":
        link.open.size = SEND_BATCH - 1  # type: ignore[union-attr]
    elif case == "worker caught up, batch large enough":
        driver._outbound[0].reader = CAUGHT_UP
        link.open.size = AWAKE_BATCH - 1  # type: ignore[union-attr]
    elif case == "worker parked, interval passed":
        driver._outbound[0].reader = PARKED
        driver._handed_over_at[0] = time.monotonic() - 1.0
    return {
        "in parts": ((b"x" * 2000,), {}),
        "peer's max-message-size": ((b"x" * 20,), {}),
    }.get(case, ((b"abc",), {}))


@pytest.mark.parametrize("case", [
    "no open batch", "closed", "failed link", "window full", "peer's max-message-size",
    "batch full", "worker caught up, batch large enough", "worker parked, interval passed",
    "in parts"])
def test_anything_else_goes_to_the_python_with_nothing_changed(case: str) -> None:
    c = SendUnderTest()
    args, kwargs = _not_the_common_case(case, c)
    before = c.snapshot()
    assert c.send(*args, **kwargs) == "python"
    timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
    assert c.send_payload.calls == [((links.encode_body(args[0]), timeout), {})]
    assert c.snapshot() == before and c.fallback.calls == []
    assert not c.driver.lock.locked()


def test_a_timeout_given_matters_only_to_the_python_that_waits() -> None:
    c = SendUnderTest()
    c.link.add(b"opening")
    c.send(b"a", 1.0)
    c.send(b"b", timeout=1.0)
    assert c.link.open.size == 3  # type: ignore[union-attr]
    c.link.failure = LinkDetached("gone")
    c.send(b"c", timeout=2.5)
    assert c.send_payload.calls == [((links.encode_body(b"c"), 2.5), {})]


@pytest.mark.parametrize("args, kwargs", [((), {}), ((b"a", 1.0, 2), {}),
                                          ((b"a",), {"deadline": 1.0})])
def test_other_arguments_go_to_the_python_send(args: tuple[Any, ...],
                                               kwargs: dict[str, Any]) -> None:
    c = SendUnderTest()
    c.link.add(b"opening")
    assert c.send(*args, **kwargs) == "python"
    assert c.fallback.calls == [(args, kwargs)]


def test_an_encoding_error_is_raised_at_the_call() -> None:
    c = SendUnderTest()
    c.link.add(b"opening")
    before = c.snapshot()
    with pytest.raises(TypeError):
        c.send(12345)  # the stand-in's encode_body refuses an int, as _encode does
    assert c.snapshot() == before


def test_a_caught_up_worker_gets_a_small_batch_only_after_the_wake_interval() -> None:
    c = SendUnderTest(reader=CAUGHT_UP)
    c.link.add(b"opening")
    c.send(b"soon after the last hand-over")
    assert c.send_payload.calls == []
    c.driver._handed_over_at[0] = time.monotonic() - 2 * p.WAKE_INTERVAL - 0.01
    assert c.send(b"later") == "python"


def test_a_failure_inside_raises_and_leaves_the_lock_free() -> None:
    c = SendUnderTest()
    c.driver._outbound = []  # no ring for the link's worker
    c.link.add(b"opening")
    before = c.snapshot()
    with pytest.raises(IndexError):
        c.send(b"abc")
    assert not c.driver.lock.locked() and c.snapshot() == before


# ---- Receiver.receive, Delivery.accept, Delivery.body ---------------------------------


def _receiver(payloads: list[bytes], credit: int = 1000,
              driver: ScriptedDriver | None = None) -> tuple[ReceiverState, ReceiverLink]:
    state = ReceiverState("q", credit)
    state.waiter = driver or ScriptedDriver()
    link = ReceiverLink(0, WorkerSlot(0), state, credit)
    state.links[0] = link
    state.buffer.append(Arrival(link, 100, payloads, None))
    return state, link


class OwnerOfAutoAccept:
    auto_accept = False


def test_deliveries_are_taken_in_order_then_the_last_goes_to_python() -> None:
    state, link = _receiver([links.encode_body(b"m%d" % i) for i in range(3)])
    fallback = Fallback()
    receive = clinks.Receive(OwnerOfAutoAccept(), state, fallback)
    first, second = receive(), receive(timeout=5.0)
    assert (first.id, second.id) == (100, 101)
    assert (first.body, second.body) == (b"m0", b"m1")
    assert (state.position, link.consumed) == (2, 2)
    assert receive() == "python"  # the arrival's last: the Python forgets the arrival
    assert fallback.calls == [((), {})] and state.position == 2


@pytest.mark.parametrize("case", ["empty buffer", "credit due", "positional and keyword"])
def test_receive_leaves_the_rest_to_python(case: str) -> None:
    state, link = _receiver([b"a", b"b", b"c"], credit=8)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if case == "empty buffer":
        state.buffer.clear()
    elif case == "credit due":
        link.consumed = 3  # the 4th take makes half the credit due
    else:
        args, kwargs = (1.0,), {"timeout": 1.0}
    fallback = Fallback()
    receive = clinks.Receive(OwnerOfAutoAccept(), state, fallback)
    consumed = link.consumed
    assert receive(*args, **kwargs) == "python"
    assert fallback.calls == [(args, kwargs)]
    assert (state.position, link.consumed) == (0, consumed)


def test_auto_accept_accepts_what_receive_takes() -> None:
    state, link = _receiver([b"a", b"b", b"c"])
    owner = OwnerOfAutoAccept()
    owner.auto_accept = True
    receive = clinks.Receive(owner, state, Fallback())
    assert receive().settled
    assert link.settling == {p.ACCEPTED: [100]}


def test_accepts_batch_until_the_settle_batch_is_full() -> None:
    driver = ScriptedDriver()
    count = SETTLE_BATCH + 2
    state, link = _receiver([b"x"] * count, driver=driver)
    arrival = state.buffer[0]
    deliveries = [links.Delivery(arrival, i) for i in range(count)]
    for delivery in deliveries:
        delivery.accept()
        delivery.accept()  # a second accept does nothing
    assert all(arrival.settled)
    assert driver.written == [link.slot]  # one full batch handed over
    (settle,) = link.slot.queued
    assert settle.ids == list(range(100, 100 + SETTLE_BATCH))
    assert link.settling == {p.ACCEPTED: [100 + SETTLE_BATCH, 101 + SETTLE_BATCH]}
    assert not driver.lock.locked()


def test_an_accept_that_cannot_settle_raises_as_the_python_does() -> None:
    state, link = _receiver([b"x"] * 4)
    arrival = state.buffer[0]
    links.Delivery(arrival, 0).accept()  # the settlement batch exists: the C case next
    link.failure = LinkDetached("the link is gone")
    with pytest.raises(LinkDetached, match="gone"):
        links.Delivery(arrival, 1).accept()
    link.failure = None
    link.generation += 1  # its connection was lost since it arrived
    with pytest.raises(DeliveryLost):
        links.Delivery(arrival, 2).accept()
    assert list(arrival.settled) == [1, 0, 0, 0]


def test_body_is_the_data_section_or_the_decoded_body() -> None:
    state, _ = _receiver([links.encode_body(b"raw"), Message(body={"k": 1}).encode(),
                          Message(body=b"in a message", id=7).encode()])
    arrival = state.buffer[0]
    assert [links.Delivery(arrival, i).body for i in range(3)] == [
        b"raw", {"k": 1}, b"in a message"]


def test_message_is_decoded_once_and_then_the_same_object() -> None:
    sent = [Message(id=i, body=b"b%d" % i) for i in range(40)]
    state, _ = _receiver([m.encode() for m in sent])
    arrival = state.buffer[0]
    first = [links.Delivery(arrival, i).message for i in range(40)]
    assert [(m.id, m.body) for m in first] == [(m.id, m.body) for m in sent]
    assert all(links.Delivery(arrival, i).message is first[i] for i in range(40))
    state, _ = _receiver([b"\x00\x53\x77\xff"])  # not a message
    with pytest.raises(DecodeError):
        _ = links.Delivery(state.buffer[0], 0).message


# ---- the switch, and the Python path end to end --------------------------------------


def _in_a_new_process(code: str, pure_python: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AMQSCALE_PURE_PYTHON"}
    if pure_python is not None:
        env["AMQSCALE_PURE_PYTHON"] = pure_python
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_c_path_is_used_unless_pure_python_is_asked_for() -> None:
    code = "from amqscale import links; print(links._clinks is not None)"
    assert _in_a_new_process(code, None) == "True"
    assert _in_a_new_process(code, "1") == "False"


PAIR = """
    import amqscale
    from amqscale import links
    assert links._clinks is None
    with amqscale.Container(workers=1) as container:
        listener = container.listen("amqp://127.0.0.1:0")
        conn = container.connect(listener.url)
        sender = conn.open_sender("q")
        trackers, bodies = [], []
        for start in range(0, 3000, 500):  # within the window and the credit
            trackers += [sender.send(b"m%d" % i, timeout=30) for i in range(start, start + 500)]
            for _ in range(500):
                delivery = listener.receiver.receive(timeout=30)
                bodies.append(delivery.body)
                delivery.accept()
        sender.flush(timeout=30)
        assert bodies == [b"m%d" % i for i in range(3000)]
        print(sum(t.accepted for t in trackers))
        conn.close()
"""


def test_a_pair_on_the_pure_python_path_sends_and_settles_everything() -> None:
    assert _in_a_new_process(PAIR, "1") == "3000"
