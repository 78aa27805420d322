"""The asyncio face against real worker processes and real peers: outcomes, backpressure,
cancellation, timeouts, failures, large messages, asyncio's own loop and uvloop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop
from proton_peers import Source

import amqscale
import amqscale.aio as aio
from amqscale.testing import ProtonCBroker, RabbitMQ

T = TypeVar("T")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(main: Callable[[], Awaitable[T]], loop: str = "asyncio") -> T:
    """Run `main()` on a fresh loop of the given kind, bounded so a hang fails the test."""
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 120)

    event_loop = LOOPS[loop]()
    try:
        return event_loop.run_until_complete(bounded())
    finally:
        event_loop.close()


class Pair:
    """An amqscale listener (server) and a client connection to it, one worker each."""

    server: aio.Container
    client: aio.Container
    listener: aio.Listener
    connection: aio.Connection


async def _pair(restart_workers: bool = True) -> AsyncIterator[Pair]:
    pair = Pair()
    async with aio.Container(workers=1) as pair.server, aio.Container(
            workers=1, restart_workers=restart_workers) as pair.client:
        pair.listener = await pair.server.listen("amqp://127.0.0.1:0")
        pair.connection = await pair.client.connect(pair.listener.url)
        yield pair


async def _consume(receiver: aio.Receiver, count: int,
                   settle: Callable[[aio.Delivery], None] = aio.Delivery.accept
                   ) -> list[Any]:
    bodies = []
    async for delivery in receiver:
        bodies.append(delivery.body)
        settle(delivery)
        if len(bodies) == count:
            break
    return bodies


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_send_returns_with_the_outcome_on_either_loop(loop: str) -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            consumer = asyncio.create_task(_consume(pair.listener.receiver, 3))
            trackers = [await sender.send(b"m%d" % i) for i in range(3)]
            assert [t.outcome for t in trackers] == ["accepted"] * 3
            assert await consumer == [b"m0", b"m1", b"m2"]

    run(main, loop)


def test_each_outcome_is_reported_and_raises_only_when_asked() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            receiver = pair.listener.receiver

            async def settle_each(receiver: aio.Receiver) -> None:
                for settle in ("accept", "reject", "release", "modify", "reject"):
                    delivery = await receiver.receive(timeout=30)
                    if settle == "reject":
                        delivery.reject("amqp:precondition-failed", "no thanks")
                    else:
                        getattr(delivery, settle)()

            settler = asyncio.create_task(settle_each(receiver))
            outcomes = [(await sender.send(b"x")).outcome for _ in range(4)]
            assert outcomes == ["accepted", "rejected", "released", "modified"]
            with pytest.raises(amqscale.SendFailed, match="rejected.*no thanks") as failed:
                await sender.send(b"x", check=True)
            assert failed.value.outcome == "rejected"
            assert failed.value.condition == "amqp:precondition-failed"
            await settler

    run(main)


def test_backpressure_send_waits_for_room_and_nowait_refuses() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q", window=2)
            first, second = sender.put_nowait(b"a"), sender.put_nowait(b"b")
            with pytest.raises(amqscale.WindowFull):
                sender.put_nowait(b"c")
            with pytest.raises(TimeoutError, match="room in the window"):
                await sender.send(b"c", timeout=0.2)
            assert len(sender.unsettled) == 2  # c was not taken
            consumer = asyncio.create_task(_consume(pair.listener.receiver, 3))
            third = await sender.put(b"c", timeout=30)
            assert not third.settled
            await third
            assert (await first).accepted and (await second).accepted and third.accepted
            assert await consumer == [b"a", b"b", b"c"]

    run(main)


def test_cancelling_a_send_ends_only_the_wait() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            task = asyncio.create_task(sender.send(b"in flight"))
            delivery = await pair.listener.receiver.receive(timeout=30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            [tracker] = sender.unsettled  # still in flight, still tracked
            delivery.accept()
            assert (await tracker.wait(30)).accepted
            assert sender.counts == {0x24: 1}

    run(main)


def test_cancelling_an_async_for_loses_nothing() -> None:
    async def main() -> None:
        async for pair in _pair():
            receiver = pair.listener.receiver
            sender = await pair.connection.open_sender("q")
            consumer = asyncio.create_task(_consume(receiver, 10))
            await asyncio.sleep(0.05)
            consumer.cancel()  # waiting for the first message: it takes none
            with pytest.raises(asyncio.CancelledError):
                await consumer
            trackers = await sender.send_many([b"m%d" % i for i in range(5)])
            assert await _consume(receiver, 5) == [b"m%d" % i for i in range(5)]
            assert (await trackers.wait(30)).accepted

    run(main)


def test_a_batch_cancelled_while_waiting_for_room_leaves_the_core_consistent() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q", window=10)
            task = asyncio.create_task(sender.send_many([b"m%d" % i for i in range(25)]))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len(sender.unsettled) == 10  # the first window went; the rest did not
            bodies = await _consume(pair.listener.receiver, 10)
            assert bodies == [b"m%d" % i for i in range(10)]
            await sender.flush(timeout=30)
            assert sender.counts == {0x24: 10}
            consumer = asyncio.create_task(_consume(pair.listener.receiver, 1))
            tracker = await sender.send(b"after", timeout=30)  # the link still works
            assert tracker.seq == 10 and await consumer == [b"after"]

    run(main)


def test_receive_times_out_and_a_large_message_crosses_in_parts() -> None:
    async def main() -> None:
        async for pair in _pair():
            receiver = pair.listener.receiver
            with pytest.raises(TimeoutError, match="a message from"):
                await receiver.receive(timeout=0.1)
            sender = await pair.connection.open_sender("big")
            body = os.urandom(3 * 1024 * 1024)  # larger than a ring record: parts
            consumer = asyncio.create_task(receiver.receive(timeout=60))
            sending = asyncio.create_task(sender.send(body, timeout=60))
            delivery = await consumer
            assert delivery.body == body
            delivery.accept()
            assert (await sending).accepted
            with pytest.raises(amqscale.MessageTooLarge, match="await send"):
                sender.put_nowait(body)

    run(main)


def test_aclose_waits_for_outstanding_outcomes() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            trackers = await sender.send_many([b"x"] * 100)
            consumer = asyncio.create_task(_consume(pair.listener.receiver, 100))
            await sender.aclose(timeout=30)
            assert trackers.settled and trackers.accepted
            assert sender.closed
            with pytest.raises(amqscale.LinkDetached):
                await sender.send(b"late")
            await consumer

    run(main)


def test_a_refused_address_and_a_dead_worker_raise_their_errors() -> None:
    async def main() -> None:
        async with aio.Container(workers=1) as client:
            with pytest.raises(amqscale.ConnectionFailed, match="cannot connect"):
                await client.connect(f"amqp://127.0.0.1:{amqscale.testing.free_port()}")
            async for pair in _pair(restart_workers=False):
                sender = await pair.connection.open_sender("q")
                waiting = asyncio.create_task(sender.send(b"never settled"))
                await pair.listener.receiver.receive(timeout=30)
                os.kill(pair.client.worker_pids()[0], signal.SIGKILL)
                with pytest.raises(amqscale.WorkerDied):
                    await waiting
                assert len(sender.unsettled) == 1  # kept, with its payload
                with pytest.raises((amqscale.WorkerDied, amqscale.ConnectionFailed)):
                    await pair.client.connect(pair.listener.url)

    run(main)


def test_a_send_awaited_across_a_worker_restart_settles_once_accepted() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            waiting = asyncio.create_task(sender.send(b"sent twice"))
            first = await pair.listener.receiver.receive(timeout=30)  # not settled
            os.kill(pair.client.worker_pids()[0], signal.SIGKILL)
            again = await pair.listener.receiver.receive(timeout=30)
            assert again.body == first.body == b"sent twice"
            again.accept()
            tracker = await asyncio.wait_for(waiting, 30)
            assert tracker.accepted and sender.resent == 1
            assert pair.client.worker_restarts == 1
            assert pair.connection.reconnects == 1

    run(main)


def test_worker_stats_answers_on_a_quiet_loop() -> None:
    async def main() -> None:
        async with aio.Container(workers=2) as container:
            stats = await container.worker_stats(timeout=10)
            assert [s["index"] for s in stats] == [0, 1]
            assert [s["pid"] for s in stats] == container.worker_pids()

    run(main)


def test_a_worker_that_is_behind_never_blocks_the_loop() -> None:
    """The client's worker is stopped while a batch larger than its command ring goes:
    the loop must go on running other tasks (here, the one that resumes the worker)
    while the ring is full; what did not fit is written once the worker frees room."""
    count = 3000
    state = {"stopped": False, "ran_while_stopped": False}

    def resume(pid: int) -> None:
        if state["stopped"]:
            state["stopped"] = False
            os.kill(pid, signal.SIGCONT)

    async def main() -> None:
        async with aio.Container(workers=1) as server, \
                aio.Container(workers=1, ring_capacity=64 * 1024) as client:
            listener = await server.listen("amqp://127.0.0.1:0")
            connection = await client.connect(listener.url)
            sender = await connection.open_sender("behind", window=count)
            pid = client.worker_pids()[0]
            os.kill(pid, signal.SIGSTOP)
            state["stopped"] = True
            # Should the loop block, a thread resumes the worker after a while: the task
            # below then runs too late and says so.
            timer = threading.Timer(10.0, resume, (pid,))
            timer.start()

            async def resume_soon() -> None:
                await asyncio.sleep(0.3)
                state["ran_while_stopped"] = state["stopped"]
                resume(pid)

            resumer = asyncio.create_task(resume_soon())
            consumer = asyncio.create_task(_consume(listener.receiver, count))
            try:
                trackers = await sender.send_many([b"x" * 100] * count)
                await trackers.wait(60)  # the ring fills here while the worker is stopped
                await resumer
            finally:
                timer.cancel()
                resume(pid)
            assert trackers.accepted
            assert len(await consumer) == count
            (stats,) = await client.worker_stats()
            assert stats["sent"] == count

    run(main)
    assert state["ran_while_stopped"]


def test_closing_the_container_fails_every_pending_wait() -> None:
    async def main() -> None:
        container = aio.Container(workers=1)
        with pytest.raises(amqscale.ContainerClosed, match="not started"):
            await container.connect("amqp://127.0.0.1:5672")
        async with container:
            listener = await container.listen("amqp://127.0.0.1:0")
            waiting = asyncio.create_task(listener.receiver.receive())
            await asyncio.sleep(0.05)
            await container.aclose()
            with pytest.raises(amqscale.ContainerClosed):
                await waiting
            with pytest.raises(amqscale.ContainerClosed):
                await container.listen("amqp://127.0.0.1:0")

    run(main)


def test_bad_arguments_raise_at_the_call() -> None:
    async def main() -> None:
        async for pair in _pair():
            with pytest.raises(ValueError, match="window"):
                await pair.connection.open_sender("q", window=0)
            with pytest.raises(ValueError, match="credit"):
                await pair.connection.open_receiver("q", credit=-1)
            with pytest.raises(ValueError, match="limit"):
                await pair.listener.receiver.receive_many(limit=0)
            sender = await pair.connection.open_sender("q")
            with pytest.raises(TypeError, match="Message or bytes"):
                await sender.send(42)  # type: ignore[arg-type]
            assert not sender.unsettled

    run(main)


def test_through_rabbitmq_with_shards(rabbitmq: RabbitMQ, unique_name: str) -> None:
    count = 2000

    async def main() -> None:
        async with aio.Container(workers=2) as container:
            connection = await container.connect(rabbitmq.url, shards=2)
            address = f"/queue/{unique_name}"
            receiver = await connection.open_receiver(address, credit=200)
            sender = await connection.open_sender(address)
            trackers = await sender.send_many(
                [amqscale.Message(id=i, body=b"x") for i in range(count)])
            ids: set[int] = set()
            while len(ids) < count:
                deliveries = await receiver.receive_many(timeout=30)
                ids.update(m.id for m in deliveries.messages)
                deliveries.accept()
            assert (await trackers.wait(60)).accepted
            assert ids == set(range(count))
            await receiver.aclose()
            await connection.aclose()

    run(main)


def test_through_the_proton_c_broker(proton_c_broker: ProtonCBroker, unique_name: str) -> None:
    async def main() -> None:
        async with aio.Container(workers=1) as container, \
                await container.connect(proton_c_broker.url) as connection:
            sender = await connection.open_sender(unique_name)
            trackers = [sender.put_nowait(amqscale.Message(body={"n": i}))
                        for i in range(50)]
            receiver = await connection.open_receiver(unique_name)
            bodies = [(await receiver.receive(timeout=30)) for _ in range(50)]
            for delivery in bodies:
                delivery.accept()
            assert [d.body for d in bodies] == [{"n": i} for i in range(50)]
            for tracker in trackers:
                assert (await tracker.wait(30)).accepted

    run(main)


def test_small_messages_put_while_a_large_one_goes_keep_their_order() -> None:
    async def main() -> None:
        async for pair in _pair():
            sender = await pair.connection.open_sender("q")
            large = os.urandom(5 * 1024 * 1024)
            consumer = asyncio.create_task(_consume(pair.listener.receiver, 4))
            sending = asyncio.create_task(sender.send(large))
            await asyncio.sleep(0)  # the large one has started: its first parts are out
            smalls = [sender.put_nowait(b"s%d" % i) for i in range(3)]
            bodies = await consumer
            assert bodies[0] == large and bodies[1:] == [b"s0", b"s1", b"s2"]
            assert (await sending).accepted
            for tracker in smalls:
                assert (await tracker).accepted

    run(main)


def test_a_refused_address_and_a_peer_detaching_with_an_error(rabbitmq: RabbitMQ,
                                                            unique_name: str) -> None:
    async def main() -> None:
        async with aio.Container(workers=1) as container:
            connection = await container.connect(rabbitmq.url)
            with pytest.raises(amqscale.LinkDetached, match="amqp:not-found") as refused:
                await connection.open_receiver(f"/amq/queue/{unique_name}-missing",
                                               timeout=30)
            assert refused.value.condition == "amqp:not-found"
            sender = await connection.open_sender(f"/queue/{unique_name}")
            assert (await sender.send(b"the connection still works", timeout=30)).accepted
            with Source(3, close_with="amqp:resource-deleted") as peer:
                receiver = await (await container.connect(peer.url)).open_receiver("src")
                seen = []
                with pytest.raises(amqscale.LinkDetached,
                                   match="amqp:resource-deleted") as detached:
                    async for delivery in receiver:
                        seen.append(delivery.message.id)
                        delivery.accept()
                assert seen == [0, 1, 2]
                assert detached.value.condition == "amqp:resource-deleted"

    run(main)


def test_tls_and_sasl_on_the_asyncio_face(tmp_path: Any) -> None:
    from amqscale.testing.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    users = {"alice": "alice-pw"}

    async def main() -> None:
        async with aio.Container(workers=1) as server, aio.Container(workers=1) as client:
            listener = await server.listen(
                "amqps://127.0.0.1:0", tls=amqscale.TLS(cert=pki.server.cert,
                                                        key=pki.server.key),
                sasl=amqscale.ServerSASL(users=users))
            assert listener.url.startswith("amqps://")
            connection = await client.connect(listener.url, tls=amqscale.TLS(ca=pki.ca),
                                              user="alice", password=users["alice"])
            assert connection.security.tls_protocol == "TLSv1.3"
            assert connection.security.sasl_mechanism == "SCRAM-SHA-512"
            sender = await connection.open_sender("secured")
            consumer = asyncio.create_task(_consume(listener.receiver, 1))
            assert (await sender.send(b"over tls")).accepted
            assert await consumer == [b"over tls"]
            with pytest.raises(amqscale.AuthenticationError) as refused:
                await client.connect(listener.url, tls=amqscale.TLS(ca=pki.ca),
                                     user="alice", password="wrong", timeout=20)
            assert refused.value.outcome == "auth"
            expired = await server.listen("amqps://127.0.0.1:0", tls=amqscale.TLS(
                cert=pki.expired.cert, key=pki.expired.key))
            with pytest.raises(amqscale.TLSError, match="certificate has expired"):
                await client.connect(expired.url, tls=amqscale.TLS(ca=pki.ca), timeout=20)

    for loop in LOOPS:
        run(main, loop)
