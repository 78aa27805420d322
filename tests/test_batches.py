"""The batch face: send_many, receive_many, accept_many."""

from __future__ import annotations

import pytest

import amqscale


@pytest.fixture
def pair() -> tuple[amqscale.Sender, amqscale.Receiver]:
    with amqscale.Container(workers=2) as server, amqscale.Container(workers=2) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url, shards=3).open_sender("many", window=1000)
        yield sender, listener.receiver


def test_send_many_keeps_order_per_link_and_every_message_arrives(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    # 3 links x window 1000 hold all 2001 in flight: no receive needed while sending.
    first = sender.send(amqscale.Message(id="single"))  # batched by send(), goes first
    trackers = sender.send_many(
        [amqscale.Message(id=i) for i in range(1000)] + [b"raw-%d" % i for i in range(1000)])
    assert len(trackers) == 2000
    got: list[object] = []
    while len(got) < 2001:
        deliveries = receiver.receive_many(limit=300, timeout=30)
        assert 1 <= len(deliveries) <= 300
        got.extend(d.body if d.message.id is None else d.message.id for d in deliveries)
        receiver.accept_many(deliveries)
    sender.flush(timeout=30)
    assert first.accepted and all(t.accepted for t in trackers)
    assert sorted(x for x in got if isinstance(x, int)) == list(range(1000))
    assert sorted(x for x in got if isinstance(x, bytes)) == sorted(
        b"raw-%d" % i for i in range(1000))
    assert got.count("single") == 1


def test_a_bad_message_stops_the_batch_before_anything_is_sent(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    with pytest.raises(TypeError, match="set"):
        sender.send_many([b"ok"] * 10 + [amqscale.Message(body={1})])
    with pytest.raises(TypeError, match="Message or bytes"):
        sender.send_many([b"ok", 3.5])  # type: ignore[list-item]
    assert sender.unsettled == []
    (tracker,) = sender.send_many([b"after"])
    delivery = receiver.receive(timeout=30)
    assert delivery.body == b"after"
    delivery.accept()
    assert tracker.wait(30).accepted


def test_send_many_times_out_when_nobody_takes_messages() -> None:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=10)
        sender = client.connect(listener.url).open_sender("stuck", window=20)
        with pytest.raises(TimeoutError) as info:
            sender.send_many([b"x"] * 50, timeout=0.5)
        handed_over = info.value.trackers  # type: ignore[attr-defined]
        assert len(handed_over) == 20  # one window's worth; the rest were not sent
        assert len(sender.unsettled) == 20


def test_trackers_answer_for_the_batch_and_per_message_with_mixed_outcomes(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    trackers = sender.send_many([b"%d" % i for i in range(300)])
    assert not trackers.settled and not trackers.accepted
    assert trackers.counts() == {None: 300}
    deliveries = []
    while len(deliveries) < 300:
        deliveries.extend(receiver.receive_many(timeout=30))
    # Settle out of order and with mixed outcomes: every seventh rejected, the rest
    # accepted, last ones first.
    for delivery in reversed(deliveries):
        if int(delivery.body) % 7 == 0:
            delivery.reject("amqp:precondition-failed", "sevens")
        else:
            delivery.accept()
    assert trackers.wait(30) is trackers
    assert trackers.settled and not trackers.accepted
    assert trackers.counts() == {"rejected": 43, "accepted": 257}
    assert [t.outcome for t in trackers[:8]] == ["rejected"] + ["accepted"] * 6 + ["rejected"]
    assert trackers[-1].outcome == "accepted" and trackers[-300].outcome == "rejected"
    assert trackers[7].condition is not None and trackers[7].condition.name == (
        "amqp:precondition-failed")
    assert all(t.payload is None for t in trackers)  # settled: nothing kept to resend
    assert sender.unsettled == []
    with pytest.raises(IndexError):
        trackers[300]
    with pytest.raises(IndexError):
        trackers[-301]


def test_trackers_of_a_batch_that_spans_links_are_in_the_order_given(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    sender.window = 100  # 3 links x 100: the batch is split over all three, then waits
    trackers = sender.send_many([b"%d" % i for i in range(250)])
    assert len({t._batch.link for t in trackers}) == 3
    bodies = {}
    while len(bodies) < 250:
        for delivery in receiver.receive_many(timeout=30):
            bodies[delivery.body] = delivery
            delivery.accept()
    assert trackers.wait(30).accepted
    assert [t.seq for t in trackers[:3]] == [0, 1, 2]  # the first link's first messages
    assert len(trackers[10:20]) == 10 and trackers[::50][1].seq == trackers[50].seq


def test_receive_many_gives_deliveries_with_bulk_answers_and_settles_only_the_rest(
        pair: tuple[amqscale.Sender, amqscale.Receiver]) -> None:
    sender, receiver = pair
    messages = [b"body-%d" % i for i in range(20)] + [
        amqscale.Message(id=i, body={"n": i}) for i in range(10)]
    trackers = sender.send_many(messages)
    taken: list[amqscale.Delivery] = []
    bodies: list[object] = []
    while len(taken) < 30:
        deliveries = receiver.receive_many(limit=7, timeout=30)
        assert 1 <= len(deliveries) <= 7
        assert [d.payload for d in deliveries] == deliveries.payloads
        assert deliveries.bodies == [d.body for d in deliveries]
        assert [m.body for m in deliveries.messages] == deliveries.bodies
        assert deliveries[0].message is deliveries.messages[0]  # decoded once
        assert [d.id for d in deliveries[-2:]] == [d.id for d in list(deliveries)[-2:]]
        with pytest.raises(IndexError):
            deliveries[len(deliveries)]
        bodies += deliveries.bodies
        taken += deliveries
        # One of each batch rejected first: accepting the batch leaves it rejected.
        deliveries[0].reject("amqp:precondition-failed", "first of a batch")
        assert deliveries[0].settled and not deliveries[1].settled
        deliveries.accept()
        assert all(d.settled for d in deliveries)
    assert sorted(map(repr, bodies)) == sorted(
        map(repr, [b"body-%d" % i for i in range(20)] + [{"n": i} for i in range(10)]))
    trackers.wait(30)
    outcomes = trackers.counts()
    assert outcomes["rejected"] >= 5 and outcomes["rejected"] + outcomes["accepted"] == 30


def test_receive_many_rejects_a_limit_below_one_and_auto_accepts_batches() -> None:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        receiver = listener.receiver
        with pytest.raises(ValueError, match="limit"):
            receiver.receive_many(limit=0)
        receiver.auto_accept = True
        sender = client.connect(listener.url).open_sender("auto")
        trackers = sender.send_many([b"a", b"b", b"c"])
        got: list[object] = []
        while len(got) < 3:
            deliveries = receiver.receive_many(timeout=30)
            assert all(d.settled for d in deliveries)
            got += deliveries.bodies
        assert got == [b"a", b"b", b"c"]
        assert trackers.wait(30).accepted


def test_presettled_messages_arrive_settled_in_a_batch() -> None:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("amo", presettled=True)
        sender.send_many([b"%d" % i for i in range(50)])
        got = []
        while len(got) < 50:
            deliveries = listener.receiver.receive_many(timeout=30)
            assert all(d.settled for d in deliveries)
            deliveries.accept()  # nothing left to settle: a no-op
            got += deliveries.bodies
        assert got == [b"%d" % i for i in range(50)]
