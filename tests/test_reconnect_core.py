"""Reconnect and failover in the client core: scripted worker events and a fake clock."""

from __future__ import annotations

import random

import pytest

from amqscale.core import ClientCore, ConnectionState, ReceiverState, SenderState
from amqscale.errors import AuthenticationError, ConnectionFailed, DeliveryLost, LinkDetached
from amqscale.reconnect import Backoff, Delays, failover_urls, reconnect_policy
from amqscale.testing.core import ScriptedWorkers
from amqscale.url import URL, parse_url
from amqscale.workers import protocol as p

A = URL("amqp", "127.0.0.1", 5672)
B = URL("amqp", "127.0.0.1", 5673)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _core(workers: int = 1) -> tuple[ClientCore, ScriptedWorkers, FakeClock]:
    clock = FakeClock()
    core = ClientCore(workers, "test", 1024, clock=clock, rng=random.Random(7))
    return core, ScriptedWorkers(core), clock


DEFAULT = Backoff()


def _connect(core: ClientCore, workers: ScriptedWorkers, policy: Backoff | Delays | None
             = DEFAULT, urls: list[URL] | None = None, shards: int = 1) -> ConnectionState:
    connection = core.open_connection(A, shards, urls=urls or [A], policy=policy)
    workers.open_all()
    return connection


def _opens(commands: list[p.Command]) -> list[p.OpenConnection]:
    return [c for c in commands if type(c) is p.OpenConnection]


def _sends(commands: list[p.Command]) -> list[tuple[int, int]]:
    """(first seq, count) of each Send."""
    return [(c.first_seq, len(c.payloads)) for c in commands if type(c) is p.Send]


def test_the_default_schedule_is_protons_with_jitter() -> None:
    delays = list(zip(range(10), Backoff().delays(random.Random(1)), strict=False))
    plain = [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10]
    assert delays[0][1] == 0
    for (_, got), expected in zip(delays[1:], plain[1:], strict=True):
        assert expected * 0.8 <= got <= expected * 1.2
    assert [d for _, d in zip(range(10), Backoff(jitter=0).delays(random.Random()),
                              strict=False)] == plain
    # Two clients do not retry in lock-step.
    first = list(zip(range(5), Backoff().delays(random.Random(1)), strict=False))
    second = list(zip(range(5), Backoff().delays(random.Random(2)), strict=False))
    assert first[1:] != second[1:]


@pytest.mark.parametrize("bad, message", [
    (dict(initial=-1), "initial"), (dict(factor=0.5), "factor"), (dict(jitter=1), "jitter"),
    (dict(max_tries=0), "max_tries"), (dict(deadline=0), "deadline"),
    (dict(max_delay=float("inf")), "max_delay")])
def test_a_bad_backoff_is_refused_naming_the_field(bad: dict[str, float], message: str
                                                   ) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**bad)  # type: ignore[arg-type]


def test_reconnect_arguments() -> None:
    assert reconnect_policy(False) is None
    assert reconnect_policy(True) == Backoff()
    assert reconnect_policy([0, 0.5]) == Delays((0.0, 0.5))
    with pytest.raises(ValueError, match="delays"):
        reconnect_policy([-1])
    with pytest.raises(TypeError, match="reconnect"):
        reconnect_policy("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amqps"):
        failover_urls(A, ["amqps://127.0.0.1:5671"])
    assert failover_urls(A, ["amqp://127.0.0.1:5672", "amqp://127.0.0.1:5673"]) == [A, B]
    assert failover_urls(parse_url("amqp://u:pw@h:1"), None)[0].password == "pw"


def test_a_lost_sender_attaches_again_and_resends_only_what_was_unsettled() -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers)
    sender: SenderState = core.open_sender(connection, "q", 100, False, "s", 0)
    workers.open_all()
    link = sender.links[0]
    link.send_chunk([b"a", b"b", b"c", b"d"])
    workers.take()
    workers.settle(link.id, 0, 2)  # a and b accepted; c and d in doubt
    shard = connection.shards[0]
    workers.lose(shard)
    assert connection.state == "reconnecting" and link.failure is None
    batch = link.send_chunk([b"e"])  # taken while down: held, not sent yet
    commands = workers.take()
    reopen = _opens(commands)
    assert len(reopen) == 1 and reopen[0].delay == 0 and reopen[0].conn == shard.id
    attach = [c for c in commands if type(c) is p.OpenLink]
    assert [c.name for c in attach] == [link.attach.name] == ["s"]  # same name
    assert _sends(commands) == []
    workers.emit(0, p.ConnectionOpened(shard.id, "peer"))
    workers.emit(0, p.LinkOpened(link.id, shard.id, "s", True))
    assert _sends(workers.take()) == [(2, 2), (4, 1)]  # c and d again, then e
    assert sender.resent == 2 and connection.reconnects == 1
    assert connection.state == "open"
    workers.settle(link.id, 2, 5)
    assert batch.pending == 0 and link.unsettled == 0


def test_a_lost_receiver_drops_its_untaken_prefetch_and_refuses_stale_settlements(
        ) -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers)
    receiver: ReceiverState = core.open_receiver(connection, "q", 10, None, False, 0)
    workers.open_all()
    link = next(iter(receiver.links.values()))
    workers.deliver(link.id, 0, [b"m0", b"m1", b"m2", b"m3"], settled=[3])
    arrival, index = receiver.take()  # m0 taken, not settled
    workers.lose(connection.shards[0])
    assert receiver.lost == 2  # m1 and m2 went back to the peer; m3 was pre-settled
    assert [a.payloads for a in receiver.buffer] == [[b"m3"]]
    with pytest.raises(DeliveryLost, match="connection was lost"):
        arrival.check_live()
    commands = workers.take()
    attach = [c for c in commands if type(c) is p.OpenLink]
    assert attach[0].credit == link.credit  # the whole credit again
    workers.emit(0, p.ConnectionOpened(_opens(commands)[0].conn, "peer"))
    workers.emit(0, p.LinkOpened(link.id, attach[0].conn, attach[0].name, False))
    assert link.attached and link.failure is None
    workers.deliver(link.id, 0, [b"m1"])  # ids start again on the new attach
    assert receiver.take()[0].payloads == [b"m3"]
    again, _ = receiver.take()
    assert again.payloads == [b"m1"]
    again.check_live()


def test_a_connection_lost_as_soon_as_it_opens_goes_on_with_the_backoff() -> None:
    """A peer (or a message it cannot take) that breaks every connection at once meets
    the growing delays, not a reconnect storm."""
    core, workers, clock = _core()
    policy = Backoff(initial=1, factor=2, max_delay=8, jitter=0)
    connection = _connect(core, workers, policy)
    shard = connection.shards[0]
    delays = []
    for _ in range(5):
        clock.now += 0.5  # up for half a second each time: not stable
        workers.lose(shard)
        command = _opens(workers.take())[0]
        delays.append(command.delay)
        clock.now += command.delay
        workers.emit(0, p.ConnectionOpened(shard.id, "peer"))
        assert connection.state == "open"
    assert delays == [0, 1, 2, 4, 8]
    clock.now += 5  # this time it stayed up
    workers.lose(shard)
    assert _opens(workers.take())[0].delay == 0


def test_failover_tries_each_url_in_rounds_and_starts_again_after_an_open() -> None:
    core, workers, clock = _core()
    policy = Backoff(initial=1, factor=2, max_delay=4, jitter=0)
    connection = _connect(core, workers, policy, urls=[A, B])
    shard = connection.shards[0]
    tried = []
    for _ in range(6):
        workers.lose(shard)
        command = _opens(workers.take())[0]
        tried.append((command.port, command.delay))
    assert tried == [(5672, 0), (5673, 0), (5672, 1), (5673, 1), (5672, 2), (5673, 2)]
    workers.emit(0, p.ConnectionOpened(shard.id, "peer"))
    clock.now += 1  # it stayed up (STABLE_CONNECTION): the next loss starts afresh
    workers.lose(shard)
    assert [(c.port, c.delay) for c in _opens(workers.take())] == [(5672, 0)]
    clock.now += 1


def test_give_up_after_max_tries_with_the_last_error() -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers, Backoff(max_tries=2, jitter=0))
    sender = core.open_sender(connection, "q", 10, False, None, 0)
    workers.open_all()
    shard = connection.shards[0]
    for _ in range(2):
        workers.lose(shard)
        assert _opens(workers.take())
    workers.lose(shard, p.Condition("amqp:connection:failed", "ECONNREFUSED"))
    assert not _opens(workers.take())
    assert isinstance(shard.failure, ConnectionFailed)
    assert "gave up reconnecting to amqp://127.0.0.1:5672 after 2 rounds" in str(shard.failure)
    assert "ECONNREFUSED" in str(shard.failure)
    assert connection.state == "failed"
    assert isinstance(sender.links[0].failure, LinkDetached)
    with pytest.raises(LinkDetached, match="gone with its connection"):
        sender.pick()


def test_give_up_at_the_deadline() -> None:
    core, workers, clock = _core()
    connection = _connect(core, workers, Backoff(deadline=5, jitter=0, initial=1))
    shard = connection.shards[0]
    rounds = 0
    while shard.failure is None:
        workers.lose(shard)
        opens = _opens(workers.take())
        if opens:
            clock.now += opens[0].delay
            rounds += 1
        assert rounds < 20
    assert rounds == 3  # 0 + 1 + 2 s; the next (4 s) would end past the deadline
    assert "gave up" in str(shard.failure)


@pytest.mark.parametrize("event", [
    p.ConnectionClosed(0, p.Condition("amqp:unauthorized-access", "bad"), "sasl"),
    p.ConnectionClosed(0, p.Condition("amqp:connection:failed", "certificate verify failed"),
                       "tls"),
    p.ConnectionClosed(0, p.Condition("amqp:internal-error", "go away"), by_peer=True),
    p.ConnectionClosed(0, None, by_peer=True),
])
def test_no_reconnect_when_it_cannot_help(event: p.ConnectionClosed) -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers)
    shard = connection.shards[0]
    event.conn = shard.id
    workers.emit(0, event)
    assert not _opens(workers.take())
    assert shard.failure is not None and connection.state == "failed"


def test_a_forced_close_by_the_peer_reconnects() -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers)
    workers.lose(connection.shards[0], p.Condition("amqp:connection:forced", "shutdown"),
                 by_peer=True)
    assert _opens(workers.take())


def test_no_reconnect_when_off_or_closed_by_the_user() -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers, policy=None)
    workers.lose(connection.shards[0])
    assert not _opens(workers.take()) and connection.state == "failed"
    connection = _connect(core, workers)
    core.close_connection(connection)
    workers.take()
    workers.lose(connection.shards[0])
    assert not _opens(workers.take())


def test_the_first_open_tries_each_url_once_then_fails() -> None:
    core, workers, _ = _core()
    connection = core.open_connection(A, 1, urls=[A, B], policy=Backoff())
    shard = connection.shards[0]
    workers.take()
    workers.lose(shard, p.Condition("amqp:connection:failed", "refused A"))
    assert [c.port for c in _opens(workers.take())] == [5673]
    workers.lose(shard, p.Condition("amqp:connection:failed", "refused B"))
    assert not _opens(workers.take())
    assert "refused B" in str(shard.failure)


def test_an_authentication_failure_on_the_first_open_is_final() -> None:
    core, workers, _ = _core()
    connection = core.open_connection(A, 1, urls=[A, B], policy=Backoff())
    shard = connection.shards[0]
    workers.take()
    workers.emit(0, p.ConnectionClosed(shard.id, p.Condition("amqp:unauthorized-access",
                                                             "no"), "sasl"))
    assert not _opens(workers.take())
    assert isinstance(shard.failure, AuthenticationError)


def test_a_link_closed_by_the_user_while_down_is_closed_at_once() -> None:
    core, workers, _ = _core()
    connection = _connect(core, workers)
    sender = core.open_sender(connection, "q", 10, False, None, 0)
    workers.open_all()
    workers.lose(connection.shards[0])
    core.close_links(sender.links)
    assert sender.links[0].closed


def test_a_restarted_worker_gets_its_shards_links_and_listeners_again() -> None:
    core, workers, _ = _core(workers=2)
    listener = core.listen("127.0.0.1", 0, 10, 0)
    workers.take()
    workers.emit(0, p.Listening(listener.id, 5999))
    core.adopt(listener)
    workers.take()
    workers.emit(1, p.Listening(listener.id, 5999))
    connection = _connect(core, workers, shards=2)
    sender = core.open_sender(connection, "q", 10, False, "s", 0)
    workers.open_all()
    for link in sender.links:
        link.send_chunk([b"a"])
    workers.take()
    workers.emit(0, p.ConnectionOpened(-1, "peer", listener.id))
    inbound = listener.connections[-1]
    dead = core.slots[0]
    core.worker_restarted(dead, -9)
    again = workers.take(0)
    kinds = [type(c).__name__ for c in again]
    assert kinds == ["OpenConnection", "OpenLink", "Listen"]
    assert again[2].port == 5999 and not again[2].adopt_only  # the same port, accepting
    assert inbound.closed and -1 not in listener.connections
    assert workers.take(1) == []  # the other worker's shard is left alone
    shard = next(s for s in connection.shards if s.slot is dead)
    workers.emit(0, p.ConnectionOpened(shard.id, "peer"))
    link = next(x for x in sender.links if x.slot is dead)
    workers.emit(0, p.LinkOpened(link.id, shard.id, link.attach.name, True))
    assert _sends(workers.take(0)) == [(0, 1)] and sender.resent == 1
    workers.emit(0, p.Listening(listener.id, 5999))
    assert listener.port == 5999 and listener.pending == 0 and not listener.relisten
