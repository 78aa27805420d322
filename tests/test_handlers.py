"""The event-driven face (amqscale.reactor, amqscale.handlers) against real peers.

Each test runs a Container with real worker processes until it stops by itself: its
handlers close what they opened when they have seen what they wait for, and run() returns
once nothing is left to do. Peers: amqscale's own listener (Container.listen), RabbitMQ,
and proton-python (tests/proton_peers.py) where an independent observer helps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import proton.handlers
import proton.reactor
import psutil
import pytest
from proton import Condition as ProtonCondition
from proton_peers import (
    ClientPair,
    ClientReceiver,
    DynamicReceiver,
    Sink,
    Source,
    _Listening,
    wait_for,
)

from amqscale import Message
from amqscale.handlers import Handler, MessagingHandler, Reject, Release
from amqscale.reactor import (
    ApplicationEvent,
    AtMostOnce,
    Container,
    Copy,
    DynamicNodeProperties,
    EventInjector,
    Filter,
    LinkOption,
    Selector,
)
from amqscale.testing._process import free_port
from amqscale.testing.brokers import RabbitMQ

pytestmark = pytest.mark.timeout(120)


class HelloWorld(MessagingHandler):
    """proton's helloworld: a receiver and a sender on one connection; one message."""

    def __init__(self, url: str, address: str, shards: int = 1) -> None:
        super().__init__()
        self.url, self.address, self.shards = url, address, shards
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        conn = event.container.connect(self.url, shards=self.shards)
        event.container.create_receiver(conn, self.address)
        event.container.create_sender(conn, self.address)

    def on_connection_opened(self, event: Any) -> None:
        self.seen.append("connection_opened")

    def on_sendable(self, event: Any) -> None:
        event.sender.send(Message(body="Hello World!"))
        event.sender.close()

    def on_message(self, event: Any) -> None:
        self.seen.append(event.message.body)
        event.connection.close()

    def on_connection_closed(self, event: Any) -> None:
        self.seen.append("connection_closed")


class HelloWorldDirect(MessagingHandler):
    """proton's helloworld_direct: listens, sends itself one message, closes on accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        event.container.create_sender(self.acceptor.url + "/examples")

    def on_sendable(self, event: Any) -> None:
        event.sender.send(Message(body="Hello World!"))
        event.sender.close()

    def on_message(self, event: Any) -> None:
        self.seen.append((event.message.body, event.receiver.address))

    def on_accepted(self, event: Any) -> None:
        self.seen.append("accepted")
        event.connection.close()

    def on_connection_closed(self, event: Any) -> None:
        self.seen.append("connection_closed")
        self.acceptor.close()


def test_helloworld_through_our_own_listener() -> None:
    handler = HelloWorldDirect()
    Container(handler, workers=1).run()
    # on_connection_closed for both ends, ours and the listener's (as with proton).
    assert handler.seen == [("Hello World!", "examples"), "accepted",
                            "connection_closed", "connection_closed"]


def test_helloworld_through_rabbitmq(rabbitmq: RabbitMQ, unique_name: str) -> None:
    handler = HelloWorld(rabbitmq.url, unique_name, shards=2)
    Container(handler, workers=2).run()
    # on_connection_opened once for the two shards; the message; the close confirmed.
    assert handler.seen == ["connection_opened", "Hello World!", "connection_closed"]


class Counting(MessagingHandler):
    """simple_send and simple_recv in one: `total` messages, as credit allows, through a
    listener of the same container; counts what each callback saw."""

    def __init__(self, total: int, window: int, shards: int) -> None:
        super().__init__()
        self.total, self.window, self.shards = total, window, shards
        self.sent = self.confirmed = 0
        self.received: list[int] = []
        self.sendables = 0
        self.credit_seen: list[int] = []
        self.opened: list[Any] = []

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        self.conn = event.container.connect(self.acceptor.url, shards=self.shards)
        self.sender = event.container.create_sender(self.conn, "counted")
        self.sender.window = self.window

    def on_connection_opened(self, event: Any) -> None:
        self.opened.append(event.connection)

    def on_sendable(self, event: Any) -> None:
        self.sendables += 1
        self.credit_seen.append(event.sender.credit)
        while event.sender.credit and self.sent < self.total:
            event.sender.send(Message(id=self.sent, body={"sequence": self.sent}))
            self.sent += 1

    def on_message(self, event: Any) -> None:
        self.received.append(event.message.id)

    def on_accepted(self, event: Any) -> None:
        self.confirmed += 1
        if self.confirmed == self.total:
            event.connection.close()
            self.acceptor.close()


def test_n_messages_as_credit_allows_over_two_shards() -> None:
    handler = Counting(total=2000, window=50, shards=2)
    Container(handler, workers=2).run()
    # Ours once for its two shards; the listener's end of each shard once.
    assert handler.opened.count(handler.conn) == 1
    assert len(handler.opened) == 3 and len(set(map(id, handler.opened))) == 3
    assert handler.confirmed == 2000
    assert sorted(handler.received) == list(range(2000))
    # The window (50 a shard) kept re-opening: on_sendable came back many times, and
    # never with more credit than the two windows.
    assert handler.sendables > 2000 // 100
    assert max(handler.credit_seen) <= 100 and min(handler.credit_seen) > 0


class Outcomes(MessagingHandler):
    """Sends `total` messages to its own listener, whose handler settles them by id."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.outcomes: dict[int, str] = {}

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        event.container.create_sender(self.acceptor.url + "/outcomes",
                                      handler=self.SenderSide(self))

    def on_message(self, event: Any) -> None:  # the listener's side
        kind = event.message.id % 4
        if kind == 1:
            raise Reject()
        if kind == 2:
            raise Release()
        if kind == 3:
            self.release(event.delivery, delivered=True)  # MODIFIED

    class SenderSide(MessagingHandler):
        def __init__(self, outer: Outcomes) -> None:
            super().__init__()
            self.outer = outer
            self.sent = 0

        def on_sendable(self, event: Any) -> None:
            while event.sender.credit and self.sent < self.outer.total:
                tracker = event.sender.send(Message(id=self.sent))
                tracker.number = self.sent  # proton users hang their own data on it
                self.sent += 1

        def _record(self, event: Any, outcome: str) -> None:
            outer = self.outer
            outer.outcomes[event.delivery.number] = outcome
            if len(outer.outcomes) == outer.total:
                event.connection.close()
                outer.acceptor.close()

        def on_accepted(self, event: Any) -> None:
            self._record(event, "accepted")

        def on_rejected(self, event: Any) -> None:
            self._record(event, "rejected")

        def on_released(self, event: Any) -> None:
            # Called for MODIFIED too (MessagingHandler.on_modified's default), as
            # proton's docs say: tell them apart by remote_state.
            modified = event.delivery.remote_state == event.delivery.MODIFIED
            self._record(event, "modified" if modified else "released")


def test_reject_and_release_raised_in_on_message_reach_the_sender() -> None:
    handler = Outcomes(total=40)
    Container(handler, workers=1).run()
    expected = {i: ["accepted", "rejected", "released", "modified"][i % 4]
                for i in range(40)}
    assert handler.outcomes == expected


class ManualCredit(MessagingHandler):
    """prefetch=0: the receiver grants two credits at a time itself."""

    def __init__(self, url: str, total: int) -> None:
        super().__init__(prefetch=0)
        self.url, self.total = url, total
        self.received: list[int] = []

    def on_start(self, event: Any) -> None:
        event.container.create_receiver(self.url + "/manual")

    def on_link_opened(self, event: Any) -> None:
        event.receiver.flow(2)

    def on_message(self, event: Any) -> None:
        self.received.append(event.message.id)
        if len(self.received) == self.total:
            event.connection.close()
        elif len(self.received) % 2 == 0:
            event.receiver.flow(2)


def test_prefetch_zero_takes_only_the_credit_the_handler_grants() -> None:
    with Source(count=7) as source:
        handler = ManualCredit(source.url, 7)
        Container(handler, workers=1).run()
        assert handler.received == list(range(7))
        # The proton peer never saw more than the two credits granted at a time.
        assert source.credit_seen and max(source.credit_seen) <= 2
        wait_for(lambda: len(source.outcomes) == 7, 10, "the outcomes at the source")
        assert set(source.outcomes.values()) == {"accepted"}


class ManualAccept(MessagingHandler):
    """auto_accept off: accepts even ids, rejects ids 1 mod 4 and releases the rest
    (undelivered), by hand; raises Release once (RELEASED, not proton 0.40's MODIFIED)."""

    def __init__(self, url: str, total: int) -> None:
        super().__init__(auto_accept=False)
        self.url, self.total = url, total
        self.received = 0

    def on_start(self, event: Any) -> None:
        event.container.create_receiver(self.url + "/manual-accept")

    def on_message(self, event: Any) -> None:
        self.received += 1
        done = self.received == self.total
        if done:
            event.connection.close()  # takes effect once this message is settled
        number = event.message.id
        if number == 3:
            raise Release()
        if number % 2 == 0:
            self.accept(event.delivery)
        elif number % 4 == 1:
            self.reject(event.delivery)
        else:
            self.release(event.delivery, delivered=False)


def test_manual_accept_reject_release_reach_the_peer() -> None:
    with Source(count=8) as source:
        handler = ManualAccept(source.url, 8)
        Container(handler, workers=1).run()
        wait_for(lambda: len(source.outcomes) == 8, 10, "the outcomes at the source")
        assert source.outcomes == {0: "accepted", 1: "rejected", 2: "accepted",
                                   3: "released", 4: "accepted", 5: "rejected",
                                   6: "accepted", 7: "released"}


class Timers(Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fired: list[str] = []

    def on_start(self, event: Any) -> None:
        container = event.container
        self.first = container.schedule(0.01, self)
        cancelled = container.schedule(0.02, self)
        cancelled.cancel()
        self.other = Handler()
        self.other.on_timer_task = lambda e: self.fired.append("other")  # type: ignore
        container.schedule(0.03, self.other)

    def on_timer_task(self, event: Any) -> None:
        self.fired.append("first" if event.task is self.first else "again")
        if event.task is self.first:
            event.container.schedule(0, self)


def test_timers_fire_in_order_a_cancelled_one_never() -> None:
    handler = Timers()
    container = Container(handler)
    container.run()  # ends by itself: no timer left
    assert handler.fired == ["first", "again", "other"]
    assert container.worker_pids() == []  # timers alone start no workers


class Injected(MessagingHandler):
    def __init__(self, injector: EventInjector) -> None:
        super().__init__()
        self.injector = injector
        self.pings: list[Any] = []
        self.containers: list[Any] = []

    def on_start(self, event: Any) -> None:
        event.container.selectable(self.injector)
        threading.Thread(target=self.feed, daemon=True).start()

    def feed(self) -> None:
        for i in range(5):
            self.injector.trigger(ApplicationEvent("ping", subject=i))
        self.injector.close()

    def on_ping(self, event: Any) -> None:  # not a MessagingHandler callback: by name
        self.pings.append(event.subject)
        self.containers.append(event.container)


def test_event_injector_from_another_thread() -> None:
    handler = Injected(EventInjector())
    container = Container(handler)
    container.run()  # ends once the injector is closed and drained
    assert handler.pings == [0, 1, 2, 3, 4]
    assert handler.containers == [container] * 5


class Refused(MessagingHandler):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        conn = event.container.connect(self.url)
        event.container.create_sender(conn, "nowhere")

    def on_transport_error(self, event: Any) -> None:
        self.seen.append(("transport_error", event.transport.condition.name))
        super().on_transport_error(event)

    def on_disconnected(self, event: Any) -> None:
        self.seen.append("disconnected")

    def on_unhandled(self, name: str, event: Any) -> None:
        self.seen.append(name)


def test_a_refused_address_reaches_on_transport_error_not_run() -> None:
    handler = Refused(f"amqp://127.0.0.1:{free_port()}")
    Container(handler, workers=1).run()  # returns: nothing left to do
    assert handler.seen == [("transport_error", "amqp:connection:failed"),
                            "disconnected"]  # and no other callback


class LinkError(MessagingHandler):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.received = 0
        self.errors: list[str] = []
        self.closed: list[str] = []

    def on_start(self, event: Any) -> None:
        event.container.create_receiver(self.url + "/doomed")

    def on_message(self, event: Any) -> None:
        self.received += 1

    def on_link_error(self, event: Any) -> None:
        self.errors.append(event.link.remote_condition.name)
        super().on_link_error(event)  # logs, closes the connection (proton's default)

    def on_connection_closed(self, event: Any) -> None:
        self.closed.append("connection")


def test_a_peer_closing_a_link_with_an_error_reaches_on_link_error() -> None:
    with Source(count=3, close_with="amqp:resource-deleted") as source:
        handler = LinkError(source.url)
        Container(handler, workers=1).run()
    assert handler.received == 3
    assert handler.errors == ["amqp:resource-deleted"]
    assert handler.closed == ["connection"]


class KilledWorker(MessagingHandler):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.conditions: list[str] = []
        self.disconnected = 0

    def on_start(self, event: Any) -> None:
        self.sender = event.container.create_sender(self.url + "/killed")

    def on_link_opened(self, event: Any) -> None:
        self.tracker = event.sender.send(Message(body="unsettled: the sink never settles"))
        for pid in event.container.worker_pids():
            os.kill(pid, signal.SIGKILL)

    def on_transport_error(self, event: Any) -> None:
        self.conditions.append(event.transport.condition.name)

    def on_disconnected(self, event: Any) -> None:
        self.disconnected += 1


def test_a_killed_worker_reaches_on_transport_error() -> None:
    with Sink() as sink:
        handler = KilledWorker(sink.url)
        # Ends: its one connection is gone with its worker.
        Container(handler, workers=1, restart_workers=False).run()
    assert handler.conditions == ["amqscale:worker-died"]
    assert handler.disconnected == 1
    assert not handler.tracker.settled
    assert handler.sender.unsettled == [handler.tracker]  # kept, with its payload


class Raising(MessagingHandler):
    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        event.container.connect(self.acceptor.url)

    def on_connection_opened(self, event: Any) -> None:
        self.pids = event.container.worker_pids()
        raise RuntimeError("a bug in the application")


def test_a_callback_exception_ends_run_with_the_workers_stopped() -> None:
    handler = Raising()
    with pytest.raises(RuntimeError, match="a bug in the application"):
        Container(handler, workers=2).run()
    assert len(handler.pids) == 2
    assert not any(psutil.pid_exists(pid) for pid in handler.pids)


def test_stop_ends_run_and_closes_what_is_open() -> None:
    class Stopper(MessagingHandler):
        def on_start(self, event: Any) -> None:
            acceptor = event.container.listen("127.0.0.1:0")
            self.conn = event.container.connect(acceptor.url)

        def on_connection_opened(self, event: Any) -> None:
            self.pids = event.container.worker_pids()
            event.container.stop()

    handler = Stopper()
    Container(handler, workers=1).run()
    assert not any(psutil.pid_exists(pid) for pid in handler.pids)


def test_link_option_misuse_is_refused_before_anything_opens() -> None:
    class Custom(LinkOption):
        def apply(self, link: Any) -> None:
            pass

    container = Container()
    with pytest.raises(ValueError, match="an option for a receiver, not a sender"):
        container.create_sender("amqp://127.0.0.1:1/q", options=Selector("a = 1"))
    with pytest.raises(ValueError, match="an option for a receiver, not a sender"):
        container.create_sender("amqp://127.0.0.1:1/q", options=[Copy()])
    with pytest.raises(NotImplementedError, match="custom link option Custom"):
        container.create_receiver("amqp://127.0.0.1:1/q", options=Custom())
    with pytest.raises(TypeError, match="must be LinkOptions"):
        container.create_receiver("amqp://127.0.0.1:1/q", options=[object()])
    with pytest.raises(TypeError, match="selector must be a non-empty str"):
        Selector("")
    with pytest.raises(TypeError, match="a filter set is a dict"):
        Filter([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dynamic node properties are a dict"):
        DynamicNodeProperties([1])  # type: ignore[arg-type]
    assert container.worker_pids() == []  # refused before anything was opened


def test_at_most_once_sends_pre_settled() -> None:
    class AtMostOnceSend(MessagingHandler):
        def __init__(self) -> None:
            super().__init__()
            self.bodies: list[Any] = []
            self.outcomes = 0

        def on_start(self, event: Any) -> None:
            self.acceptor = event.container.listen("127.0.0.1:0")
            self.sender = event.container.create_sender(self.acceptor.url + "/amo",
                                                        options=AtMostOnce())

        def on_sendable(self, event: Any) -> None:
            for i in range(3):
                event.sender.send(Message(body=i))
            event.sender.close()

        def on_message(self, event: Any) -> None:
            self.bodies.append(event.message.body)
            assert event.delivery.settled  # pre-settled by the sender
            if len(self.bodies) == 3:
                self.sender.connection.close()  # event.connection: the inbound one
                self.acceptor.close()

        def on_settled(self, event: Any) -> None:
            self.outcomes += 1

    handler = AtMostOnceSend()
    Container(handler, workers=1).run()
    assert handler.bodies == [0, 1, 2]
    assert handler.outcomes == 0


class _SendAllThenClose(MessagingHandler):
    """proton's way to send pre-settled: send while `credit` lasts, then close at once."""

    def __init__(self, url: str, count: int) -> None:
        super().__init__()
        self.url, self.count, self.sent = url, count, 0
        self.closed = False

    def on_start(self, event: Any) -> None:
        event.container.create_sender(self.url + "/amo", options=AtMostOnce())

    def on_sendable(self, event: Any) -> None:
        while event.sender.credit and self.sent < self.count:
            event.sender.send(Message(body=self.sent))
            self.sent += 1
        if self.sent == self.count and not self.closed:
            self.closed = True
            event.connection.close()


def test_at_most_once_then_close_writes_every_message_first() -> None:
    """The window (`credit` here) runs ahead of a peer granting 10 at a time: the close
    waits until the worker wrote them all, as proton's would have."""
    import amqscale

    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0", credit=10)
        handler = _SendAllThenClose(listener.url, 300)
        sending = threading.Thread(target=Container(handler, workers=1).run)
        sending.start()
        bodies = [listener.receiver.receive(timeout=30).body for _ in range(300)]
        sending.join(30)
        assert not sending.is_alive()
    assert handler.sent == 300
    assert bodies == list(range(300))


def test_at_most_once_close_gives_up_on_credit_that_never_comes() -> None:
    """A peer that grants 10 and no more: the close waits CLOSE_TIMEOUT, then closes with
    the rest unsent (at most once), and run() returns."""
    with Sink(credit=10) as sink:
        handler = _SendAllThenClose(sink.url, 50)
        Container(handler, workers=1).run()
        wait_for(lambda: len(sink.messages) == 10, 10, "the 10 the peer had credit for")
    assert handler.sent == 50
    assert [m.body for m in sink.messages] == list(range(10))


def test_a_proton_sink_sees_what_a_sharded_sender_sends() -> None:
    class Send(MessagingHandler):
        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url
            self.sent = 0
            self.opened: list[str] = []

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(self.url, shards=3)
            event.container.create_sender(conn, "sharded")

        def on_link_opened(self, event: Any) -> None:
            self.opened.append(event.link.target.address)

        def on_sendable(self, event: Any) -> None:
            while event.sender.credit and self.sent < 30:
                event.sender.send(Message(id=self.sent))
                self.sent += 1

        def on_accepted(self, event: Any) -> None:
            if not event.sender.unsettled and self.sent == 30:
                event.connection.close()

    with Sink(accept=True) as sink:
        handler = Send(sink.url)
        Container(handler, workers=2).run()
        assert handler.opened == ["sharded"]  # once for the three shards' links
        assert sorted(m.id for m in sink.messages) == list(range(30))
        assert sink.links_opened == 3


class SendAndReceive(MessagingHandler):
    """simple_send and simple_recv on two connections through a broker."""

    def __init__(self, url: str, address: str, total: int, shards: int) -> None:
        super().__init__()
        self.url, self.address, self.total, self.shards = url, address, total, shards
        self.sent = self.confirmed = 0
        self.received: list[int] = []

    def on_start(self, event: Any) -> None:
        container = event.container
        self.receiving = container.connect(self.url, shards=self.shards)
        container.create_receiver(self.receiving, self.address)
        self.sending = container.connect(self.url, shards=self.shards)
        container.create_sender(self.sending, self.address)

    def on_sendable(self, event: Any) -> None:
        while event.sender.credit and self.sent < self.total:
            event.sender.send(Message(id=self.sent, body=b"x" * 100))
            self.sent += 1

    def on_accepted(self, event: Any) -> None:
        self.confirmed += 1
        if self.confirmed == self.total:
            event.connection.close()

    def on_message(self, event: Any) -> None:
        self.received.append(event.message.id)
        if len(self.received) == self.total:
            event.connection.close()


def test_n_messages_through_rabbitmq_over_shards(rabbitmq: RabbitMQ, unique_name: str) -> None:
    handler = SendAndReceive(rabbitmq.url, unique_name, 3000, shards=2)
    Container(handler, workers=2).run()
    assert handler.confirmed == 3000
    assert sorted(handler.received) == list(range(3000))


def test_an_address_rabbitmq_refuses_reaches_on_link_error(rabbitmq: RabbitMQ,
                                                           unique_name: str) -> None:
    class Refused(MessagingHandler):
        def __init__(self) -> None:
            super().__init__()
            self.errors: list[str] = []
            self.closed = 0

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(rabbitmq.url)
            event.container.create_receiver(conn, f"/amq/queue/{unique_name}")  # none such

        def on_link_error(self, event: Any) -> None:
            self.errors.append(event.link.remote_condition.name)
            super().on_link_error(event)  # closes the connection

        def on_connection_closed(self, event: Any) -> None:
            self.closed += 1

    handler = Refused()
    Container(handler, workers=1).run()
    assert handler.errors == ["amqp:not-found"]
    assert handler.closed == 1


class ClosesConnections(_Listening):
    """A proton peer that closes every connection with an error as soon as it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()

    def on_connection_opened(self, event: Any) -> None:
        super().on_connection_opened(event)
        event.connection.condition = ProtonCondition("amqp:connection:forced", "go away")
        event.connection.close()


def test_a_peer_closing_the_connection_with_an_error_reaches_on_connection_error() -> None:
    class Watch(MessagingHandler):
        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url
            self.seen: list[Any] = []

        def on_start(self, event: Any) -> None:
            event.container.connect(self.url, reconnect=False)

        def on_connection_error(self, event: Any) -> None:
            condition = event.connection.remote_condition
            self.seen.append((condition.name, condition.description))
            super().on_connection_error(event)

        def on_connection_closed(self, event: Any) -> None:
            self.seen.append("closed")

        def on_transport_error(self, event: Any) -> None:
            self.seen.append("transport_error")

    with ClosesConnections() as peer:
        handler = Watch(peer.url)
        Container(handler, workers=1).run()
    assert handler.seen == [("amqp:connection:forced", "go away"), "closed"]


class LargeThenSmall(MessagingHandler):
    """Sends a message larger than a ring record, then small ones on the same link, to its
    own listener: they arrive in the order sent, the large one whole."""

    def __init__(self, large: bytes, small: int) -> None:
        super().__init__()
        self.large, self.small = large, small
        self.bodies: list[Any] = []
        self.accepted = 0
        self.sent = False

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        event.container.create_sender(self.acceptor.url + "/big")

    def on_sendable(self, event: Any) -> None:
        if not self.sent:
            self.sent = True
            event.sender.send(self.large)
            for i in range(self.small):  # these wait for the large one's last part
                event.sender.send(b"small-%d" % i)

    def on_message(self, event: Any) -> None:
        self.bodies.append(event.message.body)

    def on_accepted(self, event: Any) -> None:
        self.accepted += 1
        if self.accepted == self.small + 1:
            event.connection.close()
            self.acceptor.close()


def test_a_message_larger_than_a_ring_record_goes_in_parts_and_keeps_its_place() -> None:
    large = os.urandom(3 * 1024 * 1024)
    handler = LargeThenSmall(large, 5)
    Container(handler, workers=1).run()
    assert handler.bodies[0] == large
    assert handler.bodies[1:] == [b"small-%d" % i for i in range(5)]
    assert handler.accepted == 6


class ServeReceivers(MessagingHandler):
    """Listens; a proton receiver connects to it; sends it `total` messages as credit
    allows (direct_send.py's part), and closes once all are accepted (all settled, if
    the receiver asked `at_most_once`) or the peer left."""

    def __init__(self, total: int, detach_after: int | None = None,
                 at_most_once: bool = False) -> None:
        super().__init__()
        self.total, self.detach_after, self.at_most_once = total, detach_after, at_most_once
        self.sent = self.accepted = self.settled = 0
        self.seen: list[Any] = []
        self.peer: ClientReceiver | None = None

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        self.peer = ClientReceiver(f"127.0.0.1:{self.acceptor.port}", "outbox",
                                   detach_after=self.detach_after,
                                   at_most_once=self.at_most_once).start()

    def on_link_opening(self, event: Any) -> None:
        link = event.link
        self.seen.append(("link_opening", link.is_sender, link.source.address,
                          link.remote_source.address, event.sender is link))

    def on_link_opened(self, event: Any) -> None:
        self.seen.append(("link_opened", event.sender is event.link))

    def on_sendable(self, event: Any) -> None:
        sender = event.sender
        assert event.connection is sender.connection
        while sender.credit and self.sent < self.total:
            sender.send(Message(id=self.sent, body={"sequence": self.sent}))
            self.sent += 1

    def on_accepted(self, event: Any) -> None:
        self.accepted += 1
        if self.accepted == self.total:
            event.connection.close()
            self.acceptor.close()

    def on_settled(self, event: Any) -> None:
        self.settled += 1
        if self.at_most_once and self.settled == self.total:
            event.connection.close()
            self.acceptor.close()

    def on_link_closing(self, event: Any) -> None:
        self.seen.append(("link_closing", event.link.remote_condition))

    def on_link_closed(self, event: Any) -> None:
        self.seen.append(("link_closed", len(event.sender.unsettled)))
        self.acceptor.close()


def test_a_remote_receiver_on_our_listener_gets_what_on_sendable_sends() -> None:
    handler = ServeReceivers(100)
    try:
        Container(handler, workers=2).run()
    finally:
        assert handler.peer is not None
        handler.peer.stop()
    assert handler.seen[:2] == [("link_opening", True, "outbox", "outbox", True),
                                ("link_opened", True)]
    assert handler.sent == handler.accepted == handler.settled == 100
    assert [m.id for m in handler.peer.messages] == list(range(100))
    assert handler.peer.messages[7].body == {"sequence": 7}


def test_a_remote_receiver_that_asks_at_most_once_gets_pre_settled_messages() -> None:
    handler = ServeReceivers(50, at_most_once=True)
    try:
        Container(handler, workers=1).run()
    finally:
        assert handler.peer is not None
        handler.peer.stop()
    assert handler.sent == handler.settled == 50
    assert handler.accepted == 0  # no outcome comes for a pre-settled message
    assert [m.id for m in handler.peer.messages] == list(range(50))
    assert all(handler.peer.settled_on_arrival)


def test_a_remote_receiver_detaching_mid_way_ends_its_sender_not_run() -> None:
    handler = ServeReceivers(100, detach_after=5)
    try:
        Container(handler, workers=1).run()  # returns: nothing raised out of it
    finally:
        assert handler.peer is not None
        handler.peer.stop()
    assert len(handler.peer.messages) == 5
    assert handler.accepted <= 5 < handler.sent
    closing, closed = handler.seen[-2:]
    assert closing == ("link_closing", None)
    # what the peer did not settle before it left stays listed on the sender
    assert closed[0] == "link_closed" and closed[1] == handler.sent - handler.settled > 0


class WatchInbound(MessagingHandler):
    """Listens on `port`; a proton peer attaches a sender and a receiver on one connection
    (`start_peer`). Once both links are open: `close` closes that connection from here,
    else `kill` kills the peer's process. Records the connection callbacks (`seen`) and
    each link's event.connection (`connections`)."""

    def __init__(self, port: int, start_peer: Any, close: bool) -> None:
        super().__init__()
        self.port, self.start_peer, self.close = port, start_peer, close
        self.seen: list[Any] = []
        self.connections: list[Any] = []
        self.opened_links = 0

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen(f"127.0.0.1:{self.port}")
        self.start_peer()

    def on_connection_opening(self, event: Any) -> None:
        self.seen.append(("opening", event.connection.remote_container))
        self.connections.append(event.connection)

    def on_connection_opened(self, event: Any) -> None:
        self.seen.append("opened")
        assert event.connection is self.connections[0]

    def on_link_opening(self, event: Any) -> None:
        self.connections.append(event.connection)
        assert event.link.connection is event.connection

    def on_link_opened(self, event: Any) -> None:
        self.opened_links += 1
        if self.opened_links == 2:
            if self.close:
                event.connection.close()
            else:
                self.start_peer.kill()  # type: ignore[attr-defined]

    def on_connection_closing(self, event: Any) -> None:
        self.seen.append("closing")

    def on_connection_closed(self, event: Any) -> None:
        self.seen.append("closed")
        self.acceptor.close()

    def on_disconnected(self, event: Any) -> None:
        self.seen.append("disconnected")
        self.acceptor.close()


def test_an_inbound_connection_is_one_connection_its_handler_can_close() -> None:
    port = free_port()
    peer = ClientPair(f"127.0.0.1:{port}/box", "box")
    handler = WatchInbound(port, peer.start, close=True)
    try:
        Container(handler, workers=2).run()
        assert peer.remote_closed.wait(10)  # the proton client saw our close
    finally:
        peer.stop()
    assert handler.seen == [("opening", peer.container_id), "opened", "closed"]
    first, *links = handler.connections
    assert len(links) == 2 and all(c is first for c in links)
    assert first.remote_container == peer.container_id


class _PairProcess:
    """A ClientPair in a process of its own, started by calling it, killed by kill()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def __call__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "proton_peers.py"),
             "pair", f"127.0.0.1:{self.port}/box", "box"],
            stdout=subprocess.PIPE, text=True)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def test_a_peer_dropping_its_connection_reaches_on_disconnected_not_run() -> None:
    port = free_port()
    peer = _PairProcess(port)
    handler = WatchInbound(port, peer, close=False)
    try:
        Container(handler, workers=1).run()  # returns: nothing raised out of it
    finally:
        if peer.proc is not None and peer.proc.poll() is None:
            peer.kill()
    assert handler.seen[:2] == [("opening", handler.connections[0].remote_container),
                                "opened"]
    assert handler.seen[2:] in (["disconnected"], ["closed"])
    assert len(handler.connections) == 3
    assert all(c is handler.connections[0] for c in handler.connections)


class NamesDynamicSources(MessagingHandler):
    """server_direct.py's part: on_link_opening gives a dynamic source an address; one
    message goes to the link, and the connection closes once it is accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: DynamicReceiver | None = None
        self.named: list[str] = []

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen("127.0.0.1:0")
        self.peer = DynamicReceiver(f"127.0.0.1:{self.acceptor.port}").start()

    def on_link_opening(self, event: Any) -> None:
        if event.link.is_sender and event.link.remote_source.dynamic:
            event.link.source.address = f"dynamic-{len(self.named)}"
            self.named.append(event.link.source.address)

    def on_sendable(self, event: Any) -> None:
        if event.sender.credit and not event.sender.unsettled:
            event.sender.send(Message(body=event.sender.source.address))

    def on_accepted(self, event: Any) -> None:
        event.connection.close()
        self.acceptor.close()


def test_on_link_opening_names_a_dynamic_source_the_peer_sees() -> None:
    handler = NamesDynamicSources()
    try:
        Container(handler, workers=2).run()
    finally:
        assert handler.peer is not None
        handler.peer.stop()
    assert handler.named == ["dynamic-0"]
    assert handler.peer.address == "dynamic-0"
    assert [m.body for m in handler.peer.messages] == ["dynamic-0"]


class _OpenWatcher(proton.handlers.MessagingHandler):  # type: ignore[misc]
    """A proton-python client that records what our open carried, then closes."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.seen: dict[str, Any] = {}

    def on_start(self, event: Any) -> None:
        event.container.connect(self.url, reconnect=False)

    def on_connection_opened(self, event: Any) -> None:
        conn = event.connection
        self.seen = {"offered": conn.remote_offered_capabilities,
                     "desired": conn.remote_desired_capabilities,
                     "properties": conn.remote_properties}
        conn.close()


class SetsOurOpen(MessagingHandler):
    """broker.py's part: on_connection_opening sets what our open offers the peer."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.client = _OpenWatcher(f"127.0.0.1:{port}")
        self.errors: list[Exception] = []
        self.inbound: Any = None

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen(f"127.0.0.1:{self.port}")
        self.thread = threading.Thread(target=proton.reactor.Container(self.client).run)
        self.thread.start()
        # On a connection we open they are refused, not dropped (issue #12 sends them).
        ours = event.container.connect(self.client.url)
        with pytest.raises(NotImplementedError, match="offered_capabilities"):
            ours.offered_capabilities = "ANONYMOUS-RELAY"
        ours.close()

    def on_connection_opening(self, event: Any) -> None:
        conn = event.connection
        if conn.remote_container == event.container.container_id:
            return  # our own outbound connection's other end (see on_start)
        self.inbound = conn
        with pytest.raises(TypeError, match="offered_capabilities"):
            conn.offered_capabilities = 5
        with pytest.raises(TypeError, match="dict"):
            conn.properties = ["not", "a", "dict"]
        conn.offered_capabilities = "ANONYMOUS-RELAY"
        conn.desired_capabilities = ["shared-subs", "delayed-delivery"]
        conn.properties = {"product": "amqscale-test", "version": 3}

    def on_connection_opened(self, event: Any) -> None:
        if event.connection is not self.inbound:
            return
        try:
            event.connection.offered_capabilities = "TOO-LATE"
        except ValueError as exc:
            self.errors.append(exc)

    def on_connection_closed(self, event: Any) -> None:
        if event.connection is self.inbound:
            self.acceptor.close()


def test_what_on_connection_opening_sets_goes_in_our_open() -> None:
    handler = SetsOurOpen(free_port())
    Container(handler, workers=2).run()
    handler.thread.join(10)
    seen = handler.client.seen
    assert list(seen["offered"]) == ["ANONYMOUS-RELAY"]
    assert list(seen["desired"]) == ["shared-subs", "delayed-delivery"]
    assert seen["properties"] == {"product": "amqscale-test", "version": 3}
    (late,) = handler.errors
    assert "answered already" in str(late)


class KillsTheInboundWorker(MessagingHandler):
    """Listens; two proton pairs connect one after the other (worker 0 deals them
    round-robin: the first stays on worker 0, the second goes to worker 1). Once the
    second pair's links are open, kills worker 1; that pair reconnects (proton's default)
    and lands on worker 0; once it is open again every connection is closed."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.peers = [ClientPair(f"127.0.0.1:{port}/box", "box") for _ in range(2)]
        self.seen: list[Any] = []
        self.connections: list[Any] = []
        self.opened_links = 0

    def on_start(self, event: Any) -> None:
        self.acceptor = event.container.listen(f"127.0.0.1:{self.port}")
        self.peers[0].start()

    def _index(self, connection: Any) -> int:
        ids = [peer.container_id for peer in self.peers]
        return ids.index(connection.remote_container)

    def on_connection_opened(self, event: Any) -> None:
        self.connections.append(event.connection)
        self.seen.append(("opened", self._index(event.connection),
                          event.connection._inbound.slot.index))
        if len(self.connections) == 3:
            for connection in self.connections:
                connection.close()
            self.acceptor.close()

    def on_link_opened(self, event: Any) -> None:
        self.opened_links += 1
        if self.opened_links == 2:
            self.peers[1].start()
        elif self.opened_links == 4:
            os.kill(event.container.worker_pids()[1], signal.SIGKILL)

    def on_transport_error(self, event: Any) -> None:
        self.seen.append(("transport_error", event.transport.condition.name))

    def on_disconnected(self, event: Any) -> None:
        self.seen.append(("disconnected", self._index(event.connection)))

    def on_connection_closed(self, event: Any) -> None:
        self.seen.append(("closed", self._index(event.connection)))


def test_a_dead_worker_ends_the_inbound_connections_it_carried_not_the_others() -> None:
    handler = KillsTheInboundWorker(free_port())
    try:
        Container(handler, workers=2).run()  # returns: nothing raised out of it
    finally:
        for peer in handler.peers:
            peer.stop()
    seen = handler.seen
    assert seen[:2] == [("opened", 0, 0), ("opened", 1, 1)]
    # proton's reconnect may come before or after we saw the worker die
    ended, reopened = seen[2:5], ("opened", 1, 0)  # the listener lives on worker 0
    assert reopened in ended
    assert [x for x in ended if x != reopened] == [
        ("transport_error", "amqscale:worker-died"), ("disconnected", 1)]
    assert sorted(seen[5:]) == [("closed", 0), ("closed", 1)]
