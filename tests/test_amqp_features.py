"""AMQP 1.0 beyond links and outcomes, against every peer that has each feature, and the
clear refusal of those that do not: selectors, browsing, durable subscriptions, dynamic
nodes and request/reply, the anonymous relay, drain, local transactions.

The peers: the spec broker (tests/peers/spec_broker.py, an independent implementation of
all of them on proton-python's engine), RabbitMQ 3.10, the Proton C example broker and
amqscale's own listener. Each test is marked for docs/interop.md (tests/interop_plugin.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

import amqscale
from amqscale import Message, Source, Target, TransactionError
from amqscale.errors import LinkDetached
from amqscale.testing.brokers import SpecBroker

pytestmark = pytest.mark.timeout(180)

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def on(feature: str, *peers: str) -> Any:
    """Parametrize a test over `peers`, each marked for the interop matrix."""
    return pytest.mark.parametrize("peer", [
        pytest.param(peer, marks=pytest.mark.interop(feature, peer)) for peer in peers])


@pytest.fixture
def peer_url(request: pytest.FixtureRequest, peer: str) -> Iterator[str]:
    """The URL of the peer the test is parametrized with."""
    if peer == "spec-broker":
        yield request.getfixturevalue("spec_broker").url
    elif peer == "rabbitmq":
        yield request.getfixturevalue("rabbitmq").url
    elif peer == "proton-c":
        yield request.getfixturevalue("proton_c_broker").url
    elif peer == "rhea":
        yield request.getfixturevalue("rhea_peer").url
    elif peer == "amqscale":
        with amqscale.Container(workers=1) as server:
            yield server.listen("amqp://127.0.0.1:0").url
    else:
        raise AssertionError(peer)


@pytest.fixture
def container() -> Iterator[amqscale.Container]:
    with amqscale.Container(workers=2, container_id=unique("features")) as c:
        yield c


def _bodies(receiver: Any, count: int, timeout: float = 15) -> list[Any]:
    deliveries = [receiver.receive(timeout) for _ in range(count)]
    for delivery in deliveries:
        delivery.accept()
    return [d.message.body for d in deliveries]


def _send(conn: Any, address: str, messages: list[Message]) -> None:
    sender = conn.open_sender(address)
    for message in messages:
        sender.send(message)
    sender.flush(15)
    sender.close()


# ---- selectors ----------------------------------------------------------------------------


@on("selector", "spec-broker")
def test_a_selector_takes_only_what_matches_and_leaves_the_rest(
        container: Any, peer_url: str, spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url)
    queue = unique("colours")
    _send(conn, queue, [Message(body=i, properties={"colour": c, "n": i})
                        for i, c in enumerate(["red", "green", "red", "blue", "red"])])
    red = conn.open_receiver(queue, selector="colour = 'red' AND n > 0", credit=10)
    assert red.remote_source is not None
    assert red.remote_source.selector == "colour = 'red' AND n > 0"  # applied
    assert _bodies(red, 2) == [2, 4]
    with pytest.raises(TimeoutError):
        red.receive(0.3)
    rest = conn.open_receiver(queue, credit=10)
    assert _bodies(rest, 3) == [0, 1, 3]
    conn.close()


@on("selector", "spec-broker")
def test_a_selector_the_peer_cannot_parse_is_a_clear_refusal(container: Any,
                                                             peer_url: str) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="amqp:invalid-field"):
        conn.open_receiver(unique("q"), selector="colour = = 'red'")
    conn.open_sender(unique("q")).send(b"the connection goes on").wait(10)
    conn.close()


@on("selector", "rabbitmq", "proton-c")
def test_a_peer_that_ignores_selectors_says_so_in_its_source_or_not(
        container: Any, peer_url: str, peer: str, interop: Any) -> None:
    conn = container.connect(peer_url)
    receiver = conn.open_receiver(unique("q"), selector="a = 1")
    remote = receiver.remote_source
    assert remote is not None
    if peer == "proton-c":
        assert remote.selector is None  # left out: amqscale's user can tell
        interop.refused("the Proton C example broker ignores filters and leaves them out "
                        "of its attach: remote_source.selector is None")
    else:
        # RabbitMQ 3.10 echoes the filter yet does not apply it (PEERS.md).
        assert remote.selector == "a = 1"
        interop.refused("RabbitMQ 3.10 ignores selectors but echoes them in its attach "
                        "(its AMQP 1.0 plugin has no filters)")
    conn.close()


# ---- browsing -----------------------------------------------------------------------------


@on("browse (copy)", "spec-broker")
def test_browsing_sees_every_message_and_takes_none(container: Any, peer_url: str,
                                                    spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url)
    queue = unique("browsed")
    _send(conn, queue, [Message(body=i) for i in range(4)])
    browser = conn.open_receiver(Source(queue, distribution_mode="copy"), credit=10)
    assert browser.remote_source is not None
    assert browser.remote_source.distribution_mode == "copy"
    assert _bodies(browser, 4) == [0, 1, 2, 3]
    browser.close()
    assert spec_broker.stats()["queues"][queue] == 4  # all still there
    consumer = conn.open_receiver(queue, credit=10)
    assert _bodies(consumer, 4) == [0, 1, 2, 3]
    conn.close()


@on("browse (copy)", "proton-c", "rabbitmq")
def test_a_peer_that_cannot_browse_says_so_in_its_source_or_not(
        container: Any, peer_url: str, peer: str, interop: Any) -> None:
    conn = container.connect(peer_url)
    receiver = conn.open_receiver(Source(unique("q"), distribution_mode="copy"))
    assert receiver.remote_source is not None
    if peer == "proton-c":
        assert receiver.remote_source.distribution_mode is None
        interop.refused("the Proton C example broker consumes (no distribution modes): its "
                        "source has none, as remote_source.distribution_mode shows")
    else:
        assert receiver.remote_source.distribution_mode == "copy"
        interop.refused("RabbitMQ 3.10 echoes distribution-mode copy and consumes anyway "
                        "(PEERS.md): the echo cannot be trusted there")
    conn.close()


# ---- durable subscriptions -------------------------------------------------------------------


@on("durable subscription", "spec-broker")
def test_a_durable_subscription_outlives_its_subscriber(peer_url: str,
                                                        spec_broker: SpecBroker) -> None:
    topic, name, app = unique("news"), unique("sub"), unique("subscriber-app")
    durable = Source(topic, durable="unsettled-state", expiry_policy="never",
                     capabilities=["topic"])
    with amqscale.Container(workers=1, container_id=app) as subscriber:
        conn = subscriber.connect(peer_url)
        receiver = conn.open_receiver(durable, name=name)
        assert receiver.remote_source is not None
        assert receiver.remote_source.durable_subscription
        receiver.detach()  # the subscription stays
    with amqscale.Container(workers=1) as publisher:
        _send(publisher.connect(peer_url), topic, [Message(body=f"while away {i}")
                                                   for i in range(3)])
    assert spec_broker.stats()["subscriptions"][f"{app}|{name}"] == 3
    with amqscale.Container(workers=1, container_id=app) as subscriber:  # a new process
        conn = subscriber.connect(peer_url)
        receiver = conn.open_receiver(durable, name=name, credit=10)
        assert _bodies(receiver, 3) == [f"while away {i}" for i in range(3)]
        receiver.close()  # ends it
    assert f"{app}|{name}" not in spec_broker.stats()["subscriptions"]


@on("durable subscription", "spec-broker")
def test_a_topic_subscription_on_k_shards_gets_k_copies_unless_shared(
        container: Any, peer_url: str) -> None:
    conn = container.connect(peer_url, shards=2)
    topic = unique("fanout")
    per_shard = conn.open_receiver(Source(topic, capabilities=["topic"]), credit=10)
    shared = conn.open_receiver(Source(topic, capabilities=["topic", "shared"]),
                                name=unique("shared"), credit=10)
    _send(conn, topic, [Message(body="once")])
    assert _bodies(per_shard, 2) == ["once", "once"]  # one subscription per shard
    assert _bodies(shared, 1) == ["once"]  # one subscription shared by both links
    with pytest.raises(TimeoutError):
        shared.receive(0.3)
    conn.close()


# ---- dynamic nodes and request/reply ---------------------------------------------------------


@on("dynamic node", "spec-broker", "amqscale")
def test_request_reply_over_a_dynamic_reply_queue(container: Any, peer_url: str,
                                                  peer: str) -> None:
    conn = container.connect(peer_url)
    replies = conn.open_receiver(None, dynamic=True)
    assert replies.address
    if peer == "amqscale":
        assert replies.address.startswith("amqscale.dynamic.")
        conn.close()
        return  # amqscale's listener names the node; routing is the user's (server_direct)
    requests = unique("requests")
    server_in = conn.open_receiver(requests, credit=10)
    relay = conn.open_sender(None)  # the spec broker offers ANONYMOUS-RELAY
    client = conn.open_sender(requests)
    for i in range(3):
        client.send(Message(body=f"ping {i}", reply_to=replies.address, correlation_id=i))
    for _ in range(3):
        request = server_in.receive(15)
        message = request.message
        relay.send(Message(address=message.reply_to, body=message.body.upper(),
                           correlation_id=message.correlation_id)).wait(15)
        request.accept()
    got = [replies.receive(15).message for _ in range(3)]
    assert sorted((m.correlation_id, m.body) for m in got) == [(i, f"PING {i}")
                                                              for i in range(3)]
    conn.close()


@on("dynamic node", "rabbitmq")
def test_a_peer_without_dynamic_nodes_refuses_clearly(container: Any, peer_url: str,
                                                      interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="amqp:not-implemented"):
        conn.open_receiver(None, dynamic=True)
    interop.refused("RabbitMQ 3.10: amqp:not-implemented, 'Dynamic sources not supported'")
    conn.close()


# ---- the anonymous relay ---------------------------------------------------------------------


@on("anonymous relay", "spec-broker", "amqscale")
def test_the_anonymous_relay_routes_each_message_by_its_address(
        container: Any, peer_url: str, peer: str) -> None:
    conn = container.connect(peer_url)
    assert "ANONYMOUS-RELAY" in conn.remote_offered_capabilities
    relay = conn.open_sender(None)
    queues = [unique("relay"), unique("relay")]
    trackers = [relay.send(Message(address=q, body=q)) for q in queues]
    if peer == "amqscale":
        return  # the listener's receiver takes them (tests/test_amqp_links.py)
    assert all(t.wait(15).accepted for t in trackers)
    for queue in queues:
        assert _bodies(conn.open_receiver(queue), 1) == [queue]
    with pytest.raises(ValueError, match="needs each Message's address"):
        relay.send(Message(body="nowhere"))
    conn.close()


@on("anonymous relay", "rabbitmq", "proton-c")
def test_no_anonymous_sender_where_the_relay_is_not_offered(
        container: Any, peer_url: str, interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="does not offer ANONYMOUS-RELAY"):
        conn.open_sender(None)
    interop.refused("not offered in the peer's open (the Proton C example broker crashes "
                    "on a null target; amqscale never sends it one)")
    conn.close()


# ---- drain ------------------------------------------------------------------------------------


@on("drain", "spec-broker", "rabbitmq", "amqscale")
def test_drain_returns_what_the_peer_had(container: Any, peer_url: str, peer: str) -> None:
    conn = container.connect(peer_url)
    queue = unique("drained")
    receiver = conn.open_receiver(queue, credit=20)
    if peer != "amqscale":
        _send(conn, queue, [Message(body=i) for i in range(5)])
    have = receiver.drain(15)
    expected = 0 if peer == "amqscale" else 5
    assert have <= expected
    assert _bodies(receiver, expected) == list(range(expected))
    assert receiver.drain(15) == 0
    conn.close()


@on("drain", "proton-c")
def test_a_peer_that_never_answers_a_drain_times_out(container: Any, peer_url: str,
                                                     interop: Any) -> None:
    conn = container.connect(peer_url)
    receiver = conn.open_receiver(unique("q"), credit=5)
    with pytest.raises(TimeoutError, match="answer the drain"):
        receiver.drain(1.0)
    interop.refused("the Proton C example broker never answers a drain: drain(timeout) "
                    "raises TimeoutError")
    conn.close()


# ---- transactions ----------------------------------------------------------------------------


@on("transactions", "spec-broker")
def test_a_committed_transaction_sends_and_consumes_together(
        container: Any, peer_url: str, spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url)
    source, target = unique("tx-in"), unique("tx-out")
    _send(conn, source, [Message(body="request")])
    receiver = conn.open_receiver(source, credit=1)
    sender = conn.open_sender(target)
    delivery = receiver.receive(15)
    with conn.transaction() as txn:
        tracker = txn.send(sender, Message(body="reply"))
        txn.accept(delivery)
        assert txn.state == "open" and txn.id
        assert spec_broker.stats()["queues"].get(target, 0) == 0  # not before the commit
    assert txn.state == "committed" and tracker.wait(15).accepted
    stats = spec_broker.stats()
    assert stats["queues"][target] == 1 and stats["queues"].get(source, 0) == 0
    conn.close()


@on("transactions", "spec-broker")
def test_an_aborted_transaction_leaves_nothing_behind(container: Any, peer_url: str,
                                                      spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url)
    source, target = unique("tx-in"), unique("tx-out")
    _send(conn, source, [Message(body="kept")])
    receiver = conn.open_receiver(source, credit=1)
    sender = conn.open_sender(target)
    delivery = receiver.receive(15)
    txn = conn.transaction()
    txn.send(sender, Message(body="dropped"))
    txn.accept(delivery)
    txn.abort()
    assert txn.state == "aborted"
    with pytest.raises(TransactionError, match="aborted, not open"):
        txn.send(sender, Message(body="too late"))
    assert spec_broker.stats()["queues"].get(target, 0) == 0
    assert receiver.receive(15).message.body == "kept"  # released back to us
    with pytest.raises(RuntimeError, match="boom"), conn.transaction() as failing:
        failing.send(sender, Message(body="also dropped"))
        raise RuntimeError("boom")
    assert failing.state == "aborted"
    assert spec_broker.stats()["queues"].get(target, 0) == 0
    conn.close()


@on("transactions", "spec-broker")
def test_a_transaction_the_peer_rolls_back_fails_the_commit(container: Any,
                                                            peer_url: str) -> None:
    conn = container.connect(peer_url)
    doomed = conn.open_sender("$rollback-on-commit")
    txn = conn.transaction()
    txn.send(doomed, Message(body="x"))
    with pytest.raises(TransactionError, match="amqp:transaction:rollback") as raised:
        txn.commit()
    assert raised.value.condition == "amqp:transaction:rollback"
    assert txn.state == "failed"
    conn.close()


@on("transactions", "spec-broker")
def test_a_sharded_connection_s_transaction_is_its_first_shard(container: Any,
                                                               peer_url: str) -> None:
    conn = container.connect(peer_url, shards=2)
    sender = conn.open_sender(unique("tx"))
    with conn.transaction() as txn:
        assert txn.send(sender, Message(body=1))  # the sender's link on shard 0
    other = container.connect(peer_url)
    foreign = other.open_sender(unique("tx"))
    txn = conn.transaction()
    with pytest.raises(ValueError, match="no link on the transaction's connection"):
        txn.send(foreign, Message(body=2))
    txn.abort()
    conn.close()
    other.close()


def test_a_coordinator_that_refuses_is_a_clear_declare_failure() -> None:
    with SpecBroker(refuse_coordinator=True) as broker, amqscale.Container(workers=1) as c:
        conn = c.connect(broker.url)
        with pytest.raises(TransactionError, match="amqp:not-implemented"):
            conn.transaction()
        conn.open_sender("after").send(b"the connection goes on").wait(15)


@on("transactions", "rabbitmq")
def test_a_peer_without_transactions_refuses_the_declare(container: Any, peer_url: str,
                                                         interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(TransactionError, match="amqp:not-implemented"):
        conn.transaction()
    interop.refused("RabbitMQ 3.10: the coordinator link is refused, amqp:not-implemented "
                    "'Transactions not supported'")
    conn.close()


def test_the_asyncio_face_commits_and_aborts(spec_broker: SpecBroker) -> None:
    import asyncio

    from amqscale import aio

    async def main() -> None:
        async with aio.Container(workers=1) as container:
            conn = await container.connect(spec_broker.url)
            target = unique("aio-tx")
            sender = await conn.open_sender(target)
            async with await conn.transaction() as txn:
                tracker = txn.send(sender, Message(body="committed"))
            assert txn.state == "committed" and (await tracker).accepted
            txn = await conn.transaction()
            txn.send(sender, Message(body="aborted"))
            await txn.abort()
            receiver = await conn.open_receiver(target)
            got = await receiver.receive(15)
            assert got.message.body == "committed"
            got.accept()
            with pytest.raises(TimeoutError):
                await receiver.receive(0.3)
            await conn.aclose()

    asyncio.run(main())


# ---- a target the peer creates ----------------------------------------------------------------


@on("dynamic node", "spec-broker")
def test_a_dynamic_target_is_a_node_the_peer_names(container: Any, peer_url: str) -> None:
    conn = container.connect(peer_url)
    sender = conn.open_sender(Target(dynamic=True))
    assert sender.address and sender.remote_target is not None
    sender.send(Message(body="to the new node")).wait(15)
    assert _bodies(conn.open_receiver(sender.address), 1) == ["to the new node"]
    conn.close()


# ---- Python's own types on receipt -----------------------------------------------------------


def test_a_receiver_may_take_timestamps_and_decimals_as_python_s_types(
        container: Any, spec_broker: SpecBroker) -> None:
    import datetime
    import decimal

    from amqscale.types import decimal128, timestamp

    when = datetime.datetime(2026, 12, 1, 12, 30, 5, 123000, tzinfo=datetime.timezone.utc)
    price = decimal.Decimal("12.50")
    conn = container.connect(spec_broker.url)
    queue = unique("natives")
    _send(conn, queue, [Message(body={"at": when, "price": price}, properties={"at": when})
                        for _ in range(2)])
    native = conn.open_receiver(queue, credit=1, datetimes=True, decimals=True)
    got = native.receive(15)
    got.accept()
    assert got.message.body == {"at": when, "price": price}
    assert got.message.properties == {"at": when}
    native.close()
    plain = conn.open_receiver(queue, credit=1)
    body = plain.receive(15).message.body
    assert type(body["at"]) is timestamp and body["at"] == int(when.timestamp() * 1000)
    assert type(body["price"]) is decimal128  # lossless by default
    with pytest.raises(TypeError, match="bools"):
        conn.open_receiver(queue, datetimes="yes")  # type: ignore[call-overload]
    conn.close()


# ---- receiver settle mode second ------------------------------------------------------------


@on("rcv-settle-mode second", "spec-broker")
def test_receiver_settle_mode_second_both_ways(container: Any, peer_url: str,
                                               spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url)
    queue = unique("second")
    sender = conn.open_sender(queue, rcv_settle_mode="second", name=unique("s2"))
    trackers = [sender.send(Message(body=i)) for i in range(3)]
    assert all(t.wait(15).accepted for t in trackers)  # the broker settled after us
    receiver = conn.open_receiver(queue, rcv_settle_mode="second", credit=5,
                                  name=unique("r2"))
    assert _bodies(receiver, 3) == [0, 1, 2]
    stats = spec_broker.stats()
    links = {x["name"]: x for c in stats["connections"] for x in c["links"]}
    assert links[receiver_name(receiver)]["rcv_settle_mode"] == 1
    receiver.close()
    assert spec_broker.stats()["queues"].get(queue, 0) == 0  # accepted and settled
    with pytest.raises(ValueError, match="rcv_settle_mode must be"):
        conn.open_receiver(queue, rcv_settle_mode="third")
    conn.close()


def receiver_name(receiver: Any) -> str:
    return next(iter(receiver._state.links.values())).attach.name


# ---- manual credit: a pull consumer -----------------------------------------------------------


@on("drain", "spec-broker")
def test_a_pull_consumer_grants_its_own_credit_and_drains(container: Any, peer_url: str,
                                                          spec_broker: SpecBroker) -> None:
    conn = container.connect(peer_url, shards=2)
    queue = unique("pull")
    _send(conn, queue, [Message(body=i) for i in range(7)])
    receiver = conn.open_receiver(queue, credit=0)
    with pytest.raises(TimeoutError):
        receiver.receive(0.3)  # no credit, nothing comes
    receiver.flow(4)
    have = receiver.drain(15)  # at most 4, what the broker had for each link
    assert have == 4
    first = _bodies(receiver, 4)
    assert receiver.drain(15) == 0  # no credit was granted again
    receiver.flow(10)
    assert receiver.drain(15) == 3
    assert sorted(first + _bodies(receiver, 3)) == list(range(7))
    assert spec_broker.stats()["queues"].get(queue, 0) == 0
    with pytest.raises(ValueError, match="credit must be a positive int"):
        receiver.flow(0)
    with pytest.raises(ValueError, match="credit must be a positive int"):
        conn.open_receiver(queue, credit=0, handler="amqscale.handlers:MessagingHandler")
    conn.close()


@on("rcv-settle-mode second", "rabbitmq")
def test_a_peer_without_settle_mode_second_refuses_the_link(container: Any, peer_url: str,
                                                            interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="amqp:not-implemented"):
        conn.open_receiver(unique("q"), rcv_settle_mode="second")
    with pytest.raises(LinkDetached, match="amqp:not-implemented"):
        conn.open_sender(unique("q"), rcv_settle_mode="second")
    conn.open_sender(unique("q")).send(b"the connection goes on").wait(15)
    interop.refused("RabbitMQ 3.10: amqp:not-implemented, 'rcv-settle-mode second not "
                    "supported'")
    conn.close()


# ---- rhea as the peer ----------------------------------------------------------------------


@on("drain", "rhea")
def test_drain_against_rhea(container: Any, peer_url: str) -> None:
    conn = container.connect(peer_url)
    finite = conn.open_receiver("count/3", credit=10, name=unique("finite"))
    assert finite.drain(15) == 3  # all it had, then the credit back
    assert [m.message.body for m in (finite.receive(0) for _ in range(3))] == [
        f"message-{i}" for i in range(3)]
    endless = conn.open_receiver(unique("endless"), credit=5, name=unique("endless"))
    assert endless.drain(15) == 5  # the transfers used the credit up
    conn.close()


@on("dynamic node", "rhea")
def test_rhea_answers_a_dynamic_source_without_an_address(container: Any, peer_url: str,
                                                          interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="dynamic source without an address"):
        conn.open_receiver(None, dynamic=True)
    interop.refused("the rhea peer here mirrors a dynamic source without naming a node: "
                    "amqscale says so (LinkDetached)")
    conn.close()


@on("anonymous relay", "rhea")
def test_no_anonymous_sender_to_rhea(container: Any, peer_url: str, interop: Any) -> None:
    conn = container.connect(peer_url)
    with pytest.raises(LinkDetached, match="does not offer ANONYMOUS-RELAY"):
        conn.open_sender(None)
    interop.refused("the rhea peer's open offers no ANONYMOUS-RELAY")
    conn.close()


# ---- the open frame, each peer -------------------------------------------------------------


@on("open: properties and capabilities", "rhea", "rabbitmq", "spec-broker", "amqscale")
def test_each_peer_s_open_reaches_us_and_ours_reaches_it(
        container: Any, peer_url: str, peer: str, request: pytest.FixtureRequest) -> None:
    conn = container.connect(peer_url, properties={"client": "features"},
                             desired_capabilities=["ANONYMOUS-RELAY"])
    assert conn.remote_container is not None  # (the spec broker's is "")
    if peer == "rabbitmq":
        assert conn.remote_properties["product"] == "RabbitMQ"
    if peer in ("spec-broker", "amqscale"):
        assert "ANONYMOUS-RELAY" in conn.remote_offered_capabilities
    if peer == "spec-broker":
        seen = [c for c in request.getfixturevalue("spec_broker").stats()["connections"]
                if (c["properties"] or {}).get("client") == "features"]
        assert seen and "ANONYMOUS-RELAY" in seen[-1]["desired_capabilities"]
    conn.close()


@pytest.mark.parametrize("peer", [pytest.param("spec-broker", marks=[
    pytest.mark.interop("send", "spec-broker"), pytest.mark.interop("receive", "spec-broker")])])
def test_send_and_receive_through_the_spec_broker(container: Any, peer_url: str) -> None:
    conn = container.connect(peer_url)
    queue = unique("plain")
    _send(conn, queue, [Message(id=i, body=f"body {i}") for i in range(50)])
    assert _bodies(conn.open_receiver(queue, credit=20), 50) == [f"body {i}" for i in range(50)]
    conn.close()
