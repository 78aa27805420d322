"""Credit: a receiver grants credit only as the user takes deliveries.

Watched from the other end of the wire by proton-python peers (tests/proton_peers.py),
which count what they were allowed to send and what they sent, and between two amqscale
Containers. Also the failure cases of credit values and of receive timeouts.
"""

from __future__ import annotations

import time

import pytest
from proton_peers import ClientSender, Source, wait_for

import amqscale


def test_listener_credit_bounds_what_a_proton_sender_may_send() -> None:
    """A listener with credit 5: a proton sender with 50 to send gets credit for 5 and
    sends 5, no more, until the user takes deliveries; then as many more as were taken."""
    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0", credit=5)
        with ClientSender(listener.url, "credit", 50) as peer:
            wait_for(lambda: peer.sent >= 5, 20, "the first 5 messages to be sent")
            time.sleep(0.5)  # room for more to go, if credit allowed it
            assert peer.sent == 5
            assert max(peer.credit_seen) <= 5
            taken = 0
            while taken < 50:
                delivery = listener.receiver.receive(timeout=20)
                delivery.accept()
                taken += 1
                # Never more out than the credit plus what the user took.
                assert peer.sent <= 5 + taken
            wait_for(lambda: len(peer.outcomes) == 50, 20, "every outcome")
            assert set(peer.outcomes.values()) == {"accepted"}
            assert max(peer.credit_seen) <= 5
            assert peer.error is None


def test_listener_credit_bounds_an_amqscale_sender_with_a_larger_window() -> None:
    """A listener with credit 5, an amqscale sender with window 50: at most 5 are
    delivered before one is taken; receive_many then finds at most 5 waiting."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=5)
        sender = client.connect(listener.url).open_sender("credit", window=50)
        trackers = [sender.send(amqscale.Message(id=i, body=b"c")) for i in range(50)]
        with pytest.raises(TimeoutError):
            sender.flush(timeout=1.0)  # hands everything over; nothing can settle
        first = listener.receiver.receive_many(limit=50, timeout=10)
        assert 1 <= len(first) <= 5
        got = [m.id for m in first.messages]
        first.accept()
        while len(got) < 50:
            more = listener.receiver.receive_many(limit=50, timeout=10)
            got += [m.id for m in more.messages]
            more.accept()
        assert sorted(got) == list(range(50))
        sender.flush(timeout=20)
        assert all(t.accepted for t in trackers)


def test_receiver_grants_credit_only_as_deliveries_are_taken() -> None:
    """open_receiver(credit=10) from a proton source with 100 messages: the source never
    sees more credit than 10, and never has sent more than 10 + what the user took."""
    with Source(100) as source, amqscale.Container(workers=1) as container:
        receiver = container.connect(source.url).open_receiver("src", credit=10)
        wait_for(lambda: source.sent >= 10, 20, "the first 10 messages")
        time.sleep(0.5)
        assert source.sent == 10
        taken = 0
        while taken < 100:
            delivery = receiver.receive(timeout=20)
            assert delivery.message.id == taken
            delivery.accept()
            taken += 1
            assert source.sent <= 10 + taken
            assert max(source.credit_seen) <= 10
        wait_for(lambda: len(source.outcomes) == 100, 20, "every outcome")
        assert set(source.outcomes.values()) == {"accepted"}


def test_receiver_credit_is_shared_over_shards() -> None:
    """credit=10 over 2 shards: the peer sees at most 10 in all, not 10 per link."""
    with Source(100) as source, amqscale.Container(workers=2) as container:
        receiver = container.connect(source.url, shards=2).open_receiver("src", credit=10)
        time.sleep(1.0)
        assert 0 < source.sent <= 10
        for _ in range(100):
            receiver.receive(timeout=20).accept()


BAD_CREDITS = [-1, 1.5, "10", None]  # (0: a receiver whose credit the user grants)


@pytest.mark.parametrize("credit", [0, *BAD_CREDITS])
def test_listen_refuses_bad_credit(credit: object) -> None:
    """A bad credit is refused at the call, before it reaches a worker (today some pass,
    and a str or None kills worker 0 while listen() waits out its timeout)."""
    with amqscale.Container(workers=1) as server:
        with pytest.raises(ValueError, match="credit"):
            server.listen("amqp://127.0.0.1:0", credit=credit,  # type: ignore[arg-type]
                          timeout=10)
        # The Container is still good.
        listener = server.listen("amqp://127.0.0.1:0", timeout=10)
        assert listener.port


def test_open_refuses_bad_credit_and_window() -> None:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        conn = client.connect(listener.url)
        for bad in BAD_CREDITS:
            with pytest.raises(ValueError, match="credit"):
                conn.open_receiver("x", credit=bad)  # type: ignore[arg-type]
        for bad in [0, *BAD_CREDITS]:
            with pytest.raises(ValueError, match="window"):
                conn.open_sender("x", window=bad)  # type: ignore[arg-type]
        # The connection and the listener are still good.
        tracker = conn.open_sender("x").send(b"ok")
        listener.receiver.receive(timeout=20).accept()
        assert tracker.wait(20).accepted


@pytest.mark.parametrize("limit", [0, -5])
def test_bad_receive_many_limit(limit: int) -> None:
    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0")
        with pytest.raises(ValueError, match="limit"):
            listener.receiver.receive_many(limit=limit, timeout=1)


def test_receive_timeout_loses_nothing() -> None:
    """receive(timeout) raises TimeoutError when nothing came; the message that comes
    after is the next receive's, exactly once."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=5)
        with pytest.raises(TimeoutError):
            listener.receiver.receive(timeout=0.2)
        with pytest.raises(TimeoutError):
            listener.receiver.receive_many(limit=10, timeout=0.2)
        sender = client.connect(listener.url).open_sender("t")
        tracker = sender.send(amqscale.Message(id="one", body=b"1"))
        delivery = listener.receiver.receive(timeout=20)
        assert delivery.message.id == "one"
        delivery.accept()
        assert tracker.wait(20).accepted
        with pytest.raises(TimeoutError):
            listener.receiver.receive(timeout=0.2)  # it came once
        sender.send(amqscale.Message(id="two", body=b"2"))
        assert listener.receiver.receive(timeout=20).message.id == "two"


def test_receive_timeout_while_messages_wait_for_credit() -> None:
    """A timeout in the middle of a stream does not lose what was on its way."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=3)
        sender = client.connect(listener.url).open_sender("t", window=20)
        for i in range(20):
            sender.send(amqscale.Message(id=i, body=b"x"))
        got: list[int] = []
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            try:
                delivery = listener.receiver.receive(timeout=0.001)
            except TimeoutError:
                continue
            got.append(delivery.message.id)
            delivery.accept()
        assert sorted(got) == list(range(20))
        sender.flush(timeout=20)
