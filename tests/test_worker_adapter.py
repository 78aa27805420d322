"""The worker's proton adapter driven with bytes in memory (tests/worker_helpers.py):
messages of any size both ways, max-message-size, aborted transfers, contained failures."""

from __future__ import annotations

from typing import Any

import pytest
from cproton_ffi import lib
from worker_helpers import LISTENER, Pair

from amqscale.workers import protocol as p
from amqscale.workers._binding import as_delivery
from amqscale.workers.engine import MESSAGE_SIZE_EXCEEDED
from amqscale.workers.worker import split_deliveries

pytestmark = pytest.mark.usefixtures("engine_path")  # every test on both engine paths

FRAGMENT = 4096


def received(events: list[Any], link: int) -> list[tuple[int, bytes, bool]]:
    """(delivery id, whole payload, settled) for every message of `link`, parts joined,
    checking that parts come consecutively and that ids go up by one."""
    out: list[tuple[int, bytes, bool]] = []
    parts: list[bytes] = []
    part_id = None
    for event in events:
        if getattr(event, "link", None) != link:
            continue
        if type(event) is p.Deliveries:
            assert part_id is None, "a Deliveries event inside a message in parts"
            settled = set(event.settled or ())
            out += [(event.first_id + i, payload, i in settled)
                    for i, payload in enumerate(event.payloads)]
        elif type(event) is p.DeliveryPart:
            assert part_id in (None, event.id)
            assert len(event.chunk) <= FRAGMENT
            part_id = event.id
            parts.append(event.chunk)
            if event.last:
                if not event.aborted:
                    out.append((event.id, b"".join(parts), event.settled))
                parts, part_id = [], None
    assert [i for i, _, _ in out] == list(range(out[0][0], out[0][0] + len(out))) if out else True
    return out


def test_a_large_message_arrives_in_parts_between_small_ones() -> None:
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    big = bytes(range(256)) * 200  # 51,200 bytes: 13 parts
    pair.client.engine.handle(p.Send(1, 0, [b"a" * 100, big, b"c" * 10, big[:FRAGMENT]]))
    pair.pump()
    messages = received(pair.server.events, inbound)
    assert [m for _, m, _ in messages] == [b"a" * 100, big, b"c" * 10, big[:FRAGMENT]]
    parts = pair.server.of(p.DeliveryPart)
    assert sum(1 for e in parts if e.last) == 1
    assert all(len(e.payloads[0]) <= FRAGMENT for e in pair.server.of(p.Deliveries))
    # Every message takes a disposition; the sender sees the outcomes by seq.
    pair.server.engine.handle(p.Settle(inbound, [i for i, _, _ in messages]))
    pair.pump()
    runs = [r for e in pair.client.of(p.Outcomes) for r in e.runs]
    assert p.run_length(runs) == 4 and all(e.state == p.ACCEPTED
                                           for e in pair.client.of(p.Outcomes))


def test_parts_go_to_the_user_while_the_message_is_still_arriving() -> None:
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    big = b"x" * (40 * FRAGMENT)
    pair.client.engine.handle(p.Send(1, 0, [big]))
    cc, sc = pair.conns[0]
    for _ in range(8):  # let 8 x 4 KiB through: about a quarter of it
        pair.pump(rounds=1, limit=FRAGMENT)
    parts = pair.server.of(p.DeliveryPart)
    assert parts and not any(e.last for e in parts)
    # The adapter never left much more than a part in proton's buffer.
    link = pair.server.engine.links[inbound]
    current = lib.pn_link_current(link.ptr)
    assert lib.pn_delivery_pending(current) < 2 * FRAGMENT
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [big]


def test_send_parts_make_one_delivery_behind_earlier_sends() -> None:
    pair = Pair(fragment=FRAGMENT, server_fragment=p.MAX_FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    chunks = [bytes([i]) * FRAGMENT for i in range(10)]
    engine = pair.client.engine
    engine.handle(p.Send(1, 0, [b"first"]))
    for i, chunk in enumerate(chunks):
        engine.handle(p.SendPart(1, 1, chunk, last=i == len(chunks) - 1))
    engine.handle(p.Send(1, 2, [b"after"]))
    pair.pump()
    events = pair.server.of(p.Deliveries)
    payloads = [m for e in events for m in e.payloads]
    assert payloads == [b"first", b"".join(chunks), b"after"]
    pair.server.engine.handle(p.Settle(inbound, [0, 1, 2]))
    pair.pump()
    runs = [r for e in pair.client.of(p.Outcomes) for r in e.runs]
    assert runs == [0, 3]


def test_send_parts_are_fed_to_proton_only_as_the_transport_takes_them() -> None:
    pair = Pair(fragment=FRAGMENT)
    pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    for i in range(100):
        engine.handle(p.SendPart(1, 0, b"y" * FRAGMENT, last=i == 99))
    link = engine.links[1]
    # Nothing moved to the peer yet: proton holds about two parts, the rest waits queued.
    assert lib.pn_delivery_pending(link.out) <= 3 * FRAGMENT
    assert len(link.pending) >= 95
    written = sum(e.count for e in pair.client.of(p.PartsWritten))
    assert written == 100 - len(link.pending)  # a sender paces its parts by these
    pair.pump()
    assert not link.pending and link.out is None
    assert sum(e.count for e in pair.client.of(p.PartsWritten)) == 100
    assert {e.seq for e in pair.client.of(p.PartsWritten)} == {0}
    assert len(b"".join(e.chunk for e in pair.server.of(p.DeliveryPart))) == 100 * FRAGMENT


def test_presettled_parts_report_sent_settled() -> None:
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect(), snd_settle_mode=p.SND_SETTLED)
    engine = pair.client.engine
    for i in range(3):
        engine.handle(p.SendPart(1, 5, b"z" * FRAGMENT, last=i == 2, settled=True))
    pair.pump()
    outcomes = pair.client.of(p.Outcomes)
    assert [(e.runs, e.state) for e in outcomes] == [([5, 6], p.SENT_SETTLED)]
    (message,) = received(pair.server.events, inbound)
    assert message[1] == b"z" * 3 * FRAGMENT and message[2]  # settled: no disposition


def test_parts_wait_for_credit() -> None:
    pair = Pair(fragment=FRAGMENT, listen=p.Listen(LISTENER, "", 0, "server", credit=1,
                                                   adopt_only=True))
    inbound = pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    engine.handle(p.Send(1, 0, [b"one"]))
    engine.handle(p.SendPart(1, 1, b"p" * FRAGMENT, last=False))
    engine.handle(p.SendPart(1, 1, b"q" * 10, last=True))
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [b"one"]
    pair.server.engine.handle(p.Flow(inbound, 1))
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [
        b"one", b"p" * FRAGMENT + b"q" * 10]


def test_max_message_size_is_announced_and_ends_only_the_link() -> None:
    pair = Pair(fragment=FRAGMENT, listen=p.Listen(
        LISTENER, "", 0, "server", adopt_only=True, max_message_size=10_000))
    conn = pair.connect()
    pair.open_sender(1, conn)
    (opened,) = pair.client.of(p.LinkOpened)
    assert opened.remote_max_message_size == 10_000
    inbound2 = pair.open_sender(2, conn)
    engine = pair.client.engine
    engine.handle(p.Send(1, 0, [b"s" * 9_000, b"L" * 30_000]))
    pair.pump()
    (closed,) = pair.client.of(p.LinkClosed)
    assert closed.link == 1 and closed.condition.name == MESSAGE_SIZE_EXCEEDED
    server_closed = pair.server.of(p.LinkClosed)
    assert [e.condition.name for e in server_closed] == [MESSAGE_SIZE_EXCEEDED]
    # The connection and its other link go on.
    engine.handle(p.Send(2, 0, [b"still here"]))
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound2)] == [b"still here"]
    assert not pair.client.of(p.ConnectionClosed)


def test_open_link_max_message_size_limits_a_receiver() -> None:
    pair = Pair(fragment=FRAGMENT)
    conn = pair.connect()
    pair.client.engine.handle(p.OpenLink(1, conn, "rx", False, p.Terminus("q"),
                                         p.Terminus("q"), credit=10, max_message_size=5000))
    pair.pump()
    (opened,) = pair.server.of(p.LinkOpened)  # the server's end sends
    assert opened.remote_max_message_size == 5000
    pair.server.engine.handle(p.Send(opened.link, 0, [b"ok", b"B" * 12_000]))
    pair.pump()
    assert [m for _, m, _ in received(pair.client.events, 1)] == [b"ok"]
    (closed,) = pair.client.of(p.LinkClosed)
    assert closed.condition.name == MESSAGE_SIZE_EXCEEDED


@pytest.mark.parametrize("streamed", [False, True])
def test_an_aborted_transfer_is_dropped(streamed: bool) -> None:
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    size = 3 * FRAGMENT if streamed else 100
    engine.handle(p.SendPart(1, 0, b"a" * size, last=False))
    pair.pump()
    link = engine.links[1]
    lib.pn_delivery_abort(link.out)  # the adapter never aborts; proton's API does
    link.out = None
    pair.pump()
    engine.handle(p.Send(1, 1, [b"next"]))
    pair.pump()
    parts = pair.server.of(p.DeliveryPart)
    if streamed:
        assert parts[-1].last and parts[-1].aborted
    else:
        assert not parts
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [b"next"]
    assert not pair.server.of(p.LinkClosed)


def test_a_failing_command_ends_only_its_link() -> None:
    pair = Pair(fragment=FRAGMENT)
    conn = pair.connect()
    inbound = pair.open_sender(1, conn)
    bad = p.Terminus("q", expiry_policy="no-such-policy")
    pair.client.engine.handle(p.OpenLink(2, conn, "bad", True, p.Terminus("q"), bad))
    (closed,) = pair.client.of(p.LinkClosed)
    assert closed.link == 2 and closed.condition.name == "amqscale:internal-error"
    assert "connection 1 to memory:1" in closed.condition.description
    pair.client.engine.handle(p.Send(1, 0, [b"fine"]))
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [b"fine"]


def test_a_failure_processing_events_ends_only_that_connection(
        monkeypatch: pytest.MonkeyPatch, engine_path: str) -> None:
    pair = Pair(fragment=FRAGMENT)
    first, second = pair.connect(), pair.connect()
    pair.open_sender(1, first)
    inbound = pair.open_sender(2, second)
    engine = pair.server.engine
    original = engine._on_transfer

    def fails_on_first(link: Any, delivery: Any) -> None:
        if link.conn.address == "memory:1":
            raise RuntimeError("boom")
        original(link, delivery)

    monkeypatch.setattr(engine, "_on_transfer", fails_on_first)
    if engine_path == "c":  # the C path raises on a link whose state it cannot use
        (broken,) = [link for link in engine.links.values() if link.conn.address == "memory:1"]
        broken.rx = ()
    pair.client.engine.handle(p.Send(1, 0, [b"to the first"]))
    pair.client.engine.handle(p.Send(2, 0, [b"to the second"]))
    pair.pump()
    assert [e.conn for e in pair.client.of(p.ConnectionClosed)] == [first]
    (ended,) = pair.server.of(p.LinkClosed)  # the inbound link of the failed connection
    assert ended.condition.name == "amqscale:internal-error"
    assert "inbound connection from memory:1" in ended.condition.description
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [b"to the second"]


def test_an_unknown_command_is_reported_not_raised() -> None:
    pair = Pair()
    pair.client.engine.handle(p.Stats())  # the worker loop's, not the adapter's
    assert pair.client.events == []


def test_split_deliveries_keeps_ids_and_settled_positions() -> None:
    event = p.Deliveries(3, 10, [b"a" * 40, b"b" * 40, b"c" * 40, b"d" * 40], [1, 3])
    pieces = split_deliveries(event, 100)
    assert [(e.first_id, len(e.payloads), e.settled) for e in pieces] == [
        (10, 2, [1]), (12, 2, [1])]
    assert [m for e in pieces for m in e.payloads] == event.payloads


def test_news_of_an_earlier_delivery_does_not_end_a_message_in_parts() -> None:
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    engine.handle(p.Send(1, 0, [b"first"]))
    engine.handle(p.SendPart(1, 1, b"a" * 3 * FRAGMENT, last=False))
    pair.pump()
    assert pair.server.of(p.DeliveryPart)  # the second message is being streamed
    (first,) = [d for d, seq in engine.links[1].unsettled.items() if seq == 0]
    lib.pn_delivery_settle(as_delivery(first))  # the sender settles the first on its own
    pair.pump()
    assert not any(e.last for e in pair.server.of(p.DeliveryPart))
    engine.handle(p.SendPart(1, 1, b"b" * 10, last=True))
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [
        b"first", b"a" * 3 * FRAGMENT + b"b" * 10]


@pytest.mark.parametrize("streamed", [False, True])
def test_an_aborted_transfer_gives_its_credit_back(streamed: bool) -> None:
    pair = Pair(fragment=FRAGMENT, listen=p.Listen(LISTENER, "", 0, "server", credit=1,
                                                   adopt_only=True))
    inbound = pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    engine.handle(p.SendPart(1, 0, b"a" * (3 * FRAGMENT if streamed else 100), last=False))
    pair.pump()
    link = engine.links[1]
    lib.pn_delivery_abort(link.out)
    link.out = None
    engine.handle(p.Send(1, 1, [b"next"]))  # needs the credit the aborted one used
    pair.pump()
    assert [m for _, m, _ in received(pair.server.events, inbound)] == [b"next"]


def test_parts_ahead_of_the_socket_stay_bounded() -> None:
    """Proton frames a whole delivery at once when the peer's window allows; what the
    worker feeds it must still wait for the socket, not for proton's delivery buffer."""
    pair = Pair(fragment=FRAGMENT)
    pair.open_sender(1, pair.connect())
    engine = pair.client.engine
    parts, window = 200, 4
    sent = 0
    most_ahead = 0
    while True:
        written = sum(e.count for e in pair.client.of(p.PartsWritten))
        while sent < parts and sent - written < window:
            engine.handle(p.SendPart(1, 0, b"w" * FRAGMENT, last=sent == parts - 1))
            sent += 1
        pair.pump(rounds=1, limit=FRAGMENT // 2)  # a slow socket
        written = sum(e.count for e in pair.client.of(p.PartsWritten))
        arrived = sum(len(e.chunk) for e in pair.server.of(p.DeliveryPart))
        most_ahead = max(most_ahead, written * FRAGMENT - arrived)
        if arrived == parts * FRAGMENT:
            break
    assert most_ahead <= 4 * FRAGMENT


def test_a_receiving_link_releases_what_the_user_did_not_settle_before_it_detaches() -> None:
    """Settled by the user: its outcome; the rest, taken or still on its way: released."""
    pair = Pair(fragment=FRAGMENT)
    inbound = pair.open_sender(1, pair.connect())
    pair.client.engine.handle(p.Send(1, 0, [b"m%d" % i for i in range(5)]))
    pair.pump()
    assert len(received(pair.server.events, inbound)) == 5
    pair.server.engine.handle(p.Settle(inbound, [0, 1]))
    pair.server.engine.handle(p.CloseLink(inbound))
    pair.pump()
    outcomes = {(e.state, tuple(e.runs)) for e in pair.client.of(p.Outcomes)}
    assert outcomes == {(p.ACCEPTED, (0, 2)), (p.RELEASED, (2, 3)), (p.RELEASED, (3, 4)),
                        (p.RELEASED, (4, 5))}


def test_a_deferred_inbound_attach_waits_for_accept_link_and_takes_its_termini() -> None:
    pair = Pair(listen=p.Listen(LISTENER, "", 0, "server", adopt_only=True,
                                defer_attach=True))
    conn = pair.connect()
    pair.client.engine.handle(p.OpenLink(1, conn, "reply", False,
                                         p.Terminus(dynamic=True), p.Terminus(), credit=10))
    pair.pump()
    (opened_conn,) = pair.server.of(p.ConnectionOpened)
    assert opened_conn.listener == LISTENER and opened_conn.remote_container == "client"
    assert opened_conn.conn == -1 - (1 << p.INBOUND_WORKER_SHIFT)  # the server is worker 1
    (inbound,) = pair.server.of(p.LinkOpened)
    assert inbound.is_sender and inbound.remote_source.dynamic
    assert inbound.inbound_conn == opened_conn.conn
    # Nothing is attached (nor sent) on our side until AcceptLink.
    pair.server.engine.handle(p.Send(inbound.link, 0, [b"early"]))
    pair.pump()
    assert not pair.client.of(p.LinkOpened) and not pair.client.of(p.Deliveries)
    pair.server.engine.handle(p.AcceptLink(inbound.link, p.Terminus("named", dynamic=True)))
    pair.pump()
    (attached,) = pair.client.of(p.LinkOpened)
    assert attached.remote_source.address == "named"
    assert [m for _, m, _ in received(pair.client.events, 1)] == [b"early"]
    # The inbound connection's close reaches the client, and its end the server.
    pair.server.engine.handle(p.CloseConnection(opened_conn.conn))
    pair.pump()
    assert [e.conn for e in pair.client.of(p.ConnectionClosed)] == [conn]
    assert [e.conn for e in pair.server.of(p.ConnectionClosed)] == [opened_conn.conn]
