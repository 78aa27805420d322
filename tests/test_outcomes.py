"""Outcomes travel back to the sender's Tracker: accepted, rejected, released, modified."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

import amqscale
from amqscale import symbol


@pytest.fixture
def pair() -> tuple[amqscale.Sender, amqscale.Receiver]:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("outcomes")
        yield sender, listener.receiver


def test_each_outcome_reaches_the_tracker(pair: tuple[amqscale.Sender, amqscale.Receiver]
                                          ) -> None:
    sender, receiver = pair
    trackers = [sender.send(amqscale.Message(id=i, body=b"x")) for i in range(4)]
    deliveries = {d.message.id: d for d in (receiver.receive(timeout=30) for _ in range(4))}
    deliveries[0].accept()
    deliveries[1].reject("amqp:precondition-failed", "no thanks")
    deliveries[2].release()
    deliveries[3].modify(delivery_failed=True, undeliverable_here=True,
                         annotations={"x-opt-reason": "retry later"})
    for tracker in trackers:
        tracker.wait(30)
    accepted, rejected, released, modified = trackers
    assert accepted.outcome == "accepted" and accepted.condition is None
    assert rejected.outcome == "rejected"
    assert rejected.condition is not None
    assert (rejected.condition.name, rejected.condition.description) == (
        "amqp:precondition-failed", "no thanks")
    assert released.outcome == "released"
    assert modified.outcome == "modified"
    assert modified.delivery_failed and modified.undeliverable_here
    assert modified.annotations == {symbol("x-opt-reason"): "retry later"}
    assert sender.counts == {0x24: 1, 0x25: 1, 0x26: 1, 0x27: 1}


def test_settling_twice_is_harmless_and_bad_annotations_fail_at_the_call(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    tracker = sender.send(b"once")
    delivery = receiver.receive(timeout=30)
    with pytest.raises(TypeError, match="set"):
        delivery.modify(annotations={"bad": {1, 2}})
    assert not delivery.settled  # the failed call settled nothing
    delivery.accept()
    delivery.reject()  # already settled: no effect
    assert tracker.wait(30).outcome == "accepted"


def test_settlements_still_batched_are_handed_over_on_close() -> None:
    with amqscale.Container(workers=1) as client:
        server = amqscale.Container(workers=1)
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("last")
        trackers = [sender.send(b"m") for _ in range(3)]
        for _ in range(3):
            listener.receiver.receive(timeout=30).accept()  # batched, not yet handed over
        server.close()  # at once: the accepts must still reach the sender
        sender.flush(timeout=30)
        assert [t.outcome for t in trackers] == ["accepted"] * 3


def test_a_settlement_reaches_the_sender_while_the_receiving_side_makes_no_call(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    trackers = [sender.send(b"one-%d" % i) for i in range(3)]
    for _ in range(3):
        receiver.receive(timeout=30).accept()
    # The receiving container is not called again: its linger thread hands them over.
    for tracker in trackers:
        assert tracker.wait(30).accepted


def test_sends_batched_behind_a_busy_worker_go_out_without_another_call(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    for i in range(20):  # some wait in a batch; the sending container is not called again
        sender.send(b"lone-%d" % i)
    got = [receiver.receive(timeout=30) for _ in range(20)]
    assert sorted(d.body for d in got) == sorted(b"lone-%d" % i for i in range(20))
    receiver.accept_many(got)
    sender.flush(timeout=30)


def test_outcomes_are_taken_while_sending_with_no_blocking_call() -> None:
    # A paced sender never waits; its Trackers must still settle as the peer accepts,
    # not all at once when the window fills (which stalled that send for milliseconds).
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("paced", window=100_000)
        stop = threading.Event()

        def accept_all() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    listener.receiver.receive(timeout=0.1).accept()

        consumer = threading.Thread(target=accept_all)
        consumer.start()
        try:
            first = sender.send(b"first")
            sent = 1
            while not first.settled and sent < 20_000:  # about 20 s at most
                time.sleep(0.001)
                sender.send(b"more")
                sent += 1
        finally:
            stop.set()
            consumer.join()
        assert first.outcome == "accepted", f"not settled after {sent} more sends"
        assert len(sender.unsettled) < sent
