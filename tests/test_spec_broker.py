"""Tests of the spec broker itself (`tests/peers/spec_broker.py`), with proton-python clients.

Every wait is bounded (`WAIT`); "nothing more arrives" is shown by draining the link (the broker
answers a drain only after sending all it has), or by the broker's stats, never by sleeping.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proton import (
    Delivery,
    Described,
    Handler,
    Link,
    Message,
    Terminus,
    symbol,
    ulong,
)
from proton.reactor import Copy, DurableSubscription, LinkOption
from proton.reactor import Selector as SelectorOption
from proton.utils import BlockingConnection, BlockingReceiver, BlockingSender, LinkDetached

from amqscale.testing.brokers import SpecBroker

WAIT = 15.0
_names = itertools.count()
SCRIPT = Path(__file__).parent / "peers" / "spec_broker.py"


def _load_broker_module() -> Any:
    spec = importlib.util.spec_from_file_location("spec_broker", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["spec_broker"] = module
    spec.loader.exec_module(module)
    return module


sb = _load_broker_module()


# --- client helpers ------------------------------------------------------------------------


class Inbox(Handler):
    """Collects the messages (and deliveries) of one receiver; no automatic credit."""

    def __init__(self) -> None:
        self.items: list[tuple[Message, Delivery]] = []
        self.detached = False

    def on_link_remote_detach(self, event: Any) -> None:
        self.detached = True  # detach(closed=false) leaves proton's remote state active

    def on_delivery(self, event: Any) -> None:
        dlv = event.delivery
        if dlv.link.is_receiver and dlv.readable and not dlv.partial:
            data = dlv.link.recv(dlv.pending)
            dlv.link.advance()
            message = Message()
            message.decode(data)
            self.items.append((message, dlv))


class Options(LinkOption):
    """Set what proton's options do not: capabilities, settle modes, terminus fields."""

    def __init__(self, **what: Any) -> None:
        self.what = what

    def apply(self, link: Link) -> None:
        w = self.what
        terminus = link.source if link.is_receiver else link.target
        if "caps" in w:
            terminus.capabilities.put_array(False, 21)  # Data.SYMBOL
            terminus.capabilities.enter()
            for cap in w["caps"]:
                terminus.capabilities.put_symbol(symbol(cap))
            terminus.capabilities.exit()
        if "filters" in w:
            link.source.filter.put_dict(w["filters"])
        if "snd" in w:
            link.snd_settle_mode = w["snd"]
        if "rcv" in w:
            link.rcv_settle_mode = w["rcv"]
        if "coordinator" in w:
            link.target.type = Terminus.COORDINATOR
            link.target.capabilities.put_object(symbol("amqp:local-transactions"))
        if "dynamic_target" in w:
            link.target.dynamic = True  # and no address
        if "properties" in w:
            link.properties = w["properties"]
        if "durable" in w:
            link.source.durability = w["durable"]
            link.source.expiry_policy = Terminus.EXPIRE_NEVER

    def test(self, link: Link) -> bool:
        return True


class Rx:
    """A receiver whose credit the test controls."""

    def __init__(self, client: Client, blocking: BlockingReceiver, inbox: Inbox) -> None:
        self.client = client
        self.blocking = blocking
        self.inbox = inbox
        self.link = blocking.link

    def get(self, count: int, credit: int | None = None) -> list[Message]:
        """Give credit (default: `count`) and wait for `count` messages; return them."""
        start = len(self.inbox.items)
        self.link.flow(count if credit is None else credit)
        self.client.wait(lambda: len(self.inbox.items) >= start + count, f"{count} messages")
        return [m for m, _ in self.inbox.items[start:]]

    def drain(self, credit: int = 10) -> list[Message]:
        """Drain: everything the broker has for us (up to `credit`), then credit 0."""
        start = len(self.inbox.items)
        self.link.drain(credit)
        self.client.wait(lambda: not self.link.draining() and self.link.credit == 0, "drain")
        return [m for m, _ in self.inbox.items[start:]]

    def settle(self, index: int, state: int | None = None, **modified: bool) -> Delivery:
        dlv = self.inbox.items[index][1]
        if modified.get("failed"):
            dlv.local.failed = True
        if modified.get("undeliverable"):
            dlv.local.undeliverable = True
        if state:
            dlv.update(state)
            # A round trip: the broker settles once it has applied the outcome.
            self.client.wait(lambda: dlv.settled, "the broker's settle")
        dlv.settle()
        return dlv

    def bodies(self) -> list[Any]:
        return [m.body for m, _ in self.inbox.items]

    def close(self) -> None:
        self.blocking.close()

    def detach(self) -> None:
        """Detach with closed=false (a durable subscription survives this)."""
        self.link.detach()
        self.client.wait(lambda: self.inbox.detached, "the broker's detach")


class Client:
    def __init__(self, broker: SpecBroker, **kwargs: Any) -> None:
        self.conn = BlockingConnection(broker.url, timeout=WAIT, **kwargs)

    def wait(self, condition: Any, what: str) -> None:
        self.conn.wait(condition, timeout=WAIT, msg=what)

    def receiver(
        self, address: str | None, *, name: str | None = None, dynamic: bool = False,
        options: list[Any] | None = None,
    ) -> Rx:
        inbox = Inbox()
        blocking = self.conn.create_receiver(
            address, credit=0, dynamic=dynamic, handler=inbox, name=name or f"rx-{next(_names)}",
            options=options,
        )
        return Rx(self, blocking, inbox)

    def sender(self, address: str | None, *, name: str | None = None,
               options: list[Any] | None = None) -> BlockingSender:
        return self.conn.create_sender(address, name=name or f"tx-{next(_names)}", options=options)

    def send(self, address: str, *bodies: Any, **props: Any) -> None:
        sender = self.sender(address)
        for body in bodies:
            sender.send(Message(body=body, properties=props or None))
        sender.close()

    def send_raw(self, sender: BlockingSender, message: Message | bytes,
                 data: list[Any] | None = None, state: int | None = None) -> Delivery:
        """Send without raising on the outcome; wait for the broker's outcome."""
        dlv = sender.link.delivery(str(id(message)))
        sender.link.stream(message if isinstance(message, bytes) else message.encode())
        sender.link.advance()
        if data is not None:
            dlv.local.data = data
        if state is not None:
            dlv.update(state)
        self.wait(lambda: dlv.remote_state != 0 or dlv.settled, "an outcome")
        return dlv

    def sync(self) -> None:
        """Make sure the broker has processed everything this client sent so far."""
        conn = self.conn.conn
        assert conn is not None and conn.transport is not None
        transport = conn.transport
        self.wait(lambda: transport.pending() == 0, "flush")
        self.sender(None).close()  # a round trip, after the bytes above

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def client(spec_broker: SpecBroker) -> Iterator[Client]:
    c = Client(spec_broker)
    yield c
    c.close()


def refused(rx_factory: Any) -> LinkDetached:
    """Run an attach the broker must refuse; return the LinkDetached it raised."""
    with pytest.raises(LinkDetached) as info:
        rx_factory()
    return info.value


def condition(dlv: Delivery) -> str | None:
    """The name of the condition in the broker's outcome."""
    cond = dlv.remote.condition
    return None if cond is None else str(cond.name)


def remote_data(dlv: Delivery) -> list[Any]:
    return list(dlv.remote.data or [])


def offered(client: Client) -> list[str]:
    conn = client.conn.conn
    assert conn is not None
    return [str(c) for c in conn.remote_offered_capabilities or []]


def depth(broker: SpecBroker, address: str) -> int | None:
    return broker.stats()["queues"].get(address)


# --- 1. queues ----------------------------------------------------------------------------


def test_queue_is_created_on_first_message_and_drained_by_accepts(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    assert depth(spec_broker, unique_name) is None
    client.send(unique_name, "a", "b", "c")
    assert depth(spec_broker, unique_name) == 3
    rx = client.receiver(unique_name)
    assert [m.body for m in rx.get(3)] == ["a", "b", "c"]
    for i in range(3):
        rx.settle(i, Delivery.ACCEPTED)
    assert rx.drain() == []
    assert depth(spec_broker, unique_name) == 0


def test_competing_consumers_round_robin(client: Client, unique_name: str) -> None:
    one, two = client.receiver(unique_name), client.receiver(unique_name)
    one.link.flow(10)
    two.link.flow(10)
    client.send(unique_name, *range(6))
    one.drain()
    two.drain()
    assert one.bodies() == [0, 2, 4]
    assert two.bodies() == [1, 3, 5]
    assert one.link.remote_source.distribution_mode == Terminus.DIST_MODE_MOVE


def test_browse_sees_everything_and_removes_nothing(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.send(unique_name, "x", "y")
    browser = client.receiver(unique_name, options=[Copy()])
    assert browser.link.remote_source.distribution_mode == Terminus.DIST_MODE_COPY
    assert [m.body for m in browser.get(2)] == ["x", "y"]
    browser.settle(0, Delivery.ACCEPTED)
    client.send(unique_name, "z")
    assert [m.body for m in browser.get(1)] == ["z"]  # later arrivals too
    assert browser.drain() == []
    assert depth(spec_broker, unique_name) == 3
    consumer = client.receiver(unique_name)
    assert [m.body for m in consumer.get(3)] == ["x", "y", "z"]


# --- 2. topics and subscriptions ----------------------------------------------------------


def topic(*extra: str) -> Options:
    return Options(caps=["topic", *extra])


def test_topic_gives_each_subscriber_a_copy(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    one = client.receiver(unique_name, options=[topic()])
    two = client.receiver(unique_name, options=[topic()])
    assert sb._symbols(one.link.remote_source.capabilities) == ["topic"]
    client.send(unique_name, "news")  # the sender needs no capability: the topic exists
    assert [m.body for m in one.get(1)] == ["news"]
    assert [m.body for m in two.get(1)] == ["news"]
    stats = spec_broker.stats()
    assert unique_name not in stats["queues"]
    assert len(stats["topics"][unique_name]) == 2
    one.close()
    two.detach()  # a non-durable subscription ends at detach, too
    assert spec_broker.stats()["topics"][unique_name] == []


def test_topic_with_no_subscriber_drops_messages(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.sender(unique_name, options=[topic()]).close()
    client.send(unique_name, "lost")
    late = client.receiver(unique_name, options=[topic()])
    assert late.drain() == []


def test_queue_and_topic_conflict_is_refused(client: Client, unique_name: str) -> None:
    client.send(unique_name, "a queue now")
    error = refused(lambda: client.receiver(unique_name, options=[topic()]))
    assert error.condition == "amqp:precondition-failed"


def test_durable_subscription_survives_detach_and_resumes(
    spec_broker: SpecBroker, unique_name: str
) -> None:
    container = f"durable-{unique_name}"
    first = Client(spec_broker, container_id=container)
    sub = first.receiver(unique_name, name="sub", options=[topic(), DurableSubscription()])
    sub.detach()
    first.close()
    publisher = Client(spec_broker)
    publisher.send(unique_name, "m1", "m2")
    name = f"{container}|sub"
    stats = spec_broker.stats()
    assert stats["topics"][unique_name] == [name]
    assert stats["subscriptions"][name] == 2
    again = Client(spec_broker, container_id=container)
    resumed = again.receiver(unique_name, name="sub", options=[topic(), DurableSubscription()])
    assert [m.body for m in resumed.get(2)] == ["m1", "m2"]
    resumed.settle(0, Delivery.ACCEPTED)
    resumed.settle(1, Delivery.ACCEPTED)
    resumed.close()  # closed=true: unsubscribe
    assert spec_broker.stats()["topics"][unique_name] == []
    publisher.close()
    again.close()


def test_durable_subscription_is_keyed_by_container_id(
    spec_broker: SpecBroker, unique_name: str
) -> None:
    durable = Options(caps=["topic"], durable=Terminus.CONFIGURATION)  # durability 1 counts too
    first = Client(spec_broker, container_id=f"a-{unique_name}")
    first.receiver(unique_name, name="sub", options=[durable]).detach()
    first.send(unique_name, "kept")
    other = Client(spec_broker, container_id=f"b-{unique_name}")
    stranger = other.receiver(unique_name, name="sub", options=[durable])
    assert stranger.drain() == []  # a different container id: a new, empty subscription
    assert spec_broker.stats()["subscriptions"][f"a-{unique_name}|sub"] == 1
    other.close()
    first.close()


def test_durable_resubscribe_with_another_selector_replaces_it(
    spec_broker: SpecBroker, unique_name: str
) -> None:
    container = f"sel-{unique_name}"
    c = Client(spec_broker, container_id=container)
    opts = [topic(), DurableSubscription(), SelectorOption("colour = 'red'")]
    c.receiver(unique_name, name="sub", options=opts).detach()
    c.send(unique_name, "red", colour="red")
    assert spec_broker.stats()["subscriptions"][f"{container}|sub"] == 1
    opts = [topic(), DurableSubscription(), SelectorOption("colour = 'blue'")]
    replaced = c.receiver(unique_name, name="sub", options=opts)
    assert replaced.drain() == []  # the old subscription and its message are gone
    c.send(unique_name, "red", colour="red")
    c.send(unique_name, "blue", colour="blue")
    assert [m.body for m in replaced.get(1)] == ["blue"]
    c.close()


def test_shared_subscription_round_robins_across_connections(
    spec_broker: SpecBroker, unique_name: str
) -> None:
    a, b = Client(spec_broker), Client(spec_broker)
    one = a.receiver(unique_name, name="shared-sub", options=[topic("shared")])
    two = b.receiver(unique_name, name="shared-sub", options=[topic("shared")])
    assert sb._symbols(two.link.remote_source.capabilities) == ["topic", "shared"]
    one.link.flow(10)
    two.link.flow(10)
    b.sync()
    a.send(unique_name, *range(4))
    one.drain()
    two.drain()
    assert sorted(one.bodies() + two.bodies()) == [0, 1, 2, 3]
    assert one.bodies() and two.bodies()  # both got some
    assert spec_broker.stats()["topics"][unique_name] == ["shared|shared-sub"]
    a.close()
    b.close()
    assert spec_broker.stats()["topics"][unique_name] == []


# --- 3. selectors and filters -------------------------------------------------------------


def test_selector_on_queue_leaves_others_for_other_consumers(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.send(unique_name, "r1", colour="red")
    client.send(unique_name, "b1", colour="blue")
    client.send(unique_name, "r2", colour="red")
    reds = client.receiver(unique_name, options=[SelectorOption("colour = 'red'")])
    applied = sb._data_object(reds.link.remote_source.filter)
    assert applied == {
        symbol("selector"): Described(symbol(sb.SELECTOR_SYMBOL), "colour = 'red'")
    }
    assert [m.body for m in reds.drain()] == ["r1", "r2"]
    assert depth(spec_broker, unique_name) == 1
    rest = client.receiver(unique_name)
    assert [m.body for m in rest.get(1)] == ["b1"]


def test_selector_on_topic_with_ulong_descriptor(client: Client, unique_name: str) -> None:
    filters = {symbol("jms"): Described(ulong(sb.SELECTOR_CODE), "n > 1")}
    sub = client.receiver(unique_name, options=[topic(), Options(filters=filters)])
    assert symbol("jms") in sb._data_object(sub.link.remote_source.filter)
    for n in range(4):
        client.send(unique_name, n, n=n)
    assert [m.body for m in sub.drain()] == [2, 3]


def test_unknown_filter_is_not_echoed(client: Client, unique_name: str) -> None:
    filters = {
        symbol("no-local"): Described(symbol("apache.org:no-local-filter:list"), []),
        symbol("odd"): Described(ulong(0x1234), "x"),
    }
    rx = client.receiver(unique_name, options=[Options(filters=filters)])
    assert sb._data_object(rx.link.remote_source.filter) is None


@pytest.mark.parametrize("selector", ["colour = ", "a LIKE 5", "(a = 1", "a = 'open", "a ! 1",
                                      "NOT", "a IN ()", "a BETWEEN 1"])
def test_bad_selector_refuses_the_link(client: Client, unique_name: str, selector: str) -> None:
    error = refused(lambda: client.receiver(unique_name, options=[SelectorOption(selector)]))
    assert error.condition == "amqp:invalid-field"
    assert "selector" in str(getattr(error.link.remote_condition, "description", ""))
    assert error.link.remote_source.type == Terminus.UNSPECIFIED  # attach had a null source


def _props(**props: Any) -> Message:
    return Message(properties=props, priority=7, id="id-1", subject="kind", correlation_id="c9")


@pytest.mark.parametrize(
    ("selector", "message", "expected"),
    [
        ("a = 1", _props(a=1), True),
        ("a = 1", _props(a=2), False),
        ("a <> 1", _props(), False),  # NULL <> 1 is UNKNOWN
        ("NOT (a = 1)", _props(), False),  # NOT UNKNOWN is UNKNOWN
        ("a = 1 OR b = 2", _props(b=2), True),  # UNKNOWN OR TRUE
        ("a = 1 AND b = 2", _props(b=2), False),  # UNKNOWN AND TRUE
        ("NOT (a = 1 AND b = 3)", _props(b=2), True),  # NOT (UNKNOWN AND FALSE)
        ("a IS NULL", _props(), True),
        ("a IS NOT NULL", _props(a="x"), True),
        ("s = 'it''s'", _props(s="it's"), True),
        ("s LIKE 'ab%'", _props(s="abc"), True),
        ("s LIKE 'a_c'", _props(s="abbc"), False),
        ("s NOT LIKE 'a%'", _props(s="bcd"), True),
        ("s LIKE '10!%' ESCAPE '!'", _props(s="10%"), True),
        ("s LIKE '10!%' ESCAPE '!'", _props(s="100"), False),
        ("s IN ('x', 'y')", _props(s="y"), True),
        ("s NOT IN ('x', 'y')", _props(s="z"), True),
        ("s IN ('x')", _props(), False),
        ("n BETWEEN 2 AND 4", _props(n=4), True),
        ("n NOT BETWEEN 2 AND 4", _props(n=5), True),
        ("n * 2 + 1 = 7", _props(n=3), True),
        ("n / 2 = 1.5", _props(n=3), True),
        ("n / 0 = 1", _props(n=3), False),
        ("-n < 0", _props(n=3), True),
        ("f > 1.25", _props(f=1.5), True),
        ("n = 0x10", _props(n=16), True),
        ("b = TRUE", _props(b=True), True),
        ("b", _props(b=True), True),
        ("s > 'a'", _props(s="b"), False),  # strings compare only with = and <>
        ("s = 1", _props(s="1"), False),  # mixed types: UNKNOWN
        ("JMSPriority > 5", _props(), True),
        ("JMSMessageID = 'id-1'", _props(), True),
        ("JMSCorrelationID = 'c9'", _props(), True),
        ("JMSType = 'kind'", _props(), True),
        ("a = 1 and not b = 2", _props(a=1, b=3), True),  # keywords are case-insensitive
        ('"odd-name" = 1', _props(**{"odd-name": 1}), True),
    ],
)
def test_selector_evaluation(selector: str, message: Message, expected: bool) -> None:
    assert sb.Selector(selector).matches(message) is expected


# --- 4. dynamic nodes and 5. anonymous relay ----------------------------------------------


def test_dynamic_receiver_gets_replies_through_the_anonymous_relay(
    spec_broker: SpecBroker, client: Client
) -> None:
    replies = client.receiver(None, dynamic=True)
    address = replies.link.remote_source.address
    assert address and address.startswith("dynamic/")
    assert depth(spec_broker, address) == 0
    relay = client.sender(None)
    relay.send(Message(address=address, body="reply"))
    assert [m.body for m in replies.get(1)] == ["reply"]
    replies.close()
    assert depth(spec_broker, address) is None  # deleted with its link


def test_two_dynamic_receivers_get_different_addresses(client: Client) -> None:
    one = client.receiver(None, dynamic=True)
    two = client.receiver(None, dynamic=True)
    assert one.link.remote_source.address != two.link.remote_source.address


def test_dynamic_sender_target(spec_broker: SpecBroker, client: Client) -> None:
    sender = client.sender(None, options=[Options(dynamic_target=True)])
    address = sender.link.remote_target.address
    assert address and address.startswith("dynamic/")
    sender.send(Message(body="to the temporary queue"))
    rx = client.receiver(address)
    assert [m.body for m in rx.get(1)] == ["to the temporary queue"]
    sender.close()
    assert depth(spec_broker, address) is None


def test_anonymous_relay_routes_by_to_and_rejects_without_it(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    assert "ANONYMOUS-RELAY" in offered(client)
    relay = client.sender(None)
    relay.send(Message(address=unique_name, body="routed"))
    assert depth(spec_broker, unique_name) == 1
    dlv = client.send_raw(relay, Message(body="nowhere"))
    assert dlv.remote_state == Delivery.REJECTED
    assert condition(dlv) == "amqp:precondition-failed"


def test_receiver_without_address_is_refused(client: Client) -> None:
    error = refused(lambda: client.receiver(None))
    assert error.condition == "amqp:not-found"


# --- 6. drain ------------------------------------------------------------------------------


def test_drain_sends_what_there_is_then_zeroes_the_credit(
    client: Client, unique_name: str
) -> None:
    client.send(unique_name, 1, 2)
    rx = client.receiver(unique_name)
    assert [m.body for m in rx.drain(5)] == [1, 2]
    assert rx.link.credit == 0
    assert rx.drain(5) == []  # nothing queued: answered at once
    client.send(unique_name, 3)  # no credit now: it waits in the queue
    assert [m.body for m in rx.get(1)] == [3]


# --- 7. transactions ------------------------------------------------------------------------


class Txn:
    """A coordinator link driven by hand: declare, discharge, transactional states."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.coordinator = client.sender(None, options=[Options(coordinator=True)])

    def control(self, body: Any) -> Delivery:
        return self.client.send_raw(self.coordinator, Message(body=body))

    def declare(self) -> bytes:
        dlv = self.control(Described(symbol("amqp:declare:list"), [None]))
        assert dlv.remote_state == 0x33, dlv.remote_state
        txn_id = remote_data(dlv)[0]
        return bytes(txn_id)

    def discharge(self, txn_id: bytes, fail: bool) -> Delivery:
        return self.control(Described(symbol("amqp:discharge:list"), [txn_id, fail]))

    def send(self, sender: BlockingSender, txn_id: bytes, body: Any) -> Delivery:
        return self.client.send_raw(sender, Message(body=body), data=[txn_id], state=0x34)

    @staticmethod
    def accept(dlv: Delivery, txn_id: bytes) -> None:
        dlv.local.data = [txn_id, Described(ulong(0x24), [])]  # type: ignore[list-item]
        dlv.update(0x34)


def test_transactional_sends_wait_for_commit_and_vanish_on_abort(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    txn = Txn(client)
    sender = client.sender(unique_name)
    first = txn.declare()
    dlv = txn.send(sender, first, "committed")
    assert dlv.remote_state == 0x34  # transactional-state(accepted)
    assert isinstance(remote_data(dlv)[1], Described) and remote_data(dlv)[1].descriptor == 0x24
    assert depth(spec_broker, unique_name) == 0  # held until the discharge
    assert txn.discharge(first, fail=False).remote_state == Delivery.ACCEPTED
    assert depth(spec_broker, unique_name) == 1
    second = txn.declare()
    assert second != first
    txn.send(sender, second, "aborted")
    assert txn.discharge(second, fail=True).remote_state == Delivery.ACCEPTED
    assert depth(spec_broker, unique_name) == 1
    rx = client.receiver(unique_name)
    assert [m.body for m in rx.drain()] == ["committed"]


def test_transactional_accept_removes_on_commit_and_releases_on_abort(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.send(unique_name, "work")
    txn = Txn(client)
    rx = client.receiver(unique_name)
    rx.get(1)
    aborted = txn.declare()
    Txn.accept(rx.inbox.items[0][1], aborted)
    assert txn.discharge(aborted, fail=True).remote_state == Delivery.ACCEPTED
    assert [m.body for m in rx.get(1)] == ["work"]  # released back to the queue
    committed = txn.declare()
    Txn.accept(rx.inbox.items[1][1], committed)
    client.wait(lambda: rx.inbox.items[1][1].settled, "the broker settles")
    assert depth(spec_broker, unique_name) == 0
    assert txn.discharge(committed, fail=False).remote_state == Delivery.ACCEPTED
    assert rx.drain() == []
    stats = spec_broker.stats()["transactions"]
    assert stats["committed"] >= 1 and stats["aborted"] >= 1


def test_unknown_txn_id_is_rejected(client: Client, unique_name: str) -> None:
    txn = Txn(client)
    dlv = txn.discharge(b"no-such-txn", fail=False)
    assert dlv.remote_state == Delivery.REJECTED
    assert condition(dlv) == "amqp:transaction:unknown-id"
    sent = txn.send(client.sender(unique_name), b"no-such-txn", "lost")
    assert sent.remote_state == Delivery.REJECTED
    assert condition(sent) == "amqp:transaction:unknown-id"
    used = txn.declare()
    txn.discharge(used, fail=False)
    again = txn.discharge(used, fail=False)  # a discharged id is unknown from then on
    assert condition(again) == "amqp:transaction:unknown-id"


def test_broker_decided_rollback(spec_broker: SpecBroker, client: Client, unique_name: str) -> None:
    txn = Txn(client)
    txn_id = txn.declare()
    txn.send(client.sender(unique_name), txn_id, "discarded")
    txn.send(client.sender(sb.ROLLBACK_ON_COMMIT), txn_id, "poison")
    dlv = txn.discharge(txn_id, fail=False)
    assert dlv.remote_state == Delivery.REJECTED
    assert condition(dlv) == "amqp:transaction:rollback"
    assert depth(spec_broker, unique_name) == 0


def test_closing_the_coordinator_rolls_back(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    before = spec_broker.stats()["transactions"]["aborted"]
    txn = Txn(client)
    txn_id = txn.declare()
    txn.send(client.sender(unique_name), txn_id, "never")
    txn.coordinator.close()
    stats = spec_broker.stats()
    assert stats["transactions"]["aborted"] == before + 1
    assert stats["queues"][unique_name] == 0


def test_closing_the_connection_rolls_back(spec_broker: SpecBroker, unique_name: str) -> None:
    before = spec_broker.stats()["transactions"]
    c = Client(spec_broker)
    txn = Txn(c)
    txn_id = txn.declare()
    txn.send(c.sender(unique_name), txn_id, "never")
    c.close()
    after = spec_broker.stats()["transactions"]
    assert after["aborted"] == before["aborted"] + 1
    assert after["open"] == before["open"]
    assert depth(spec_broker, unique_name) == 0


def test_bad_control_messages_are_rejected(client: Client) -> None:
    txn = Txn(client)
    for body in ["not a control", Described(symbol("amqp:unknown:list"), [1])]:
        dlv = txn.control(body)
        assert dlv.remote_state == Delivery.REJECTED
        assert condition(dlv) == "amqp:decode-error"
    assert txn.declare()  # the coordinator still works


def test_refuse_coordinator_and_window() -> None:
    with SpecBroker(refuse_coordinator=True, window=3) as broker:
        c = Client(broker)
        error = refused(lambda: c.sender(None, options=[Options(coordinator=True)]))
        assert error.condition == "amqp:not-implemented"
        assert error.link.remote_target.type == Terminus.UNSPECIFIED  # a null target
        sender = c.sender("q")
        c.wait(lambda: sender.link.credit == 3, "the broker's credit")
        for n in range(7):  # more than the window: the broker keeps giving credit
            sender.send(Message(body=n))
        c.close()
        assert broker.stats()["queues"]["q"] == 7


# --- 8. settlement and outcomes -------------------------------------------------------------


def test_receiver_settle_mode_second(client: Client, unique_name: str) -> None:
    sender = client.sender(unique_name, options=[Options(rcv=Link.RCV_SECOND)])
    assert sender.link.remote_rcv_settle_mode == Link.RCV_SECOND
    dlv = client.send_raw(sender, Message(body="twice"))
    assert dlv.remote_state == Delivery.ACCEPTED
    assert not dlv.settled  # the broker waits for our settle
    dlv.settle()
    rx = client.receiver(unique_name)
    assert [m.body for m in rx.get(1)] == ["twice"]


def test_presettled_sender(spec_broker: SpecBroker, client: Client, unique_name: str) -> None:
    sender = client.sender(unique_name, options=[Options(snd=Link.SND_SETTLED)])
    assert sender.link.remote_snd_settle_mode == Link.SND_SETTLED
    sender.send(Message(body="fire and forget"))
    rx = client.receiver(unique_name)
    assert [m.body for m in rx.get(1)] == ["fire and forget"]


def test_presettled_consumer(spec_broker: SpecBroker, client: Client, unique_name: str) -> None:
    client.send(unique_name, "a", "b")
    rx = client.receiver(unique_name, options=[Options(snd=Link.SND_SETTLED)])
    assert rx.link.remote_snd_settle_mode == Link.SND_SETTLED
    rx.get(2)
    assert all(dlv.settled for _, dlv in rx.inbox.items)
    assert depth(spec_broker, unique_name) == 0


def test_released_goes_back_to_the_front(client: Client, unique_name: str) -> None:
    client.send(unique_name, 1, 2, 3)
    rx = client.receiver(unique_name)
    rx.get(2)
    rx.settle(1, Delivery.RELEASED)
    rx.settle(0, Delivery.RELEASED)
    again = rx.get(3)
    assert [m.body for m in again] == [1, 2, 3]
    assert [m.delivery_count for m in again] == [0, 0, 0]  # released: not a failed delivery


def test_modified_delivery_failed_counts_and_undeliverable_skips_the_link(
    client: Client, unique_name: str
) -> None:
    client.send(unique_name, "m")
    one = client.receiver(unique_name)
    one.get(1)
    one.settle(0, Delivery.MODIFIED, failed=True)
    again = one.get(1)
    assert again[0].delivery_count == 1
    one.settle(1, Delivery.MODIFIED, failed=True, undeliverable=True)
    assert one.drain() == []  # never offered to this link again
    two = client.receiver(unique_name)
    got = two.get(1)
    assert got[0].delivery_count == 2


def test_rejected_goes_to_dead_letter(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.send(unique_name, f"poison-{unique_name}")
    before = spec_broker.stats()["dead_letter"]
    rx = client.receiver(unique_name)
    rx.get(1)
    rx.settle(0, Delivery.REJECTED)
    assert rx.drain() == []
    assert spec_broker.stats()["dead_letter"] == before + 1
    dead = client.receiver(sb.DEAD_LETTER)
    bodies = [m.body for m in dead.get(before + 1)]
    assert f"poison-{unique_name}" in bodies


def test_unsettled_messages_return_when_the_consumer_goes(
    spec_broker: SpecBroker, client: Client, unique_name: str
) -> None:
    client.send(unique_name, "held")
    rx = client.receiver(unique_name)
    rx.get(1)
    assert depth(spec_broker, unique_name) == 0
    rx.close()
    assert depth(spec_broker, unique_name) == 1
    later = client.receiver(unique_name)
    assert later.get(1)[0].delivery_count == 1


# --- 9./10. what clients sent, in stats -----------------------------------------------------


def test_stats_record_open_and_attach(spec_broker: SpecBroker, unique_name: str) -> None:
    c = Client(
        spec_broker,
        container_id=unique_name,
        virtual_host="vhost.example",
        properties={symbol("product"): "test-client"},
        desired_capabilities=["ANONYMOUS-RELAY", "NO-SUCH-THING"],
        offered_capabilities=["X-OFFER"],
    )
    assert "ANONYMOUS-RELAY" in offered(c)
    c.receiver(
        unique_name,
        name="recorded",
        options=[
            SelectorOption("a = 1"),
            Options(properties={symbol("k"): "v"}, caps=["queue"], rcv=Link.RCV_FIRST),
        ],
    )
    stats = spec_broker.stats()
    (record,) = [r for r in stats["connections"] if r["container_id"] == unique_name]
    assert record["hostname"] == "vhost.example"
    assert record["properties"] == {"product": "test-client"}
    assert record["desired_capabilities"] == ["ANONYMOUS-RELAY", "NO-SUCH-THING"]
    assert record["offered_capabilities"] == ["X-OFFER"]
    assert record["max_frame_size"] > 0 and record["channel_max"] > 0
    assert record["sessions"] >= 1 and record["open"] is True
    (link,) = [x for x in record["links"] if x["name"] == "recorded"]
    assert link["role"] == "receiver" and link["source_address"] == unique_name
    assert link["properties"] == {"k": "v"}
    assert link["capabilities"] == ["queue"]
    assert "a = 1" in json.dumps(link["filters"])
    assert link["rcv_settle_mode"] == 0
    c.close()


def test_stats_keys(spec_broker: SpecBroker) -> None:
    stats = spec_broker.stats()
    assert set(stats) >= {
        "queues", "topics", "subscriptions", "dead_letter", "transactions", "connections"
    }
    assert set(stats["transactions"]) == {"declared", "committed", "aborted", "open"}


# --- 11. robustness -------------------------------------------------------------------------


def test_undecodable_message_is_rejected(client: Client, unique_name: str) -> None:
    sender = client.sender(unique_name)
    dlv = client.send_raw(sender, b"\x00\x53\x77\xa1\xff")  # amqp-value, truncated string
    assert dlv.remote_state == Delivery.REJECTED
    assert condition(dlv) == "amqp:decode-error"
    sender.send(Message(body="still fine"))


def test_garbage_on_the_socket_does_not_kill_the_broker(spec_broker: SpecBroker) -> None:
    with socket.create_connection((spec_broker.host, spec_broker.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
        sock.settimeout(WAIT)
        while sock.recv(4096):  # the broker answers with its header and closes
            pass
    assert spec_broker.running
    assert "queues" in spec_broker.stats()


def test_sigterm_exits_cleanly() -> None:
    broker = SpecBroker().start()
    popen = broker._popen
    assert popen is not None
    log_path = broker.log_path
    broker.keep_workdir = True
    try:
        broker.stop()
        assert popen.returncode == 0
        assert f"listening on {broker.port}" in log_path.read_text()
    finally:
        shutil.rmtree(log_path.parent, ignore_errors=True)
