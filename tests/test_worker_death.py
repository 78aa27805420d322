"""A worker that dies and is not replaced (restart_workers=False): WorkerDied at the
call, nothing lost, the rest keeps going. (Replaced workers: tests/test_reliability.py.)

Workers are killed with SIGKILL (SIGSTOP first where a test needs messages to be held by
a worker that will never write them). The peers are proton-python (tests/proton_peers.py):
they see what really went out on the wire.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from proton import Message
from proton_peers import Sink, Source, wait_for
from support import wait_gone

import amqscale


def _id(message: Message) -> int:
    return int(message.id)  # type: ignore[arg-type]


def _ids(sink: Sink) -> list[int]:
    return [_id(m) for m in list(sink.messages)]


def test_worker_died_lists_every_unsettled_message_for_a_resend() -> None:
    """300 messages reach a peer that settles only ids below 100; the worker is killed.
    Sender.unsettled lists exactly the other 200; resent through a new Container, every
    id arrives exactly once."""
    with Sink(credit=10_000, accept=lambda m: _id(m) < 100) as first, \
            Sink(credit=10_000, accept=True) as second:
        container = amqscale.Container(workers=1, restart_workers=False)
        try:
            pid = container.worker_pids()[0]
            sender = container.connect(first.url).open_sender("replay", window=1000)
            trackers = sender.send_many(
                [amqscale.Message(id=i, body=f"m{i}".encode()) for i in range(300)])
            wait_for(lambda: len(first.messages) == 300, 20, "300 messages at the peer")
            for i in range(100):
                assert trackers[i].wait(20).accepted
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(amqscale.WorkerDied, match="worker 0"):
                sender.flush(timeout=20)
            unsettled = sender.unsettled
            assert len(unsettled) == 200
            assert all(not t.settled and t.payload for t in unsettled)
            resend = [amqscale.Message.decode(t.payload) for t in unsettled]  # type: ignore
            assert sorted(m.id for m in resend) == list(range(100, 300))
        finally:
            container.close()
        with amqscale.Container(workers=1, restart_workers=False) as again:
            sender = again.connect(second.url).open_sender("replay")
            assert sender.send_many(resend).wait(timeout=20).accepted
            wait_for(lambda: len(second.messages) == 200, 20, "the resent messages")
        assert sorted(_ids(second)) == list(range(100, 300))  # each exactly once
        assert sorted(_ids(first)) == list(range(300))


def test_worker_dying_with_its_command_ring_full_raises_worker_died() -> None:
    """A stopped worker's command ring fills and send() blocks on it; when the worker is
    killed the blocked call raises WorkerDied (today: the ring's internal PeerDied)."""
    with Sink(credit=1_000_000, accept=True) as sink:
        container = amqscale.Container(workers=1, ring_capacity=64 * 1024,
                                       restart_workers=False)
        try:
            pid = container.worker_pids()[0]
            sender = container.connect(sink.url).open_sender("full", window=1_000_000)
            os.kill(pid, signal.SIGSTOP)
            killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
            killer.start()
            body = b"f" * 100  # 128 a batch stays within a 32 KB record
            deadline = time.monotonic() + 20
            with pytest.raises(amqscale.WorkerDied):
                while time.monotonic() < deadline:
                    sender.send(body, timeout=10)
            killer.join()
            with pytest.raises(amqscale.WorkerDied):
                sender.send(body, timeout=10)  # and again: it stays dead
        finally:
            pids = container.worker_pids()
            container.close()
        assert wait_gone(pids) == []


def test_one_failed_shard_does_not_stop_the_others() -> None:
    """Two shards on two workers; worker 0 is stopped with messages queued for it, then
    killed. Sends go on over shard 1, flush reports WorkerDied, and the messages worker 0
    never wrote stay listed on Sender.unsettled: nothing lost, nothing sent twice."""
    with Sink(credit=100_000, accept=True) as sink, \
            amqscale.Container(workers=2, restart_workers=False) as container:
        pid0 = container.worker_pids()[0]
        sender = container.connect(sink.url, shards=2).open_sender("shards", window=1000)
        assert sender.send_many(
            [amqscale.Message(id=i, body=b"w") for i in range(10)]).wait(20).accepted
        os.kill(pid0, signal.SIGSTOP)
        trackers = {i: sender.send(amqscale.Message(id=i, body=b"s"), timeout=10)
                    for i in range(10, 210)}
        os.kill(pid0, signal.SIGKILL)
        assert wait_gone([pid0]) == []
        # worker_stats() returns once the container noticed (only worker 1 answers):
        # until then a send may still join a batch waiting for worker 0 (kept, like the
        # ones before it, on Sender.unsettled).
        assert [s["index"] for s in container.worker_stats()] == [1]
        # Sends continue on the live shard.
        for i in range(210, 310):
            trackers[i] = sender.send(amqscale.Message(id=i, body=b"a"), timeout=10)
        with pytest.raises(amqscale.WorkerDied, match="worker 0"):
            sender.flush(timeout=20)
        for i in range(210, 310):
            assert trackers[i].wait(20).accepted
        lost = {amqscale.Message.decode(t.payload).id  # type: ignore[arg-type]
                for t in sender.unsettled}
        assert lost, "worker 0 held no messages: the test did not test"
        assert lost == {i for i, t in trackers.items() if not t.settled}
        wait_for(lambda: len(sink.messages) == 310 - len(lost), 20, "the live shard's")
        got = _ids(sink)
        assert len(got) == len(set(got))
        assert set(got) | lost == set(range(310)) and not set(got) & lost
        # And later sends still go.
        assert sender.send(b"later", timeout=10).wait(20).accepted


@pytest.mark.parametrize("how", ["worker-killed", "peer-gone"])
def test_accept_on_a_delivery_whose_link_failed_raises(how: str) -> None:
    """The delivery cannot be settled any more: accept() says so (today it pretends)."""
    source = Source(1).start()
    try:
        with amqscale.Container(workers=1, restart_workers=False) as container:
            receiver = container.connect(source.url, reconnect=False).open_receiver(
                "src", credit=1)
            delivery = receiver.receive(timeout=20)
            if how == "worker-killed":
                os.kill(container.worker_pids()[0], signal.SIGKILL)
                expected: tuple[type[Exception], ...] = (amqscale.WorkerDied,)
            else:
                source.stop()
                expected = (amqscale.LinkDetached, amqscale.ConnectionFailed)
            with pytest.raises(expected):
                receiver.receive(timeout=20)
            with pytest.raises(expected):
                delivery.accept()
            with pytest.raises(expected):
                delivery.release()
    finally:
        source.stop()
    assert source.outcomes == {}


def test_connect_after_a_worker_died_uses_live_workers() -> None:
    with Sink(credit=1000, accept=True) as sink, \
            amqscale.Container(workers=2, restart_workers=False) as container:
        pid0 = container.worker_pids()[0]
        os.kill(pid0, signal.SIGKILL)
        assert wait_gone([pid0]) == []
        conn = container.connect(sink.url, shards=2, timeout=10)
        sender = conn.open_sender("after", timeout=10)
        assert sender.send_many([b"1", b"2", b"3", b"4"]).wait(20).accepted
        stats = container.worker_stats(timeout=10)
        assert [s["index"] for s in stats] == [1]
        assert stats[0]["connections"] == 2


def test_listener_receiver_reports_its_dead_worker() -> None:
    """A listener whose only worker died: receive() raises WorkerDied, it does not sit
    out its timeout as if nothing could come."""
    with amqscale.Container(workers=1, restart_workers=False) as server:
        listener = server.listen("amqp://127.0.0.1:0")
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(amqscale.WorkerDied):
            listener.receiver.receive(timeout=15)  # not TimeoutError
