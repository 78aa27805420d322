"""The worker's engine adapter for AMQP's settle modes and flow control, two engines
joined in memory (tests/worker_helpers.py): receiver settle mode second, drain, detach."""

from __future__ import annotations

import pytest
from worker_helpers import Pair

from amqscale.workers import protocol as p

pytestmark = pytest.mark.usefixtures("engine_path")  # every test on both engine paths


def _inbound_link(pair: Pair, link_id: int) -> object:
    return pair.server.engine.links[link_id]


def test_receiver_settle_mode_second_settles_after_the_sender() -> None:
    pair = Pair()
    inbound = pair.open_sender(1, pair.connect(), rcv_settle_mode=p.RCV_SECOND)
    link = _inbound_link(pair, inbound)
    assert link.awaiting == set()  # type: ignore[attr-defined]
    pair.client.engine.handle(p.Send(1, 0, [b"a", b"b", b"c"]))
    pair.pump()
    ids = [i for e in pair.server.of(p.Deliveries) for i in range(
        e.first_id, e.first_id + len(e.payloads))]
    pair.server.engine.handle(p.Settle(inbound, ids))
    assert len(link.awaiting) == 3  # type: ignore[attr-defined]  # our outcome, unsettled
    pair.pump()
    # The sender took the outcome and settled; then we settled too.
    runs = [r for e in pair.client.of(p.Outcomes) for r in e.runs]
    assert p.run_length(runs) == 3
    assert link.awaiting == set()  # type: ignore[attr-defined]


def test_mode_first_settles_at_once() -> None:
    pair = Pair()
    inbound = pair.open_sender(1, pair.connect())
    assert _inbound_link(pair, inbound).awaiting is None  # type: ignore[attr-defined]


def test_a_drain_is_answered_by_a_sender_with_nothing_to_send() -> None:
    pair = Pair()
    conn = pair.connect()
    pair.client.engine.handle(p.OpenLink(5, conn, "drainer", False, p.Terminus("q"),
                                         p.Terminus(), credit=10))
    pair.pump()
    assert [e for e in pair.client.of(p.LinkOpened) if e.link == 5]
    pair.client.engine.handle(p.Flow(5, 0, drain=True))
    pair.pump()
    credit = [e for e in pair.client.of(p.Credit) if e.link == 5]
    assert credit == [p.Credit(5, 0, drained=True)]
    # Without a drain asked for, a flow from the peer is no news.
    pair.client.engine.handle(p.Flow(5, 3))
    pair.pump()
    assert len([e for e in pair.client.of(p.Credit) if e.link == 5]) == 1


def test_a_detached_link_ends_on_both_sides_as_a_closed_one_does() -> None:
    pair = Pair()
    conn = pair.connect()
    inbound_detached = pair.open_sender(1, conn)
    inbound_closed = pair.open_sender(2, conn)
    pair.client.engine.handle(p.CloseLink(1, detach=True))
    pair.client.engine.handle(p.CloseLink(2))
    pair.pump()
    closed = {e.link for e in pair.server.of(p.LinkClosed)}
    assert closed == {inbound_detached, inbound_closed}
    assert {e.link for e in pair.client.of(p.LinkClosed)} == {1, 2}
