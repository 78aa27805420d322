"""Lifecycle: closing, use after close, collection, listeners, peers that go away.

The errors a closed object gives (what the tests below hold the rebuild to):
- a closed Container: RuntimeError("... closed") from its own methods;
- a Connection closed (by the user, or by its Container closing): ConnectionFailed;
- a Sender, Receiver (a Listener's included) or Delivery whose link is closed, by the user
  or with its Connection or Container: LinkDetached.
Each message says "closed". None may be a ValueError from the rings, a KeyError or a hang.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from proton_peers import ClientSender, Sink, Source, wait_for
from support import shm_segments, wait_gone

import amqscale
from amqscale.testing.brokers import RabbitMQ

CLOSED = r"(?i)closed"


# ---- use after close --------------------------------------------------------------------

def test_every_call_after_container_close_raises_a_clear_error() -> None:
    server = amqscale.Container(workers=1)
    client = amqscale.Container(workers=1)
    try:
        listener = server.listen("amqp://127.0.0.1:0")
        conn = client.connect(listener.url)
        sender = conn.open_sender("closing")
        assert sender.send(b"first").payload is not None
        delivery = listener.receiver.receive(timeout=20)
        pending = sender.send(b"second")  # never settled: the listener won't take it
        client.close()
        with pytest.raises(RuntimeError, match=CLOSED):
            client.connect(listener.url)
        with pytest.raises(RuntimeError, match=CLOSED):
            client.listen("amqp://127.0.0.1:0")
        with pytest.raises(RuntimeError, match=CLOSED):
            client.worker_stats()
        with pytest.raises(amqscale.ConnectionFailed, match=CLOSED):
            conn.open_sender("again")
        with pytest.raises(amqscale.ConnectionFailed, match=CLOSED):
            conn.open_receiver("again")
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            sender.send(b"after close")  # today: ValueError: Words: released
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            sender.send(b"x" * 1000)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            sender.send_many([b"a", b"b"])
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            sender.flush(timeout=5)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            pending.wait(timeout=5)
        assert len(sender.unsettled) == 2  # still listed, for a resend
        sender.close()  # closing again is allowed
        conn.close()
        client.close()

        server.close()
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            listener.receiver.receive(timeout=5)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            listener.receiver.receive_many(timeout=5)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            delivery.accept()
        assert list(listener.receiver) == []  # iteration ends: the close was clean
        listener.close()
    finally:
        client.close()
        server.close()


def test_every_call_on_a_closed_sender_receiver_connection_or_listener_raises() -> None:
    with Source(100) as source, amqscale.Container(workers=1) as container:
        conn = container.connect(source.url)
        receiver = conn.open_receiver("src", credit=10)
        delivery = receiver.receive(timeout=20)
        receiver.close()
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            receiver.receive(timeout=5)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            receiver.receive_many(timeout=5)
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            delivery.accept()

        listener = container.listen("amqp://127.0.0.1:0")
        other = container.connect(listener.url)
        sender = other.open_sender("x")
        sender.close()
        for call in (lambda: sender.send(b"small"), lambda: sender.send(b"x" * 300),
                     lambda: sender.send_many([b"a"]), lambda: sender.flush(timeout=5)):
            with pytest.raises(amqscale.LinkDetached, match=CLOSED):
                call()
        other.close()
        with pytest.raises(amqscale.ConnectionFailed, match=CLOSED):
            other.open_sender("x")
        listener.close()
        with pytest.raises(amqscale.LinkDetached, match=CLOSED):
            listener.receiver.receive(timeout=5)  # today: waits, then TimeoutError
        with pytest.raises(amqscale.ConnectionFailed):
            container.connect(listener.url, timeout=10)  # nobody listens there now


# ---- collection -------------------------------------------------------------------------

def _abandon() -> tuple[list[int], weakref.ref[amqscale.Container]]:
    container = amqscale.Container(workers=2)
    listener = container.listen("amqp://127.0.0.1:0")
    sender = container.connect(listener.url).open_sender("dropped")
    sender.send(b"one")
    listener.receiver.receive(timeout=20).accept()  # a settlement: the linger thread runs
    sender.flush(timeout=20)
    return container.worker_pids(), weakref.ref(container)


def test_unclosed_container_is_collected_and_stops_its_workers() -> None:
    before = shm_segments()
    pids, ref = _abandon()
    gc.collect()
    assert ref() is None, "the dropped Container is still referenced"
    assert wait_gone(pids) == []
    assert shm_segments() - before == set()


# ---- listeners --------------------------------------------------------------------------

def test_inbound_links_leave_the_listener_when_closed_remotely() -> None:
    with amqscale.Container(workers=2) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        for cycle in range(20):
            conn = client.connect(listener.url)
            sender = conn.open_sender(f"cycle-{cycle}")
            tracker = sender.send(b"c")
            listener.receiver.receive(timeout=20).accept()
            tracker.wait(20)
            if cycle % 2:
                sender.close()  # a detach, then the connection's close
            conn.close()

        def settled() -> bool:
            stats = server.worker_stats(timeout=10)
            return sum(s["connections"] for s in stats) == 0
        wait_for(settled, 10, "the server's connections to end")
        with pytest.raises(TimeoutError):
            listener.receiver.receive(timeout=0.5)  # it pumps the closes in
        # The Listener keeps no link of a closed connection.
        assert listener.links == 0


def test_listen_on_a_port_in_use_fails_at_the_call() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with amqscale.Container(workers=2) as container:
            with pytest.raises(amqscale.ConnectionFailed, match=str(port)) as info:
                container.listen(f"amqp://127.0.0.1:{port}", timeout=10)
            assert "in use" in str(info.value).lower() or "EADDRINUSE" in str(info.value)
            assert container.listen("amqp://127.0.0.1:0", timeout=10).port  # still good


@pytest.mark.parametrize("url, error", [
    ("amqp://192.0.2.1:0", amqscale.ConnectionFailed),  # TEST-NET: no such local address
    ("amqp://no-such-host.invalid:0", amqscale.ConnectionFailed),
    ("http://127.0.0.1:0", amqscale.URLError),
    ("127.0.0.1:0", amqscale.URLError),
])
def test_listen_on_a_bad_host_fails_at_the_call(url: str, error: type[Exception]) -> None:
    with amqscale.Container(workers=1) as container:
        with pytest.raises(error):
            container.listen(url, timeout=10)
        assert container.listen("amqp://127.0.0.1:0", timeout=10).port  # still good


def test_listener_close_releases_what_was_delivered_but_not_taken() -> None:
    """Peer-to-peer: the listener got 10 (its credit), the user took 3; closing it
    releases the 7 others, and the sender's Trackers say so."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=10)
        sender = client.connect(listener.url).open_sender("prefetch", window=10)
        trackers = sender.send_many([amqscale.Message(id=i, body=b"p") for i in range(10)])
        taken = [listener.receiver.receive(timeout=20) for _ in range(3)]
        for delivery in taken:
            delivery.accept()
        listener.close()
        trackers.wait(timeout=10)
        counts = trackers.counts()
        assert counts == {"accepted": 3, "released": 7}


def test_late_attach_after_listener_close_does_not_break_other_calls() -> None:
    """A peer attaches a link on a connection accepted before Listener.close(): the
    server's other calls (here a Sender's flush) go on, no KeyError from inside them."""
    with Sink(accept=True) as sink, amqscale.Container(workers=1) as server, \
            amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        conn = client.connect(listener.url)
        outbound = server.connect(sink.url).open_sender("elsewhere")
        listener.close()
        with contextlib.suppress(amqscale.LinkDetached, TimeoutError):
            conn.open_sender("late", timeout=3)
        for _ in range(3):
            outbound.send(b"still going")
            outbound.flush(timeout=10)  # today: KeyError from the listener table
        assert outbound.send(b"done").wait(10).accepted


# ---- receivers --------------------------------------------------------------------------

def test_receiver_close_waits_for_the_detach_and_releases_prefetched() -> None:
    """credit 10 from a proton source: 10 come, the user takes 3. When close() returns,
    the source has seen the detach and the 7 untaken came back released."""
    with Source(20) as source, amqscale.Container(workers=1) as container:
        receiver = container.connect(source.url).open_receiver("src", credit=10)
        wait_for(lambda: source.sent == 10, 20, "10 messages prefetched")
        for _ in range(3):
            receiver.receive(timeout=20).accept()
        receiver.close()
        assert source.link_closed  # close() waited for the detach
        assert sorted(source.outcomes.items()) == (
            [(i, "accepted") for i in range(3)] + [(i, "released") for i in range(3, 10)])


def test_receiver_close_gives_prefetched_back_to_rabbitmq(rabbitmq: RabbitMQ,
                                                          unique_name: str) -> None:
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=1) as container:
        conn = container.connect(rabbitmq.url)
        sender = conn.open_sender(address)
        sender.send_many([amqscale.Message(id=i, body=b"q") for i in range(20)])
        sender.flush(timeout=20)
        first = conn.open_receiver(address, credit=10)
        taken = [first.receive(timeout=20) for _ in range(3)]
        for delivery in taken:
            delivery.accept()
        first.close()
        second = conn.open_receiver(address, credit=100)
        ids: list[object] = []
        while len(ids) < 17:
            delivery = second.receive(timeout=20)
            ids.append(delivery.message.id)
            delivery.accept()
        assert sorted(int(i) for i in ids) == list(range(3, 20))  # type: ignore[call-overload]
        with pytest.raises(TimeoutError):
            second.receive(timeout=1)


@pytest.mark.parametrize("close_with, raises", [("", False),
                                               ("amqp:resource-deleted", True)])
def test_receiver_iteration_ends_on_a_clean_close_raises_on_an_error(
        close_with: str, raises: bool) -> None:
    with Source(5, close_with=close_with) as source, \
            amqscale.Container(workers=1) as container:
        receiver = container.connect(source.url).open_receiver("src", credit=10)
        got = []

        def consume() -> None:
            for delivery in receiver:
                got.append(delivery.message.id)
                delivery.accept()
        if raises:
            with pytest.raises(amqscale.LinkDetached, match=close_with) as info:
                consume()
            assert info.value.condition == close_with
        else:
            consume()
        assert got == list(range(5))


# ---- peers that go away -----------------------------------------------------------------

def test_peer_process_killed_with_messages_in_flight() -> None:
    """A proton-python peer in its own process takes 50 messages, settles none, and is
    killed: without reconnect, flush raises (not TimeoutError) and the 50 stay on
    Sender.unsettled."""
    from amqscale.testing._process import free_port

    port = free_port()
    peer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("proton_peers.py")), "sink",
         str(port)], stdout=subprocess.PIPE, text=True, env={
            **os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert peer.stdout is not None
        assert peer.stdout.readline().strip() == "ready"
        with amqscale.Container(workers=1) as container:
            sender = container.connect(f"amqp://127.0.0.1:{port}",
                                       reconnect=False).open_sender("lost")
            sender.send_many([amqscale.Message(id=i, body=b"l") for i in range(50)])
            while peer.stdout.readline().strip() != "50":
                pass
            os.kill(peer.pid, signal.SIGKILL)
            peer.wait(10)
            with pytest.raises((amqscale.ConnectionFailed, amqscale.LinkDetached)):
                sender.flush(timeout=20)
            unsettled = sender.unsettled
            assert len(unsettled) == 50
            assert sorted(amqscale.Message.decode(t.payload).id  # type: ignore[arg-type]
                          for t in unsettled) == list(range(50))
            with pytest.raises((amqscale.ConnectionFailed, amqscale.LinkDetached)):
                sender.send(b"after", timeout=10)
    finally:
        peer.kill()
        peer.wait(10)


def test_listening_container_closed_with_messages_in_flight() -> None:
    server = amqscale.Container(workers=1)
    try:
        listener = server.listen("amqp://127.0.0.1:0", credit=100)
        with amqscale.Container(workers=1) as client:
            sender = client.connect(listener.url).open_sender("gone")
            sender.send_many([amqscale.Message(id=i, body=b"g") for i in range(30)])
            listener.receiver.receive(timeout=20)  # they arrived; none is settled
            server_pids = server.worker_pids()
            server.close()
            assert wait_gone(server_pids) == []
            with pytest.raises((amqscale.ConnectionFailed, amqscale.LinkDetached)):
                sender.flush(timeout=20)
            assert len(sender.unsettled) == 30
    finally:
        server.close()


def test_proton_client_disconnecting_mid_stream_leaves_the_listener_working() -> None:
    with amqscale.Container(workers=2) as server:
        listener = server.listen("amqp://127.0.0.1:0", credit=10)
        peer = ClientSender(listener.url, "mid", 1000).start()
        wait_for(lambda: peer.sent >= 10, 20, "the first messages")
        peer.stop()  # closes its connection with 10 unsettled at us
        with contextlib.suppress(TimeoutError):  # what came before it left
            while True:
                with contextlib.suppress(amqscale.LinkDetached):
                    listener.receiver.receive(timeout=2).accept()
        again = ClientSender(listener.url, "mid", 5).start()
        for _ in range(5):
            listener.receiver.receive(timeout=20).accept()
        wait_for(lambda: len(again.outcomes) == 5, 20, "the second peer's outcomes")
        again.stop()


def test_a_sender_keeps_its_container_alive() -> None:
    """Only the Sender is kept: its Container must not be collected under it."""
    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = amqscale.Container(workers=1).connect(listener.url).open_sender("kept")
        gc.collect()
        tracker = sender.send(b"still here")
        listener.receiver.receive(timeout=20).accept()
        assert tracker.wait(20).accepted
        sender.close()
