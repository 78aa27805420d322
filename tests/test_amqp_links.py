"""What an attach and an open carry, end to end: termini (filters, distribution mode,
durability, expiry, capabilities, dynamic nodes), link and connection properties,
capabilities, explicit sessions, drain, detach versus close, the anonymous relay.

The observer is proton-python (its own reactor in a thread of the test process): it
records each field as the wire carried it and answers as the test configures it, so what
amqscale sent and what it reports back are both checked against an implementation that
shares no code with it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from proton import Array, Data, Endpoint, Terminus
from proton import Message as ProtonMessage
from proton_peers import _Listening, wait_for

import amqscale
from amqscale import aio
from amqscale.errors import LinkDetached
from amqscale.terminus import SELECTOR_DESCRIPTOR, Source, Target
from amqscale.testing._process import free_port

pytestmark = pytest.mark.timeout(120)


class Observer(_Listening):
    """Listens; records every open, session and attach; mirrors each attach (a dynamic
    terminus gets `dynamic_address`); as a sender, offers `queued` messages per link and
    answers drains unless `answer_drain` is False; accepts what it receives."""

    def __init__(self, *, dynamic_address: str | None = "node-1", queued: int = 0,
                 answer_drain: bool = True, offered: list[str] | None = None,
                 properties: dict[str, Any] | None = None) -> None:
        super().__init__(prefetch=0, auto_accept=True)
        self.port = free_port()
        self.dynamic_address = dynamic_address
        self.queued = queued
        self.answer_drain = answer_drain
        self.offered = offered
        self.properties = properties
        self.opens: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []
        self.closes: list[tuple[str, bool]] = []  # (link name, closed) of remote detaches
        self.messages: list[ProtonMessage] = []
        self.drains = 0
        self.drained = threading.Event()
        self.credits: list[int] = []
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()

    def on_connection_init(self, event: Any) -> None:
        conn = event.connection
        if self.offered:
            conn.offered_capabilities = self.offered
        if self.properties:
            conn.properties = self.properties

    def on_connection_opening(self, event: Any) -> None:
        conn, transport = event.connection, event.transport
        self.opens.append({
            "container": conn.remote_container, "hostname": conn.remote_hostname,
            "properties": dict(conn.remote_properties or {}),
            "offered": list(conn.remote_offered_capabilities or []),
            "desired": list(conn.remote_desired_capabilities or []),
            "max_frame": transport.remote_max_frame_size,
            "channel_max": transport.remote_channel_max,
            "idle_timeout": transport.remote_idle_timeout,
        })

    def on_link_opening(self, event: Any) -> None:
        link = event.link
        source, target = link.remote_source, link.remote_target
        self.links.append({
            "name": link.name, "is_sender": link.is_sender,
            "session": hash(link.session), "properties": dict(link.remote_properties or {}),
            "source": _terminus(source), "target": _terminus(target),
        })
        self.mirror(link)
        for ours in (link.source, link.target):
            if ours.dynamic and self.dynamic_address is not None:
                ours.address = self.dynamic_address
        if link.is_receiver:
            link.flow(100)

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if not link.is_sender:
            return
        with self.lock:
            self.credits.append(link.credit)
            sent = self.sent.get(link.name, 0)
            while link.credit and sent < self.queued:
                link.send(ProtonMessage(id=sent, body=f"message-{sent}"))
                sent += 1
            self.sent[link.name] = sent
            if link.drain_mode:
                self.drains += 1
                if self.answer_drain:
                    link.drained()
                    self.drained.set()

    def on_link_remote_close(self, event: Any) -> None:
        self.closes.append((event.link.name, True))
        self._answer_detach(event.link)

    def on_link_remote_detach(self, event: Any) -> None:
        self.closes.append((event.link.name, False))
        self._answer_detach(event.link)

    @staticmethod
    def _answer_detach(link: Any) -> None:
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    def on_message(self, event: Any) -> None:
        self.messages.append(event.message)


def _terminus(term: Any) -> dict[str, Any]:
    filters = term.filter
    filters.rewind()
    return {
        "type": term.type, "address": term.address, "dynamic": term.dynamic,
        "durability": term.durability, "expiry": term.expiry_policy,
        "timeout": term.timeout, "distribution": term.distribution_mode,
        "capabilities": _symbols(term.capabilities),
        "filter": filters.get_object() if filters.next() else None,
    }


def _symbols(data: Data) -> list[str]:
    data.rewind()
    if not data.next():
        return []
    value = data.get_object()
    if isinstance(value, Array):
        return [str(x) for x in value.elements]
    return [str(value)]


@pytest.fixture
def container() -> Any:
    with amqscale.Container(workers=2, container_id="amqp-links-test") as c:
        yield c


# ---- the open frame ---------------------------------------------------------------------


@pytest.mark.interop("open: properties and capabilities", "proton-python")
def test_our_open_carries_its_fields_and_the_peers_come_back(container: Any) -> None:
    with Observer(offered=["ANONYMOUS-RELAY", "x-peer-cap"],
                  properties={"product": "observer", "version": "1"}) as peer:
        conn = container.connect(
            peer.url, virtual_host="vhost-a", idle_timeout=20, max_frame_size=4096,
            channel_max=9, properties={"client": "amqscale", "n": 7},
            offered_capabilities="x-offer", desired_capabilities=["ANONYMOUS-RELAY"])
        seen = peer.opens[0]
        assert seen["container"] == "amqp-links-test"
        assert seen["hostname"] == "vhost-a"
        assert seen["properties"] == {"client": "amqscale", "n": 7}
        assert seen["offered"] == ["x-offer"] and seen["desired"] == ["ANONYMOUS-RELAY"]
        assert seen["max_frame"] == 4096 and seen["channel_max"] == 9
        # proton advertises half of its own timeout, so that the peer's heartbeats come
        # at least twice within it (as proton-python does).
        assert seen["idle_timeout"] == 10.0
        assert conn.remote_offered_capabilities == ["ANONYMOUS-RELAY", "x-peer-cap"]
        assert conn.remote_properties == {"product": "observer", "version": "1"}
        assert conn.remote_container is not None and conn.remote_max_frame_size > 0
        conn.close()


@pytest.mark.parametrize("kwargs, error", [
    ({"max_frame_size": 100}, "at least 512"),
    ({"channel_max": 70000}, "channel_max"),
    ({"properties": ["not", "a", "map"]}, "properties must be a dict"),
    ({"offered_capabilities": [""]}, "offered_capabilities"),
    ({"properties": {"bad": object()}}, "properties"),
])
def test_bad_open_fields_are_refused_at_connect(container: Any, kwargs: dict[str, Any],
                                                 error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        container.connect("amqp://127.0.0.1:1", **kwargs)


# ---- termini and link properties -----------------------------------------------------


@pytest.mark.interop("link: termini and properties", "proton-python")
def test_a_source_reaches_the_peer_field_by_field_and_its_answer_comes_back(
        container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        source = Source("orders", selector="colour = 'red'", distribution_mode="copy",
                        durable="unsettled-state", expiry_policy="never", timeout=30,
                        capabilities=["topic", "shared"])
        receiver = conn.open_receiver(source, name="sub-1", properties={"purpose": "t"})
        link = peer.links[0]
        assert link["name"] == "sub-1"  # as given: one link
        assert link["properties"] == {"purpose": "t"}
        got = link["source"]
        assert got["address"] == "orders" and got["distribution"] == Terminus.DIST_MODE_COPY
        assert got["durability"] == Terminus.DELIVERIES
        assert got["expiry"] == Terminus.EXPIRE_NEVER and got["timeout"] == 30
        assert got["capabilities"] == ["topic", "shared"]
        selector = got["filter"]["selector"]
        assert selector.descriptor == SELECTOR_DESCRIPTOR and selector.value == "colour = 'red'"
        remote = receiver.remote_source
        assert remote is not None and remote.selector == "colour = 'red'"
        assert remote.distribution_mode == "copy" and remote.durable_subscription
        assert remote.capabilities == ("topic", "shared")
        assert receiver.source == source
        conn.close()


@pytest.mark.interop("link: termini and properties", "proton-python")
def test_a_target_and_a_sender_s_link_properties_reach_the_peer(container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        sender = conn.open_sender(Target("events", durable="configuration",
                                         capabilities="queue"), properties={"k": 1})
        sender.send(b"x").wait(10)
        link = peer.links[0]
        assert link["target"]["address"] == "events"
        assert link["target"]["durability"] == Terminus.CONFIGURATION
        assert link["target"]["capabilities"] == ["queue"]
        assert link["properties"] == {"k": 1}
        assert sender.remote_target == Target("events", durable="configuration",
                                              capabilities=("queue",))
        conn.close()


def test_a_sharded_receiver_names_each_link_apart_a_durable_subscription_is_one_link(
        container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url, shards=2)
        conn.open_receiver("q", name="plain")
        conn.open_receiver(Source("t", durable="unsettled-state", expiry_policy="never"),
                           name="durable-sub")
        names = [x["name"] for x in peer.links]
        assert len(names) == 3 and names[2] == "durable-sub"
        assert all(n.startswith("plain-r-") for n in names[:2]) and names[0] != names[1]
        conn.close()


@pytest.mark.parametrize("make, error", [
    (lambda: Source("q", durable="forever"), "durable must be one of"),
    (lambda: Source("q", expiry_policy="soon"), "expiry_policy must be one of"),
    (lambda: Source("q", distribution_mode="steal"), "distribution_mode must be one of"),
    (lambda: Source("q", dynamic=True), "dynamic terminus has no address"),
    (lambda: Source("q", selector=""), "selector must be a non-empty str"),
    (lambda: Source("q", timeout=-1), "timeout must be whole seconds"),
    (lambda: Source("q", capabilities=[1]), "capabilities must be non-empty strs"),
    (lambda: Source("q", filters={"f": object()}), "filters"),
    (lambda: Target("q", dynamic_node_properties=[1]), "must be a dict"),
])
def test_bad_termini_are_refused_where_they_are_made(make: Any, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        make()


def test_bad_link_arguments_are_refused_before_anything_is_sent(container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        with pytest.raises(ValueError, match="durable subscription needs name="):
            conn.open_receiver(Source("t", durable="configuration", expiry_policy="never"))
        with pytest.raises(ValueError, match="needs an address, or dynamic=True"):
            conn.open_receiver(None)
        with pytest.raises(ValueError, match="not beside it"):
            conn.open_receiver(Source("q"), selector="a = 1")
        with pytest.raises(TypeError, match="address must be"):
            conn.open_sender(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="properties must be a dict"):
            conn.open_sender("q", properties=[1])  # type: ignore[arg-type]
        assert peer.links == []
        conn.close()


# ---- dynamic nodes -----------------------------------------------------------------------


@pytest.mark.interop("dynamic node", "proton-python")
def test_a_dynamic_receiver_is_one_link_named_by_the_peer(container: Any) -> None:
    with Observer(dynamic_address="tmp.reply-7") as peer:
        conn = container.connect(peer.url, shards=2)
        receiver = conn.open_receiver(None, dynamic=True)
        assert receiver.address == "tmp.reply-7"
        assert receiver.remote_source is not None and receiver.remote_source.dynamic
        assert len(peer.links) == 1
        assert peer.links[0]["source"]["dynamic"] and peer.links[0]["source"]["address"] is None
        sender = conn.open_sender(Target(dynamic=True))
        assert sender.address == "tmp.reply-7" and len(peer.links) == 2
        conn.close()


def test_a_dynamic_source_answered_without_an_address_is_a_clear_error(
        container: Any) -> None:
    with Observer(dynamic_address=None) as peer:
        conn = container.connect(peer.url)
        with pytest.raises(LinkDetached, match="dynamic source without an address"):
            conn.open_receiver(None, dynamic=True)
        wait_for(lambda: peer.closes != [], 10, "the detach")
        conn.close()


@pytest.mark.interop("dynamic node", "amqscale")
def test_the_listener_names_a_dynamic_node_and_offers_the_anonymous_relay(
        container: Any) -> None:
    listener = container.listen("amqp://127.0.0.1:0")
    conn = container.connect(listener.url)
    assert "ANONYMOUS-RELAY" in conn.remote_offered_capabilities
    receiver = conn.open_receiver(None, dynamic=True)
    assert receiver.address and receiver.address.startswith("amqscale.dynamic.")
    other = conn.open_receiver(None, dynamic=True)
    assert other.address != receiver.address
    conn.close()
    listener.close()


# ---- the anonymous relay ----------------------------------------------------------------


def test_the_anonymous_relay_to_amqscale_s_listener(container: Any) -> None:
    listener = container.listen("amqp://127.0.0.1:0")
    conn = container.connect(listener.url)
    sender = conn.open_sender(None)
    with pytest.raises(TypeError, match="anonymous relay"):
        sender.send(b"no address")
    with pytest.raises(ValueError, match="needs each Message's address"):
        sender.send_many([amqscale.Message(body=1, address="a"), amqscale.Message(body=2)])
    trackers = [sender.send(amqscale.Message(body=i, address=f"queue-{i}")) for i in range(3)]
    got = [listener.receiver.receive(10) for _ in range(3)]
    assert [(d.message.address, d.message.body) for d in got] == [
        (f"queue-{i}", i) for i in range(3)]  # the refused ones never went
    for delivery in got:
        delivery.accept()
    assert all(t.wait(10).accepted for t in trackers)
    with pytest.raises(TimeoutError):
        listener.receiver.receive(0.2)
    conn.close()
    listener.close()


@pytest.mark.interop("anonymous relay", "proton-python")
def test_the_anonymous_relay_to_a_proton_peer(container: Any) -> None:
    with Observer(offered=["ANONYMOUS-RELAY"]) as peer:
        conn = container.connect(peer.url)
        sender = conn.open_sender(None)
        sender.send(amqscale.Message(body="hello", address="somewhere")).wait(10)
        assert peer.links[0]["target"]["address"] is None
        assert peer.links[0]["target"]["type"] == Terminus.TARGET
        assert [(m.address, m.body) for m in peer.messages] == [("somewhere", "hello")]
        conn.close()


def test_no_anonymous_sender_to_a_peer_that_does_not_offer_the_relay(container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        with pytest.raises(LinkDetached, match="does not offer ANONYMOUS-RELAY"):
            conn.open_sender(None)
        assert peer.links == []  # nothing was attached
        conn.open_sender("named").send(b"x").wait(10)  # the connection is fine
        conn.close()


# ---- drain ----------------------------------------------------------------------------------


@pytest.mark.interop("drain", "proton-python")
def test_drain_returns_once_the_peer_answered_and_the_credit_comes_back(
        container: Any) -> None:
    with Observer(queued=3) as peer:
        conn = container.connect(peer.url)
        receiver = conn.open_receiver("q", credit=10)
        wait_for(lambda: sum(peer.sent.values()) == 3, 10, "the peer's three messages")
        assert receiver.drain(10) == 3
        assert peer.drained.is_set() and peer.drains == 1
        assert [receiver.receive(0).message.body for _ in range(3)] == [
            f"message-{i}" for i in range(3)]
        # The credit was granted again after the drain: the peer sees some again.
        wait_for(lambda: peer.credits[-1] > 0, 10, "credit after the drain")
        assert receiver.drain(10) == 0 and peer.drains == 2
        conn.close()


def test_a_drain_the_peer_never_answers_times_out_and_the_receiver_goes_on(
        container: Any) -> None:
    with Observer(queued=1, answer_drain=False) as peer:
        conn = container.connect(peer.url)
        receiver = conn.open_receiver("q", credit=5)
        assert receiver.receive(10).message.body == "message-0"
        with pytest.raises(TimeoutError, match="answer the drain"):
            receiver.drain(0.5)
        assert peer.drains == 1
        conn.close()


@pytest.mark.interop("drain", "amqscale")
def test_amqscale_answers_a_drain_as_a_sender(container: Any) -> None:
    """A proton-python receiver drains a link to amqscale's listener: amqscale, with
    nothing to send, gives the credit back (pn_link_drained)."""
    from proton.utils import BlockingConnection

    listener = container.listen("amqp://127.0.0.1:0")
    client = BlockingConnection(listener.url, timeout=10)
    try:
        receiver = client.create_receiver("anything", credit=0)
        receiver.link.drain(5)
        client.wait(lambda: receiver.link.credit == 0 and not receiver.link.draining(),
                    timeout=10, msg="the drain's answer")
    finally:
        client.close()
        listener.close()


# ---- sessions, detach and close -------------------------------------------------------------


@pytest.mark.interop("explicit session", "proton-python")
def test_an_explicit_session_carries_its_links(container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        default = conn.open_sender("a")
        with conn.session(incoming_window=1 << 20) as session:
            sender = session.open_sender("b")
            receiver = session.open_receiver("c")
            sender.send(b"on the session").wait(10)
            sessions = {x["session"] for x in peer.links}
            assert len(sessions) == 2  # the default session and ours
            assert peer.links[1]["session"] == peer.links[2]["session"]
            assert receiver.address == "c"
        with pytest.raises(LinkDetached):
            session.open_sender("d")
        wait_for(lambda: len(peer.closes) >= 2, 10, "the session's links to end")
        default.send(b"the default session goes on").wait(10)
        other = amqscale.Container(workers=1)
        try:
            foreign = other.connect(peer.url)
            with pytest.raises(ValueError, match="another connection"):
                foreign.open_sender("x", session=conn.session())
        finally:
            other.close()
        conn.close()


@pytest.mark.interop("durable subscription", "proton-python")
def test_detach_keeps_a_durable_subscription_close_ends_it(container: Any) -> None:
    with Observer() as peer:
        conn = container.connect(peer.url)
        durable = Source("t", durable="unsettled-state", expiry_policy="never")
        conn.open_receiver(durable, name="keep").detach()
        conn.open_receiver(durable, name="end").close()
        wait_for(lambda: len(peer.closes) == 2, 10, "both detaches")
        assert sorted(peer.closes) == [("end", True), ("keep", False)]
        conn.close()


# ---- the asyncio face ------------------------------------------------------------------------


def test_the_asyncio_face_has_the_same_link_options() -> None:
    async def main(peer: Observer) -> None:
        async with aio.Container(workers=1) as container:
            conn = await container.connect(peer.url, properties={"face": "aio"})
            receiver = await conn.open_receiver(None, dynamic=True)
            assert receiver.address == "node-1"
            queued = await conn.open_receiver(Source("q", selector="x > 1"), credit=4)
            assert queued.remote_source is not None and queued.remote_source.selector == "x > 1"
            assert await queued.drain(10) >= 0
            sender = conn.open_sender(None)
            anonymous = await sender
            with pytest.raises(TypeError, match="anonymous relay"):
                anonymous.put_nowait(b"x")
            await anonymous.send(amqscale.Message(body=1, address="elsewhere"))
            session = conn.session()
            on_session = await session.open_sender("s")
            await on_session.send(b"y")
            await conn.aclose()

    with Observer(queued=2, offered=["ANONYMOUS-RELAY"]) as peer:
        asyncio.run(main(peer))
        assert peer.opens[0]["properties"] == {"face": "aio"}
        assert ("elsewhere", 1) in [(m.address, m.body) for m in peer.messages]
        assert len({x["session"] for x in peer.links}) == 2


def test_time_is_not_asserted_here() -> None:
    """(A guard for this module: the waits above are bounded, never measured.)"""
    assert time.monotonic() > 0


# ---- the listener as a full peer ------------------------------------------------------------


@pytest.mark.interop("listen: inbound receiver", "proton-python")
def test_a_listener_sends_to_the_remote_receivers_that_attach(container: Any) -> None:
    from proton.utils import BlockingConnection

    listener = container.listen("amqp://127.0.0.1:0")
    client = BlockingConnection(listener.url, timeout=15)
    try:
        first = client.create_receiver("feed-a", name="a", credit=10)
        second = client.create_receiver("feed-b", name="b", credit=10)
        senders = [listener.accept_sender(15), listener.accept_sender(15)]
        assert [s.address for s in senders] == ["feed-a", "feed-b"]
        trackers = [s.send(amqscale.Message(body=f"to {s.address} {i}"))
                    for s in senders for i in range(3)]
        got_a, got_b = [], []
        for _ in range(3):
            got_a.append(first.receive(15).body)
            first.accept()
            got_b.append(second.receive(15).body)
            second.accept()
        assert got_a == [f"to feed-a {i}" for i in range(3)]
        assert got_b == [f"to feed-b {i}" for i in range(3)]
        client.close()  # proton's blocking client sends its dispositions as it closes
        assert all(tracker.wait(15).accepted for tracker in trackers)
        with pytest.raises(TimeoutError):
            listener.accept_sender(0.2)
    finally:
        client.close()
        listener.close()


def test_accept_link_decides_each_inbound_link() -> None:
    """The blocking face decides inside its calls: the proton client runs in a thread
    while this one waits in accept_sender() and receive()."""
    from proton.utils import BlockingConnection
    from proton.utils import LinkDetached as ProtonLinkDetached

    seen: list[Any] = []
    refusals: list[str] = []

    def decide(link: Any) -> Any:
        seen.append(link)
        if link.name == "forbidden":
            return ("amqp:unauthorized-access", "not this one")
        if link.name == "buggy":
            raise RuntimeError("a bug in the policy")
        return None

    def client_side(url: str) -> None:
        client = BlockingConnection(url, timeout=15)
        try:
            client.create_receiver("allowed", name="ok", credit=5)
            for name in ("forbidden", "buggy"):
                try:
                    client.create_sender("q", name=name)
                except ProtonLinkDetached as exc:
                    refusals.append(str(exc))
            client.create_sender("q", name="fine").send(ProtonMessage(body="through"),
                                                         timeout=15)
        finally:
            client.close()

    with amqscale.Container(workers=1, container_id="deciding") as server:
        listener = server.listen("amqp://127.0.0.1:0", accept_link=decide)
        thread = threading.Thread(target=client_side, args=(listener.url,), daemon=True)
        thread.start()
        assert listener.accept_sender(15).address == "allowed"
        delivery = listener.receiver.receive(15)
        assert delivery.message.body == "through"
        delivery.accept()
        thread.join(15)
        assert [x.name for x in seen] == ["ok", "forbidden", "buggy", "fine"]
        assert seen[0].role == "receiver" and seen[1].role == "sender"
        assert seen[0].source.address == "allowed" and seen[0].container_id
        assert len(refusals) == 2
        assert "unauthorized-access" in refusals[0] and "not this one" in refusals[0]
        assert "internal-error" in refusals[1] and "a bug in the policy" in refusals[1]
        listener.close()
    with pytest.raises(TypeError, match="accept_link must be callable"):
        amqscale.Container(workers=1).listen("amqp://127.0.0.1:0",
                                             accept_link="no")  # type: ignore[arg-type]


def test_the_asyncio_listener_sends_to_remote_receivers() -> None:
    from proton.utils import BlockingConnection

    async def main() -> None:
        async with aio.Container(workers=1) as container:
            listener = await container.listen("amqp://127.0.0.1:0")
            loop = asyncio.get_running_loop()
            client = await loop.run_in_executor(
                None, lambda: BlockingConnection(listener.url, timeout=15))
            waiting = asyncio.ensure_future(listener.accept_sender(15))  # before it attaches
            await asyncio.sleep(0)
            receiver = await loop.run_in_executor(
                None, lambda: client.create_receiver("aio-feed", credit=5))
            sender = await waiting
            assert sender.address == "aio-feed"
            tracker = sender.put_nowait(amqscale.Message(body="from asyncio"))

            def take() -> Any:
                body = receiver.receive(15).body
                receiver.accept()
                client.close()  # it sends its disposition as it closes
                return body

            assert await loop.run_in_executor(None, take) == "from asyncio"
            assert (await tracker.wait(15)).accepted
            listener.close()

    asyncio.run(main())



# ---- frame tracing ---------------------------------------------------------------------------


def test_pn_trace_frm_sends_the_workers_frames_to_the_user_s_log(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from amqscale.security import ServerSASL

    monkeypatch.setenv("PN_TRACE_FRM", "1")  # the workers inherit it when they start
    caplog.set_level("DEBUG", logger="amqscale.frames")
    with amqscale.Container(workers=1) as traced:
        listener = traced.listen("amqp://127.0.0.1:0", sasl=ServerSASL(
            users={"alice": "s3cret-pw"}, mechanisms="PLAIN", allow_insecure_mechanisms=True))
        conn = traced.connect(listener.url, user="alice", password="s3cret-pw",
                              sasl_mechanisms="PLAIN", allow_insecure_mechanisms=True)
        sender = conn.open_sender("traced")
        sender.send(b"x")
        delivery = listener.receiver.receive(15)
        delivery.accept()
        conn.close()
        listener.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "amqscale.frames"]
    ours = [x for x in lines if f"to {listener.url}" in x]
    assert any("-> @open(16)" in x for x in ours)
    assert any("-> @attach(18)" in x and "traced" in x for x in ours)
    assert any("-> @transfer(20)" in x for x in ours)
    assert any("@sasl-init(65)" in x and "initial-response=<hidden>" in x for x in lines)
    assert not any("s3cret-pw" in x for x in lines)  # the password never reaches a log


@pytest.mark.interop("send", "amqscale")
@pytest.mark.interop("receive", "amqscale")
@pytest.mark.interop("listen: inbound sender", "amqscale")
@pytest.mark.interop("listen: inbound receiver", "amqscale")
def test_amqscale_on_both_ends(container: Any) -> None:
    with amqscale.Container(workers=1) as server:
        listener = server.listen("amqp://127.0.0.1:0")
        conn = container.connect(listener.url, shards=2)
        receiver = conn.open_receiver("from-the-listener", credit=10)
        senders = [listener.accept_sender(15), listener.accept_sender(15)]  # one a shard
        assert {s.address for s in senders} == {"from-the-listener"}
        trackers = [senders[i % 2].send(amqscale.Message(id=i, body=i)) for i in range(20)]
        got = [receiver.receive(15) for _ in range(20)]
        for delivery in got:
            delivery.accept()
        assert sorted(d.message.body for d in got) == list(range(20))
        assert all(t.wait(15).accepted for t in trackers)
        sender = conn.open_sender("to-the-listener")
        sent = [sender.send(amqscale.Message(body=f"in {i}")) for i in range(20)]
        inbound = [listener.receiver.receive(15) for _ in range(20)]
        for delivery in inbound:
            delivery.accept()
        assert sorted(d.message.body for d in inbound) == sorted(f"in {i}" for i in range(20))
        assert all(t.wait(15).accepted for t in sent)
        conn.close()
        listener.close()


@pytest.mark.interop("explicit session", "proton-python")
def test_the_event_driven_face_puts_links_on_a_session_of_their_own() -> None:
    from amqscale.handlers import MessagingHandler
    from amqscale.reactor import Container as Reactor

    class OnASession(MessagingHandler):
        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url
            self.accepted = 0
            self.sessions: list[Any] = []

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(self.url)
            self.default = event.container.create_sender(conn, "on-default")
            session = conn.session()
            session.incoming_capacity = 1 << 20
            session.open()
            self.sender = event.container.create_sender(session, "on-session")
            self.sessions = [self.default.session, self.sender.session, session]

        def on_sendable(self, event: Any) -> None:
            if event.sender is self.sender and not self.accepted:
                self.sender.send(amqscale.Message(body="via the session"))

        def on_accepted(self, event: Any) -> None:
            self.accepted += 1
            event.connection.close()

    with Observer() as peer:
        handler = OnASession(peer.url)
        Reactor(handler, workers=1).run()
    default, on_session, made = handler.sessions
    assert on_session is made and default is not made and default.explicit is False
    assert len({x["session"] for x in peer.links}) == 2
    assert [m.body for m in peer.messages] == ["via the session"]
