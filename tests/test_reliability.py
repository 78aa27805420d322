"""Reconnect, failover, heartbeats and worker restarts, end to end against real peers.

Short versions of the fault runs (perf/faults.py runs the long ones): every message sent
at-least-once arrives (0 lost), duplicates stay within what was in doubt and are counted
(`Sender.resent`), and every process and segment goes away afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import amqscale
from amqscale import aio
from amqscale.testing import FaultProxy, ProtonCBroker, RabbitMQ, free_port
from amqscale.testing.faults import Tally, count_into, wait_until
from tests.support import shm_segments, wait_gone

WINDOW = 200


@pytest.fixture
def sink() -> Iterator[tuple[amqscale.Listener, Tally]]:
    """A listener in a Container of its own whose receiver tallies message bodies."""
    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0")
        tally = Tally()
        thread = threading.Thread(target=count_into, args=(listener.receiver, tally),
                                  daemon=True)
        thread.start()
        yield listener, tally
        tally.stop = True
        thread.join(5)


def _send_numbered(sender: amqscale.Sender, count: int,
                   fault: Callable[[int], None] = lambda i: None,
                   durable: bool = False) -> None:
    for i in range(count):
        body = str(i).encode()
        sender.send(amqscale.Message(body=body, durable=True) if durable else body,
                    timeout=60)
        fault(i)
    sender.flush(timeout=120)


def test_dropped_reset_stalled_and_cut_connections_lose_nothing(sink: tuple) -> None:
    listener, tally = sink
    count = 30_000
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(proxy.url, idle_timeout=2)
        sender = conn.open_sender("q", window=WINDOW)
        faults = {3000: proxy.drop, 9000: proxy.reset, 15000: lambda: proxy.cut_after(1000),
                  21000: lambda: proxy.cut_after(37, "downstream")}
        _send_numbered(sender, count, lambda i: faults[i]() if i in faults else None)
        assert wait_until(lambda: tally.unique >= count, 60), tally.summary(count)
        assert tally.missing(count) == []
        assert conn.reconnects == 4 and conn.state == "open"
        assert tally.duplicates <= sender.resent <= 4 * WINDOW
        assert isinstance(conn.last_error, amqscale.ConnectionFailed)


def test_large_messages_in_parts_across_drops_arrive_whole(sink: tuple) -> None:
    listener, tally = sink
    count, size = 12, 3 << 20  # each crosses the ring in several parts
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(proxy.url)
        sender = conn.open_sender("q", window=4)
        trackers = []
        for i in range(count):
            trackers.append(sender.send(str(i).encode().ljust(size), timeout=60))
            if i in (3, 7):
                proxy.cut_after(size // 2)  # in the middle of a message
        sender.flush(timeout=120)
        assert all(t.accepted for t in trackers)
        assert wait_until(lambda: tally.unique >= count, 60), tally.summary(count)
        assert conn.reconnects == 2


def test_random_faults_at_random_moments_lose_nothing(sink: tuple) -> None:
    """Sends in rounds until the chaos has broken a connection at least once (a fast
    machine sends a fixed count before the first fault is due), at most 400,000."""
    listener, tally = sink
    count, round_size = 0, 20_000
    with amqscale.Container(workers=2) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(proxy.url, shards=2, idle_timeout=2,
                              reconnect=amqscale.Backoff(max_delay=0.5))
        sender = conn.open_sender("q", window=WINDOW)
        proxy.random_faults(seed=11, rate_per_s=4)
        while count < 20 * round_size and (count == 0 or conn.reconnects == 0):
            for i in range(count, count + round_size):
                sender.send(str(i).encode(), timeout=60)
            count += round_size
        sender.flush(timeout=120)
        proxy.stop_random()
        assert wait_until(lambda: tally.unique >= count, 60), tally.summary(count)
        assert tally.missing(count) == []
        assert conn.reconnects >= 1
        assert tally.duplicates <= sender.resent


def test_a_stalled_peer_is_detected_by_the_idle_timeout(sink: tuple) -> None:
    listener, tally = sink
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(proxy.url, idle_timeout=1)
        sender = conn.open_sender("q", window=WINDOW)
        sender.send(b"before").wait(timeout=10)
        proxy.stall()
        assert wait_until(lambda: conn.reconnects >= 1 or conn.state == "reconnecting", 30)
        proxy.resume()
        assert sender.send(b"after").wait(timeout=30).accepted
        assert conn.state == "open"
        assert "idle" in str(conn.last_error)


def test_without_reconnect_a_drop_fails_the_connection(sink: tuple) -> None:
    listener, _ = sink
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(proxy.url, reconnect=False)
        sender = conn.open_sender("q")
        sender.send(b"x").wait(timeout=10)
        proxy.drop()
        assert wait_until(lambda: conn.state == "failed", 30)
        with pytest.raises(amqscale.LinkDetached):
            sender.send(b"y", timeout=10)
        assert proxy.stats["accepted"] == 1


def test_failover_to_the_next_url_on_open_and_after_a_loss(sink: tuple) -> None:
    listener, tally = sink
    refused = f"amqp://127.0.0.1:{free_port()}"
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        conn = client.connect(refused, urls=[proxy.url])
        assert conn.url_in_use[0].port == proxy.port
        sender = conn.open_sender("q")
        sender.send(b"1").wait(timeout=10)
        proxy.drop()  # the next round starts at the refused URL, then comes back here
        assert sender.send(b"2").wait(timeout=30).accepted
        assert conn.reconnects == 1
    assert wait_until(lambda: tally.unique >= 2, 10)


def test_every_url_down_ends_with_a_clear_error_after_the_deadline(sink: tuple) -> None:
    listener, _ = sink
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
        other = f"amqp://127.0.0.1:{free_port()}"
        conn = client.connect(proxy.url, urls=[other],
                              reconnect=amqscale.Backoff(initial=0.05, deadline=1.0))
        sender = conn.open_sender("q")
        proxy.refuse(True)
        proxy.drop()
        assert wait_until(lambda: conn.state == "failed", 30)
        with pytest.raises(amqscale.LinkDetached, match="gave up reconnecting to") as info:
            sender.send(b"x", timeout=10)
        assert other in str(info.value) and "rounds in" in str(info.value)


def test_a_wrong_password_is_not_retried(rabbitmq: RabbitMQ) -> None:
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", rabbitmq.port)) as proxy:
        with pytest.raises(amqscale.AuthenticationError):
            client.connect(proxy.url, user="guest", password="wrong",
                           sasl_mechanisms="PLAIN", allow_insecure_mechanisms=True,
                           urls=[proxy.url.replace("127.0.0.1", "localhost")])
        time.sleep(0.5)
        assert proxy.stats["accepted"] == 1  # neither the list nor a backoff was tried


def test_killed_workers_on_both_sides_lose_nothing(sink: tuple) -> None:
    listener, tally = sink
    count = 40_000
    with amqscale.Container(workers=2) as client:
        conn = client.connect(f"amqp://127.0.0.1:{listener.port}", shards=2)
        sender = conn.open_sender("q", window=WINDOW)
        kills = {5000: 0, 15000: 1, 25000: 0}

        def kill(i: int) -> None:
            if i in kills:
                os.kill(client.worker_pids()[kills[i]], signal.SIGKILL)

        _send_numbered(sender, count, kill)
        assert wait_until(lambda: tally.unique >= count, 60), tally.summary(count)
        assert tally.missing(count) == []
        assert client.worker_restarts == 3
        assert tally.duplicates <= sender.resent <= 3 * 2 * WINDOW
        assert len(set(client.worker_pids())) == 2


def test_the_listening_side_s_worker_dies_and_the_listener_keeps_accepting() -> None:
    count = 10_000
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        port = listener.port
        tally = Tally()
        threading.Thread(target=count_into, args=(listener.receiver, tally),
                         daemon=True).start()
        conn = client.connect(f"amqp://127.0.0.1:{port}")
        sender = conn.open_sender("q", window=WINDOW)
        _send_numbered(sender, count, lambda i: os.kill(server.worker_pids()[0],
                                                        signal.SIGKILL) if i == 3000 else None)
        assert wait_until(lambda: tally.unique >= count, 60), tally.summary(count)
        assert listener.port == port and server.worker_restarts == 1
        tally.stop = True


def test_worker_kills_through_rabbitmq_lose_nothing(rabbitmq: RabbitMQ,
                                                    unique_name: str) -> None:
    count = 20_000
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=2) as client:
        conn = client.connect(rabbitmq.url, shards=2)
        sender = conn.open_sender(address, window=WINDOW)
        _send_numbered(sender, count, lambda i: os.kill(
            client.worker_pids()[i % 2], signal.SIGKILL) if i in (4000, 12000) else None)
        tally = Tally()
        receiver = conn.open_receiver(address, credit=500)
        while tally.unique < count:
            deliveries = receiver.receive_many(timeout=30)
            tally.add(deliveries.bodies)
            deliveries.accept()
        assert tally.missing(count) == []
        assert tally.duplicates <= sender.resent


def test_a_rabbitmq_restart_mid_stream_loses_no_durable_message(rabbitmq: RabbitMQ,
                                                                 unique_name: str) -> None:
    count = 6000
    address = f"/amq/queue/{unique_name}"  # an existing queue: ours is durable
    rabbitmq.declare_queue(unique_name, durable=True)
    with amqscale.Container(workers=1) as client:
        conn = client.connect(rabbitmq.url,
                              reconnect=amqscale.Backoff(max_delay=1, deadline=120))
        sender = conn.open_sender(address, window=WINDOW)

        def restart(i: int) -> None:
            if i == 2000:
                rabbitmq.rabbitmqctl("stop_app")
                rabbitmq.rabbitmqctl("start_app")

        _send_numbered(sender, count, restart, durable=True)
        assert conn.reconnects >= 1
        receiver = conn.open_receiver(address, credit=500)
        tally = Tally()
        while tally.unique < count:
            deliveries = receiver.receive_many(timeout=30)
            tally.add(deliveries.bodies)
            deliveries.accept()
        assert tally.missing(count) == []


def test_sigstop_of_the_broker_is_detected_and_healed_after_sigcont() -> None:
    with ProtonCBroker() as broker, amqscale.Container(workers=1) as client:
        conn = client.connect(broker.url, idle_timeout=1,
                              reconnect=amqscale.Backoff(max_delay=0.5))
        sender = conn.open_sender("q")
        sender.send(b"before").wait(timeout=10)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            assert wait_until(lambda: conn.state == "reconnecting", 30)
            assert "idle" in str(conn.last_error)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert sender.send(b"after").wait(timeout=60).accepted
        assert conn.reconnects >= 1


def test_a_receiving_link_across_a_drop(rabbitmq: RabbitMQ, unique_name: str) -> None:
    count = 2000
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=1) as client, \
            FaultProxy(upstream=("127.0.0.1", rabbitmq.port)) as proxy:
        sender_conn = client.connect(rabbitmq.url)
        _send_numbered(sender_conn.open_sender(address), count)
        conn = client.connect(proxy.url)
        receiver = conn.open_receiver(address, credit=100)
        held = receiver.receive(timeout=30)  # taken, not settled when the link goes
        tally = Tally()
        tally.add([held.body])
        proxy.drop()
        assert wait_until(lambda: conn.reconnects == 1, 30)
        with pytest.raises(amqscale.DeliveryLost):
            held.accept()
        assert receiver.lost >= 1
        while tally.unique < count:
            deliveries = receiver.receive_many(timeout=30)
            tally.add(deliveries.bodies)
            deliveries.accept()
        assert tally.missing(count) == []
        assert rabbitmq.list_queues().get(unique_name) == 0


def test_handlers_see_disconnected_and_opened_again(sink: tuple) -> None:
    from amqscale.handlers import MessagingHandler
    from amqscale.reactor import Container

    listener, tally = sink
    count = 3000
    proxy = FaultProxy(upstream=("127.0.0.1", listener.port)).start()
    seen: list[str] = []

    class Send(MessagingHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0
            self.accepted = 0

        def on_start(self, event: object) -> None:
            event.container.create_sender(event.container.connect(proxy.url), "q")  # type: ignore[attr-defined]

        def on_connection_opened(self, event: object) -> None:
            seen.append("opened")

        def on_disconnected(self, event: object) -> None:
            seen.append("disconnected")

        def on_sendable(self, event: object) -> None:
            sender = event.sender  # type: ignore[attr-defined]
            while sender.credit and self.sent < count:
                sender.send(amqscale.Message(body=str(self.sent).encode()))
                self.sent += 1
                if self.sent == 1000:
                    proxy.drop()

        def on_accepted(self, event: object) -> None:
            self.accepted += 1
            if self.accepted == count:
                event.connection.close()  # type: ignore[attr-defined]

    try:
        handler = Send()
        Container(handler, workers=1).run()
    finally:
        proxy.close()
    assert seen[:3] == ["opened", "disconnected", "opened"]
    assert wait_until(lambda: tally.unique >= count, 30), tally.summary(count)


def test_the_asyncio_face_reconnects_and_resends(sink: tuple) -> None:
    listener, tally = sink
    count = 5000

    async def main() -> tuple[int, int]:
        with FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
            async with aio.Container(workers=1) as client:
                conn = await client.connect(proxy.url)
                sender = await conn.open_sender("q", window=WINDOW)
                for i in range(count):
                    await sender.send(str(i).encode())
                    if i == 2000:
                        proxy.drop()
                await sender.flush(timeout=60)
                return conn.reconnects, sender.resent

    reconnects, resent = asyncio.run(main())
    assert reconnects == 1
    assert wait_until(lambda: tally.unique >= count, 30), tally.summary(count)
    assert tally.duplicates <= resent


def test_connect_disconnect_cycles_leave_fds_and_memory_flat(sink: tuple) -> None:
    listener, _ = sink
    url = f"amqp://127.0.0.1:{listener.port}"
    with amqscale.Container(workers=2) as client:
        processes = [psutil.Process()] + [psutil.Process(p) for p in client.worker_pids()]

        def cycle(times: int) -> None:
            for _ in range(times):
                conn = client.connect(url, shards=2)
                conn.open_sender("q").send(b"x").wait(timeout=10)
                conn.close()

        cycle(100)  # warm up: caches, pools, allocator arenas
        before = [(p.num_fds(), p.memory_info().rss) for p in processes]
        cycle(400)
        after = [(p.num_fds(), p.memory_info().rss) for p in processes]
    for (fds0, rss0), (fds1, rss1) in zip(before, after, strict=True):
        assert fds1 <= fds0 + 2
        assert rss1 - rss0 < 8 << 20


def test_a_slow_consumer_s_memory_is_bounded_by_its_credit(
        proton_c_broker: ProtonCBroker, unique_name: str) -> None:
    # The Proton C broker keeps to the credit it is given; RabbitMQ 3.10's AMQP 1.0
    # plugin sends a little more than the link's credit, which would blur what this
    # checks: that amqscale never grants more than the receiver's credit.
    backlog, credit = 50_000, 200
    with amqscale.Container(workers=1) as client:
        conn = client.connect(proton_c_broker.url)
        sender = conn.open_sender(unique_name, window=2000)
        sender.send_many([b"x" * 100] * backlog)
        sender.flush(timeout=120)
        receiver = conn.open_receiver(unique_name, credit=credit)
        state = receiver._state

        def buffered() -> int:
            return sum(len(a.payloads) for a in state.buffer) - state.position

        most = 0
        for _ in range(2000):
            receiver.receive(timeout=30).accept()
            most = max(most, buffered())
        time.sleep(0.5)  # let the broker push all it may
        client._driver.pump(0)
        assert max(most, buffered()) <= credit
        receiver.close()


KILLED_PARENT = textwrap.dedent("""
    import sys, amqscale
    c = amqscale.Container(workers=2)
    listener = c.listen("amqp://127.0.0.1:0")
    conn = c.connect(f"amqp://127.0.0.1:{listener.port}", shards=2)
    sender = conn.open_sender("q")
    print(" ".join(map(str, c.worker_pids())), flush=True)
    while True:
        sender.send_many([b"x" * 100] * 100)
        for d in listener.receiver.receive_many(timeout=10):
            d.accept()
""")


def test_the_user_s_process_killed_mid_stream_leaves_nothing_behind() -> None:
    segments = shm_segments()
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", KILLED_PARENT],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        pids = [int(x) for x in child.stdout.readline().split()]
        time.sleep(0.2)
        child.kill()
        child.wait()
        assert wait_gone(pids) == []
    assert shm_segments() <= segments


def test_counts_per_kind_are_kept() -> None:
    tally = Tally()
    tally.add([b"1", b"2", b"2", b"4"])
    assert tally.unique == 3 and tally.duplicates == 1
    assert tally.missing(5) == [0, 3]
    assert collections.Counter(tally.seen)[2] == 2


def test_an_in_worker_handler_goes_on_after_its_worker_is_killed(
        rabbitmq: RabbitMQ, unique_name: str) -> None:
    count = 6000
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=2) as client:
        conn = client.connect(rabbitmq.url, shards=2)
        sender = conn.open_sender(address, window=1000)
        sender.send_many([amqscale.Message(id=i, body=b"h") for i in range(count)])
        sender.flush(timeout=120)
        receiver = conn.open_receiver(address, credit=200,
                                      handler="worker_handler_app:Recorder")
        receiver.wait(handled=count // 3, timeout=60)
        os.kill(client.worker_pids()[0], signal.SIGKILL)
        # Every message is settled by a handler: those the dead worker had not settled
        # come again. (Its last counts die with it: the total may fall short of count.)
        assert wait_until(lambda: rabbitmq.list_queues().get(unique_name) == 0, 120)
        assert client.worker_restarts == 1 and receiver.failures == []
        assert receiver.handled > count // 3 and receiver.links == 2


def test_workers_outlive_the_thread_that_started_them() -> None:
    # A worker dies with the thread that started it (PR_SET_PDEATHSIG is per thread):
    # every worker, a replacement too, is started from the supervisor's own thread.
    made: list[amqscale.Container] = []
    starter = threading.Thread(target=lambda: made.append(
        amqscale.Container(workers=1, restart_workers=False)))
    starter.start()
    starter.join()
    with made[0] as container:
        pid = container.worker_pids()[0]
        time.sleep(0.5)  # one killed with its starting thread is gone by now
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        listener = container.listen("amqp://127.0.0.1:0")
        conn = container.connect(f"amqp://127.0.0.1:{listener.port}")
        tracker = conn.open_sender("q").send(b"1")
        listener.receiver.receive(timeout=30).accept()
        assert tracker.wait(timeout=30).accepted
