"""The client core in memory: scripted worker events, no processes, no rings, no clock."""

from __future__ import annotations

import pytest

from amqscale._driver import _split
from amqscale.core import ACCEPTED, ClientCore, ListenerState, ReceiverState, SenderState
from amqscale.errors import LinkDetached, MessageTooLarge, WorkerDied
from amqscale.testing.core import ScriptedWorkers
from amqscale.url import URL
from amqscale.workers import protocol as p

URL_ = URL("amqp", "127.0.0.1", 5672)


def _core(workers: int = 2, fragment: int = 1024) -> tuple[ClientCore, ScriptedWorkers]:
    core = ClientCore(workers, "test", fragment)
    return core, ScriptedWorkers(core)


def _sender(core: ClientCore, workers: ScriptedWorkers, shards: int = 2,
            window: int = 10) -> SenderState:
    connection = core.open_connection(URL_, shards)
    workers.open_all()
    sender = core.open_sender(connection, "q", window, False, None, 0)
    workers.open_all()
    return sender


def _receiver(core: ClientCore, workers: ScriptedWorkers, credit: int = 10,
              shards: int = 1) -> ReceiverState:
    connection = core.open_connection(URL_, shards)
    workers.open_all()
    receiver = core.open_receiver(connection, "q", credit, None, False, 0)
    workers.open_all()
    return receiver


def test_shards_are_placed_round_robin_and_never_on_a_dead_worker() -> None:
    core, workers = _core(workers=3)
    core.open_connection(URL_, 3)
    assert [len(workers.take(i)) for i in range(3)] == [1, 1, 1]
    workers.die(1)
    core.open_connection(URL_, 4)
    assert [len(workers.take(i)) for i in range(3)] == [2, 0, 2]
    workers.die(0)
    workers.die(2)
    with pytest.raises(WorkerDied, match="every worker"):
        core.open_connection(URL_, 1)


def test_a_full_window_takes_no_more_until_outcomes_come() -> None:
    core, workers = _core(workers=1)
    sender = _sender(core, workers, shards=1, window=3)
    link = sender.links[0]
    link.send_chunk([b"a", b"b", b"c"])
    assert sender.pick() is None and not sender.has_room()
    workers.settle(link.id, 0, 2)
    assert sender.pick() is link and link.unsettled == 1
    assert sender.counts == {p.ACCEPTED: 2}


def test_one_failed_shard_leaves_the_others_taking_messages() -> None:
    core, workers = _core(workers=2)
    sender = _sender(core, workers, shards=2)
    first, second = sender.links
    first.send_chunk([b"a", b"b"])
    workers.die(first.slot.index)
    assert isinstance(first.failure, WorkerDied)
    assert sender.pick() is second  # skipped, not raised
    assert [b.first for b, _ in first.unsettled_messages()] == [0, 0]  # both still listed
    assert sender.failed_with_unsettled() == [first]
    workers.die(second.slot.index)
    with pytest.raises(WorkerDied):
        sender.pick()


def test_outcomes_out_of_order_and_mixed_settle_the_right_messages() -> None:
    core, workers = _core(workers=1)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    batch = link.send_chunk([b"m%d" % i for i in range(5)])
    workers.settle(link.id, 3, 5, p.REJECTED, p.Condition("amqp:x", "no"))
    workers.settle(link.id, 0, 3)
    assert [batch.result(i).state for i in range(5)] == [  # type: ignore[union-attr]
        p.ACCEPTED] * 3 + [p.REJECTED] * 2
    assert batch.result(4).condition == p.Condition("amqp:x", "no")  # type: ignore[union-attr]
    assert link.unsettled == 0 and not link.batches  # payloads let go


def test_an_event_that_fails_to_apply_does_not_drop_the_rest_of_its_record() -> None:
    core, workers = _core(workers=1)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    link.send_chunk([b"a", b"b"])
    bad = p.Outcomes(link.id, [0, 1], p.MODIFIED, annotations=b"\xff\xff")  # undecodable
    with pytest.raises(Exception):  # noqa: B017  (the codec's error is raised after)
        workers.emit(0, bad, p.Outcomes(link.id, [1, 2], p.ACCEPTED))
    assert batch_results(link) == [None, ACCEPTED]


def batch_results(link: object) -> list[object]:
    batch = link.batches[0]  # type: ignore[attr-defined]
    return [batch.result(i) for i in range(batch.size)]


def test_a_receiver_grants_credit_only_for_what_was_taken() -> None:
    core, workers = _core(workers=1)
    receiver = _receiver(core, workers, credit=4)
    link = next(iter(receiver.links.values()))
    opened = [c for c in workers.taken[0] if type(c) is p.OpenLink]
    assert opened[-1].credit == 4
    workers.deliver(link.id, 0, [b"1", b"2", b"3", b"4"])
    assert not [c for c in workers.take() if type(c) is p.Flow]  # nothing taken: none
    receiver.take()
    link.consumed += 1
    link.grant()
    assert [c.credit for c in workers.take() if type(c) is p.Flow] == [1]


def test_a_receiver_s_credit_over_shards_adds_up_to_what_was_asked() -> None:
    core, workers = _core(workers=3)
    _receiver(core, workers, credit=10, shards=3)
    assert sorted(c.credit for c in sum(workers.taken, []) if type(c) is p.OpenLink) == [3, 3, 4]
    core, workers = _core(workers=3)
    receiver = _receiver(core, workers, credit=2, shards=3)  # fewer than the shards
    assert sorted(c.credit for c in sum(workers.taken, []) if type(c) is p.OpenLink) == [0, 1, 1]
    assert all(link.credit >= 1 for link in receiver.links.values())  # grant thresholds


def test_releasing_what_was_prefetched_but_not_taken() -> None:
    core, workers = _core(workers=1)
    receiver = _receiver(core, workers)
    link = next(iter(receiver.links.values()))
    workers.deliver(link.id, 0, [b"1", b"2", b"3"], settled=[2])
    receiver.take()
    core.release_untaken(receiver)
    settles = [c for c in workers.take() if type(c) is p.Settle]
    assert [(c.ids, c.state) for c in settles] == [([1], p.RELEASED)]  # 0 taken, 2 settled
    assert not receiver.buffer


def test_a_large_message_arrives_in_parts_and_an_aborted_one_is_dropped() -> None:
    core, workers = _core(workers=1)
    receiver = _receiver(core, workers)
    link = next(iter(receiver.links.values()))
    workers.emit(0, p.DeliveryPart(link.id, 0, b"ab", False),
                 p.DeliveryPart(link.id, 0, b"cd", True, settled=True))
    workers.emit(0, p.DeliveryPart(link.id, 1, b"xy", False),
                 p.DeliveryPart(link.id, 1, b"", True, aborted=True))
    workers.deliver(link.id, 2, [b"small"])
    arrivals = list(receiver.buffer)
    assert [(a.first_id, a.payloads, bytes(a.settled)) for a in arrivals] == [
        (0, [b"abcd"], b"\x01"), (2, [b"small"], b"\x00")]


def test_a_message_too_large_for_a_record_goes_in_parts_with_one_seq() -> None:
    core, workers = _core(workers=1, fragment=4)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    link.add(b"s")
    batch, parts = link.parts(b"0123456789", 4)
    commands = workers.take() + list(parts)
    assert type(commands[0]) is p.Send and commands[0].payloads == [b"s"]  # order kept
    chunks = [(c.seq, bytes(c.chunk), c.last) for c in commands[1:]]  # type: ignore
    assert chunks == [(1, b"0123", False), (1, b"4567", False), (1, b"89", True)]
    assert batch.first == 1 and link.unsettled == 2


def test_message_size_limits_ours_and_the_peers() -> None:
    core, workers = _core(workers=1)
    connection = core.open_connection(URL_, 1)
    workers.open_all()
    sender = core.open_sender(connection, "q", 10, False, None, 100)
    command = workers.take()[0]
    assert type(command) is p.OpenLink
    workers.emit(0, p.LinkOpened(command.link, command.conn, command.name, True,
                                 remote_max_message_size=50))
    sender.check_size(b"x" * 50)
    with pytest.raises(MessageTooLarge, match="peer accepts"):
        sender.check_size(b"x" * 51)
    sender.links[0].remote_max = 0
    with pytest.raises(MessageTooLarge, match="max_message_size of 100"):
        sender.check_size(b"x" * 101)


def test_a_link_attached_after_its_listener_closed_is_detached_not_an_error() -> None:
    core, workers = _core(workers=1)
    listener = core.listen("127.0.0.1", 0, 10, 0)
    workers.emit(0, p.Listening(listener.id, 5000))
    core.close_listener(listener)
    workers.take()
    workers.emit(0, p.LinkOpened(1 << 62, listener.id, "late", False, inbound=True))
    assert [type(c) for c in workers.take()] == [p.CloseLink]


def test_inbound_links_leave_the_listener_when_closed_and_drained() -> None:
    core, workers = _core(workers=1)
    listener = core.listen("127.0.0.1", 0, 10, 0)
    link_id = 1 << 62
    workers.emit(0, p.LinkOpened(link_id, listener.id, "in", False, inbound=True))
    workers.deliver(link_id, 0, [b"1"])
    workers.close_link(link_id)
    assert link_id in listener.receiver.links  # a message of it is still to be taken
    listener.receiver.take()
    assert link_id not in listener.receiver.links


def _remote_receiver(core: ClientCore, workers: ScriptedWorkers, link_id: int = 1 << 62,
                     **listen: int) -> tuple[ListenerState, SenderState]:
    """A listener, and a remote receiver attached to it from address "q"."""
    listener = core.listen("127.0.0.1", 0, 10, 0, **listen)
    workers.emit(0, p.Listening(listener.id, 5000))
    workers.emit(0, p.LinkOpened(link_id, listener.id, "out", True, inbound=True,
                                 remote_source=p.Terminus(address="q"),
                                 remote_target=p.Terminus(address="me"),
                                 remote_max_message_size=50))
    assert len(listener.senders) == 1
    workers.take()  # the Listen
    return listener, listener.senders[0]


def test_a_remote_receiver_gets_a_sender_of_its_own_on_the_listener() -> None:
    core, workers = _core(workers=1)
    seen: list[object] = []
    core.observer = lambda target, event: seen.append(target)
    listener, sender = _remote_receiver(core, workers, window=2)
    (link,) = sender.links
    assert seen == [listener, link] and core.routes[link.id] is link
    assert link.slot is core.slots[0]
    assert link.opened and sender.address == "q" and sender.window == 2
    assert link.remote_source == p.Terminus(address="q")
    assert link.remote_target == p.Terminus(address="me")
    assert sender.listener is listener and not listener.receiver.links
    with pytest.raises(MessageTooLarge, match="max-message-size"):
        sender.check_size(b"x" * 51)
    # Sent on the worker's own link id; outcomes come back through the routing.
    batch = link.send_chunk([b"a", b"b"])
    assert workers.take() == [p.Send(link.id, 0, [b"a", b"b"], False)]
    assert sender.pick() is None  # its window is full
    workers.settle(link.id, 0, 1)
    workers.settle(link.id, 1, 2, p.RELEASED)
    assert batch.result(0) == ACCEPTED and batch.result(1).state == p.RELEASED  # type: ignore[union-attr]
    assert sender.all_settled() and sender.pick() is link
    assert seen[-1] is link


def test_a_remote_receiver_that_detaches_leaves_the_listener() -> None:
    core, workers = _core(workers=1)
    listener, sender = _remote_receiver(core, workers)
    (link,) = sender.links
    link.send_chunk([b"a"])
    workers.close_link(link.id, p.Condition("amqp:link:detach-forced", "bye"))
    assert link.closed and isinstance(link.failure, LinkDetached)
    assert "bye" in str(link.failure)
    assert listener.senders == [] and link.id not in core.routes
    assert [b.first for b, _ in link.unsettled_messages()] == [0]  # still listed
    with pytest.raises(LinkDetached):
        sender.pick()


def test_closing_a_listener_detaches_its_remote_receivers_after_what_was_sent() -> None:
    core, workers = _core(workers=1)
    listener, sender = _remote_receiver(core, workers)
    (link,) = sender.links
    link.add(b"a")
    core.close_listener(listener)
    assert [type(c) for c in workers.take()] == [p.Send, p.CloseLink, p.CloseListener]
    assert sender.closed and link.failure is not None
    workers.close_link(link.id)
    assert listener.senders == []


def test_a_remote_receiver_on_a_dead_worker_fails_with_it() -> None:
    core, workers = _core(workers=1)
    listener, sender = _remote_receiver(core, workers)
    workers.die(0)
    assert isinstance(sender.links[0].failure, WorkerDied)
    core.close_listener(listener)
    assert sender.links[0].closed  # nothing will confirm the detach


def test_closing_links_hands_over_their_batch_first() -> None:
    core, workers = _core(workers=1)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    link.add(b"last")
    core.close_links([link])
    assert [type(c) for c in workers.take()] == [p.Send, p.CloseLink]
    assert isinstance(link.failure, LinkDetached) and not link.closed
    workers.close_link(link.id)
    assert link.closed


def test_split_keeps_every_message_and_its_seq() -> None:
    send = p.Send(7, 100, [b"%d" % i for i in range(5)])
    halves = _split([send])
    assert [(c.first_seq, c.payloads) for g in halves for c in g] == [  # type: ignore
        (100, [b"0", b"1"]), (102, [b"2", b"3", b"4"])]
    settle = p.Settle(7, [1, 2, 3], p.REJECTED, p.Condition("a", "b"))
    parts = [c for g in _split([settle]) for c in g]
    assert [c.ids for c in parts] == [[1], [2, 3]]  # type: ignore[union-attr]
    assert all(c.condition == settle.condition for c in parts)  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="too large"):
        _split([p.Send(7, 0, [b"x"])])


def test_parts_written_are_counted_per_message() -> None:
    core, workers = _core(workers=1, fragment=4)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    workers.emit(0, p.PartsWritten(link.id, 0, 2))
    assert link.parts_done(0, 2) and not link.parts_done(0, 3)
    workers.emit(0, p.PartsWritten(link.id, 1, 1))  # the next message starts again
    assert link.parts_done(1, 1) and not link.parts_done(0, 1)


def test_a_batch_with_one_message_over_a_peers_limit_is_refused_whole() -> None:
    core, workers = _core(workers=2)
    sender = _sender(core, workers, shards=2)
    sender.links[1].remote_max = 10
    with pytest.raises(MessageTooLarge, match="the 10 bytes the peer accepts"):
        sender.check_sizes([b"ok", b"x" * 11])
    sender.check_sizes([b"ok", b"x" * 10])


def test_the_observer_sees_each_event_with_the_state_it_changed() -> None:
    core, workers = _core(workers=2)
    seen: list[tuple[str, str | None]] = []
    core.observer = lambda target, event: seen.append(
        (type(target).__name__, None if event is None else type(event).__name__))
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    link.send_chunk([b"a"])
    workers.settle(link.id, 0, 1)
    workers.emit(0, p.WorkerStats(0, 1, 0, 0, 0))  # the core's `stats`: worker_stats() waits
    workers.die(1)
    assert seen == [("Shard", "ConnectionOpened"), ("SenderLink", "LinkOpened"),
                    ("SenderLink", "Outcomes"), ("ClientCore", "WorkerStats"),
                    ("WorkerSlot", None)]


def test_the_observer_sees_an_inbound_link_attach_to_a_listener() -> None:
    core, workers = _core(workers=1)
    listener = core.listen("127.0.0.1", 0, 10, 0)
    workers.emit(0, p.Listening(listener.id, 5672))
    seen: list[object] = []
    core.observer = lambda target, event: seen.append(target)
    workers.emit(0, p.LinkOpened(77, listener.id, "in", False, inbound=True,
                                 remote_source=p.Terminus(address="a")))
    assert seen == [listener.receiver.links[77]]
    assert listener.receiver.links[77].remote_source == p.Terminus(address="a")


# ---- for the event-driven face ------------------------------------------------------------


def test_shares_split_as_evenly_as_can_be() -> None:
    from amqscale.core import shares
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(0, 3) == [0, 0, 0]
    assert shares(1, 3) == [1, 0, 0]
    assert shares(5, 0) == []


def test_a_receiver_opened_with_no_credit_grants_none_until_flow() -> None:
    core, workers = _core(workers=2)
    connection = core.open_connection(URL_, 2)
    workers.open_all()
    receiver = core.open_receiver_exact(connection, "q", 0, None, 0)
    opens = [c for c in workers.take() if type(c) is p.OpenLink]
    assert [c.credit for c in opens] == [0, 0]
    for command in opens:
        workers.emit(workers.slot_of(command.link).index,
                     p.LinkOpened(command.link, command.conn, command.name, False))
    core.flow(receiver, 3)
    flows = [c for c in workers.take() if type(c) is p.Flow]
    assert sorted(c.credit for c in flows) == [1, 2]
    assert {c.link for c in flows} == set(receiver.links)


def test_flow_goes_to_live_links_only_and_settles_first() -> None:
    core, workers = _core(workers=2)
    connection = core.open_connection(URL_, 2)
    workers.open_all()
    receiver = core.open_receiver_exact(connection, "q", 4, None, 0)
    opens = [c for c in workers.take() if type(c) is p.OpenLink]
    assert [c.credit for c in opens] == [2, 2]
    first, second = receiver.links.values()
    first.settle_later(0, p.ACCEPTED)
    workers.die(second.slot.index)
    core.flow(receiver, 5)
    commands = workers.take()
    assert [type(c) for c in commands] == [p.Settle, p.Flow]
    assert commands[1] == p.Flow(first.id, 5)


def test_nothing_goes_between_the_parts_of_a_large_message() -> None:
    core, workers = _core(workers=1, fragment=4)
    sender = _sender(core, workers, shards=1)
    link = sender.links[0]
    batch, parts = link.parts(b"0123456789", core.fragment)
    link.parts_busy = True  # as _ops.hand_over_parts sets it while it hands the parts over
    assert sender.pick() is None and not sender.has_room()
    link.add(b"small")
    link.hand_over()  # kept for after the last part
    assert [type(c).__name__ for c in workers.take()] == []
    link.parts_busy = False
    link.hand_over()
    [send] = workers.take()
    assert type(send) is p.Send and send.first_seq == batch.first + 1
