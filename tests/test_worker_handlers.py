"""Handlers inside the workers (``open_receiver(address, handler=...)``), through RabbitMQ.

The handlers (tests/worker_handler_app.py) record the ids they handled to a file per
worker in a temporary directory; the messages never cross to the test's process, so the
test checks the union of those files: every message once, none twice. Each worker's
share of a queue must be within 20% of 1/N, with 2 and 4 workers (4 workers on 2 cores
included): the shares come from the broker spreading the queue over links that keep the
same credit granted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import worker_handler_app

import amqscale
import amqscale.handlers
from amqscale.testing import RabbitMQ
from amqscale.workers import protocol as p

COUNT = 100_000  # through RabbitMQ, the slow part: the suite has 20 minutes
APP = "worker_handler_app"


def _fill(conn: amqscale.Connection, address: str, count: int, start: int = 0,
          bodies: dict[int, str] | None = None) -> None:
    """`count` messages with ids start.. (a str body each), sent a window at a time,
    pre-settled: 2.5x faster into RabbitMQ, and a message lost on the way would fail the
    exactly-once check, never pass it."""
    sender = conn.open_sender(address, window=2000, presettled=True)
    bodies = bodies or {}
    for lo in range(start, start + count, 20_000):
        hi = min(start + count, lo + 20_000)
        sender.send_many([amqscale.Message(id=str(i), body=bodies.get(i, "m"))
                          for i in range(lo, hi)])
    sender.flush(timeout=120)
    sender.close()


def _handle(conn: amqscale.Connection, address: str, handler: str, count: int,
            credit: int, directory: Path | None = None) -> amqscale.HandlerReceiver:
    """Let `handler` (a name in worker_handler_app) take `count` messages from `address`
    in the workers (recording to `directory`), then close its receiver; it is returned
    for its counts."""
    args = {"directory": str(directory)} if directory is not None else None
    receiver = conn.open_receiver(address, handler=f"{APP}:{handler}", credit=credit,
                                  handler_args=args)
    receiver.wait(handled=count, timeout=60)
    receiver.close()
    return receiver


def _recorded(directory: Path) -> list[str]:
    ids: list[str] = []
    for path in directory.glob("*.ids"):
        ids += path.read_text().split()
    return ids


def _exactly_once(ids: list[str], count: int) -> None:
    assert len(ids) == count, (len(ids), count)
    assert set(ids) == {str(i) for i in range(count)}


@pytest.mark.parametrize("workers", [2, 4])
def test_a_queue_consumed_by_in_worker_handlers_every_message_once_fair_shares(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path, workers: int) -> None:
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=workers) as container:
        conn = container.connect(rabbitmq.url, shards=workers)  # one shard per worker
        _fill(conn, address, COUNT)
        # Each link keeps 2000 granted: more than RabbitMQ delivers to one link while that
        # link's credit goes round (its writer, TCP, the worker): with 200 the broker,
        # the bottleneck here, runs some links dry and the shares drift to 17%-46%.
        receiver = conn.open_receiver(address, handler=f"{APP}:Recorder", credit=2000 * workers,
                                      handler_args={"directory": str(tmp_path)})
        assert isinstance(receiver, amqscale.HandlerReceiver)
        receiver.wait(handled=COUNT, timeout=120)
        receiver.close()
        counts = receiver.counts()
        assert receiver.failures == []
    assert sorted(counts) == list(range(workers))  # a handler ran in every worker
    assert sum(c["handled"] for c in counts.values()) == COUNT
    assert all(c["handled"] == c["accepted"] for c in counts.values())  # auto_accept
    _exactly_once(_recorded(tmp_path), COUNT)
    fair = 1 / workers
    shares = [counts[w]["handled"] / COUNT for w in range(workers)]
    assert all(abs(share - fair) <= 0.2 * fair for share in shares), shares


def test_a_handler_that_raises_ends_only_its_link_and_its_traceback_reaches_the_user(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    address = f"/queue/{unique_name}"
    count = 3000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        _fill(conn, address, count, bodies={1500: "boom"})
        before = [s["pid"] for s in container.worker_stats()]
        receiver = conn.open_receiver(address, handler=f"{APP}:FailOnce", credit=100,
                                      handler_args={"directory": str(tmp_path)})
        with pytest.raises(amqscale.HandlerFailed) as failed:
            receiver.wait(handled=count, timeout=60)
        error = failed.value
        assert error.condition == p.HANDLER_ERROR
        assert "ValueError: cannot handle 'boom'" in error.traceback
        assert "worker_handler_app.py" in error.traceback  # the handler's own frames
        assert "in on_message" in str(error)
        assert error.worker in (0, 1)
        assert receiver.failures == [error]
        # The other link goes on: the failed link's messages were released to it, the
        # one that raised included.
        receiver.wait(handled=count, timeout=60)
        assert receiver.links == 1
        counts = receiver.counts()
        assert sum(c["handled"] for c in counts.values()) == count
        receiver.close()
        # The worker whose handler raised lives, and takes new links.
        assert [s["pid"] for s in container.worker_stats()] == before
        again = f"{address}-again"
        _fill(conn, again, 400)
        (tmp_path / "again").mkdir()
        other = _handle(conn, again, "Recorder", 400, credit=40, directory=tmp_path / "again")
        assert sorted(other.counts()) == [0, 1]
    _exactly_once(_recorded(tmp_path), count)
    _exactly_once(_recorded(tmp_path / "again"), 400)


def test_a_handler_that_cannot_be_imported_fails_the_open_naming_it(
        rabbitmq: RabbitMQ, unique_name: str) -> None:
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        for path, why in [("no_such_module_here:Handler", "No module named"),
                          (f"{APP}:NoSuchHandler", "NoSuchHandler")]:
            with pytest.raises(amqscale.HandlerFailed) as failed:
                conn.open_receiver(address, handler=path)
            assert failed.value.condition == p.HANDLER_NOT_FOUND
            assert repr(path) in str(failed.value) and why in str(failed.value)
        with pytest.raises(amqscale.HandlerFailed, match="making the handler"):
            conn.open_receiver(address, handler=f"{APP}:Recorder",
                               handler_args={"no_such_argument": 1})
        with pytest.raises(ValueError, match="package.module:Name"):
            conn.open_receiver(address, handler="not a path")
        with pytest.raises(ValueError, match="__main__"):
            conn.open_receiver(address, handler=type("H", (), {"__module__": "__main__"}))
        # The connection and its workers are fine: a good handler opens after them.
        receiver = conn.open_receiver(address, handler=worker_handler_app.Recorder)
        assert receiver.handler == f"{APP}:Recorder"
        receiver.close()


def test_a_handler_that_rejects_and_one_that_settles_by_hand(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    address = f"/queue/{unique_name}"
    count = 2000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        _fill(conn, address, count)
        receiver = _handle(conn, address, "RejectOdd", count, credit=100, directory=tmp_path)
        totals = {name: sum(c[name] for c in receiver.counts().values())
                  for name in ("handled", "accepted", "rejected", "released")}
        assert totals == {"handled": count, "accepted": count // 2,
                          "rejected": count // 2, "released": 0}
        # A handler that is no MessagingHandler (no auto_accept), made by a factory path.
        _fill(conn, address, 500)
        plain = _handle(conn, address, "Counter", 500, credit=50)
        assert sum(c["accepted"] for c in plain.counts().values()) == 500
    ids = sorted(int(i) for i in _recorded(tmp_path))
    assert ids == list(range(0, count, 2))  # the even ones were accepted; rejected: gone


def test_closing_releases_what_the_handlers_were_given(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    """A receiver closed mid-queue: what its handlers had not finished goes back, and a
    plain receiver then gets the rest, each message once in all."""
    address = f"/queue/{unique_name}"
    count = 5000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        _fill(conn, address, count)
        receiver = conn.open_receiver(address, handler=f"{APP}:Recorder", credit=200,
                                      handler_args={"directory": str(tmp_path)})
        receiver.wait(handled=1000, timeout=60)
        receiver.close()
        handled = sum(c["handled"] for c in receiver.counts().values())
        rest = conn.open_receiver(address, credit=500)
        ids = list(_recorded(tmp_path))
        assert len(ids) == handled
        while len(ids) < count:
            deliveries = rest.receive_many(timeout=30)
            ids += [str(m.id) for m in deliveries.messages]
            deliveries.accept()
        rest.close()
    _exactly_once(ids, count)
    assert os.path.isdir(tmp_path)


def test_large_messages_reach_an_in_worker_handler_whole(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    """Messages larger than a ring record come to the worker's handler in one piece."""
    address = f"/queue/{unique_name}"
    sizes = [3 << 20, 100, (1 << 20) + 7]
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        sender = conn.open_sender(address)
        for i, size in enumerate(sizes):
            sender.send(amqscale.Message(id=str(i), body=b"x" * size))
        sender.flush(timeout=60)
        _handle(conn, address, "Sizes", len(sizes), credit=10, directory=tmp_path)
    assert sorted(_recorded(tmp_path)) == sorted(f"{i}:{n}" for i, n in enumerate(sizes))


def test_pre_settled_deliveries_are_handled_and_take_no_settlement(
        proton_c_broker: Any, unique_name: str, tmp_path: Path) -> None:
    """The Proton C broker pre-settles everything it delivers: handled, nothing settled."""
    count = 3000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(proton_c_broker.url, shards=2)
        _fill(conn, unique_name, count)
        counts = _handle(conn, unique_name, "Recorder", count, credit=200,
                         directory=tmp_path).counts()
    assert sum(c["handled"] for c in counts.values()) == count
    assert sum(c["accepted"] for c in counts.values()) == 0
    _exactly_once(_recorded(tmp_path), count)


def test_handlers_hear_their_links_end_when_the_container_closes(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbitmq.url, shards=2)
        _fill(conn, address, 500)
        receiver = conn.open_receiver(address, handler=f"{APP}:Recorder", credit=50,
                                      handler_args={"directory": str(tmp_path)})
        receiver.wait(handled=500, timeout=60)
    # Not closed by hand: the workers' shutdown ended the links, and on_link_closed ran
    # (the Recorder writes its file there) before they exited.
    _exactly_once(_recorded(tmp_path), 500)


def test_the_asyncio_face_runs_in_worker_handlers_too(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    import asyncio

    import amqscale.aio as aio

    address = f"/queue/{unique_name}"
    count = 2000

    async def main() -> dict[int, dict[str, int]]:
        async with aio.Container(workers=2) as container:
            conn = await container.connect(rabbitmq.url, shards=2)
            sender = await conn.open_sender(address, window=count, presettled=True)
            await sender.send_many([amqscale.Message(id=str(i), body="m")
                                    for i in range(count)])
            await sender.flush(timeout=60)
            with pytest.raises(amqscale.HandlerFailed, match="No module named"):
                await conn.open_receiver(address, handler="no_such_module_here:Handler")
            receiver = await conn.open_receiver(
                address, handler=f"{APP}:Recorder", credit=200,
                handler_args={"directory": str(tmp_path)})
            assert isinstance(receiver, aio.HandlerReceiver)
            await receiver.wait(handled=count, timeout=60)
            # A wait that cannot be met says how far the handlers got.
            with pytest.raises(TimeoutError, match=rf"\({count} of {count + 1} handled\)"):
                await receiver.wait(handled=count + 1, timeout=0.5)
            await receiver.aclose()
            assert receiver.closed and receiver.failures == []
            return receiver.counts()

    counts = asyncio.run(main())
    assert sorted(counts) == [0, 1]
    assert sum(c["handled"] for c in counts.values()) == count
    _exactly_once(_recorded(tmp_path), count)


class _WatchWorkerHandlers(amqscale.handlers.MessagingHandler):
    """The event-driven face's way: create_receiver(worker_handler=...), then a timer
    that looks at the receiver's counts until the handlers took `count` messages."""

    def __init__(self, url: str, address: str, directory: str, count: int,
                 worker_handler: str) -> None:
        super().__init__(prefetch=100)
        self.url, self.address, self.directory = url, address, directory
        self.count, self.worker_handler = count, worker_handler
        self.events: list[str] = []
        self.errors: list[Any] = []
        self.counts: dict[int, dict[str, int]] = {}

    def on_start(self, event: Any) -> None:
        self.conn = event.container.connect(self.url, shards=2)
        self.receiver = event.container.create_receiver(
            self.conn, self.address, worker_handler=self.worker_handler,
            worker_handler_args={"directory": self.directory})
        self.plain = event.container.create_receiver(self.conn, self.address + "-plain")
        self.timer = event.container.schedule(0.05, self)

    def on_link_opened(self, event: Any) -> None:
        if event.receiver is self.receiver:
            self.events.append("link_opened")

    def on_link_error(self, event: Any) -> None:
        self.errors.append(event.link.remote_condition)
        self.timer.cancel()
        self.conn.close()

    def on_timer_task(self, event: Any) -> None:
        self.counts = self.receiver.counts()
        if sum(c["handled"] for c in self.counts.values()) >= self.count:
            self.receiver.close()
            self.conn.close()
        else:
            self.timer = event.container.schedule(0.05, self)


def test_the_event_driven_face_runs_in_worker_handlers_too(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    from amqscale.reactor import Container

    address = f"/queue/{unique_name}"
    count = 2000
    with amqscale.Container(workers=1) as filler:
        _fill(filler.connect(rabbitmq.url), address, count)
    watcher = _WatchWorkerHandlers(rabbitmq.url, address, str(tmp_path), count,
                                   f"{APP}:Recorder")
    Container(watcher, workers=2).run()
    assert watcher.errors == []
    assert watcher.events == ["link_opened"]
    assert watcher.receiver.worker_handler == f"{APP}:Recorder"
    assert sorted(watcher.counts) == [0, 1]
    assert sum(c["handled"] for c in watcher.counts.values()) == count
    _exactly_once(_recorded(tmp_path), count)
    with pytest.raises(TypeError, match="worker_handler"):
        watcher.plain.counts()  # its messages would come to on_message


def test_the_event_driven_face_hears_of_a_worker_handler_that_fails(
        rabbitmq: RabbitMQ, unique_name: str, tmp_path: Path) -> None:
    from amqscale.reactor import Container

    missing = _WatchWorkerHandlers(rabbitmq.url, f"/queue/{unique_name}", str(tmp_path),
                                   1, "no_such_module_here:Handler")
    Container(missing, workers=2).run()
    (condition,) = missing.errors
    assert condition.name == p.HANDLER_NOT_FOUND and "No module named" in condition.description
    with pytest.raises(ValueError, match="package.module:Name"):
        Container().create_receiver("amqp://127.0.0.1:1/q", worker_handler="not a path")
    address = f"/queue/{unique_name}-boom"
    with amqscale.Container(workers=1) as filler:
        _fill(filler.connect(rabbitmq.url), address, 20, bodies={10: "boom"})
    raising = _WatchWorkerHandlers(rabbitmq.url, address, str(tmp_path), 20,
                                   f"{APP}:FailOnce")
    Container(raising, workers=2).run()
    (condition,) = raising.errors
    assert condition.name == p.HANDLER_ERROR
    assert "ValueError: cannot handle 'boom'" in condition.description
    assert [f.condition for f in raising.receiver.failures] == [p.HANDLER_ERROR]


# ---- the in-worker dispatcher alone, with the engine played by lists ---------------------


class _Played:
    """An InWorker whose engine and ring are lists."""

    def __init__(self, handler: str, credit: int = 10, args: dict[str, Any] | None = None) -> None:
        from amqscale.workers.inworker import InWorker

        self.commands: list[Any] = []
        self.events: list[Any] = []
        self.writes = 0
        self.inworker = InWorker(3, self.commands.append, self.events.append, self._write)
        self.inworker.open(p.OpenLink(7, 1, "r", False, p.Terminus("q"), p.Terminus(),
                                      credit=credit, handler=handler, handler_args=args,
                                      handler_group=6))

    def _write(self) -> None:
        self.writes += 1

    def deliver(self, *bodies: Any, first: int = 0) -> None:
        payloads = [amqscale.Message(id=str(first + i), body=b).encode()
                    for i, b in enumerate(bodies)]
        assert self.inworker.take(p.Deliveries(7, first, payloads))
        self.inworker.run()

    def settles(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for cmd in self.commands:
            if type(cmd) is p.Settle:
                out.setdefault(cmd.state, []).extend(cmd.ids)
        return out


def test_inworker_applies_messaging_handler_rules_and_tops_up_credit() -> None:
    played = _Played(f"{APP}:RejectOdd", credit=4)
    assert type(played.commands[0]) is p.OpenLink  # the engine attaches it after on_start
    assert played.inworker.take(p.LinkOpened(7, 1, "r", False)) is False  # the user sees it
    played.deliver("a", "b", "c")
    settles = played.settles()
    assert settles == {p.ACCEPTED: [0, 2], p.REJECTED: [1]}
    flows = [c for c in played.commands if type(c) is p.Flow]
    assert [f.credit for f in flows] == [2]  # half the link's credit, handed over at once
    assert played.writes == 1
    counts = [e for e in played.events if type(e) is p.HandlerCounts]
    assert counts == [p.HandlerCounts(7, 3, 2, 1, 0, 0)]


def test_inworker_a_raising_handler_ends_its_link_with_the_traceback() -> None:
    played = _Played(f"{APP}:FailOnce", args={"directory": "/nonexistent-dir-for-test"})
    # FailOnce cannot create its marker there: the OSError is the handler's failure.
    played.deliver("m", "boom", "m")
    assert played.settles() == {p.ACCEPTED: [0]}  # the one before, not the rest
    # The link detaches at once, after the one settlement (the engine releases the rest).
    assert played.commands[-2:] == [
        p.Settle(7, [0], p.ACCEPTED),
        p.CloseLink(7, p.Condition(p.HANDLER_ERROR, "the receiver's handler failed"))]
    assert played.inworker.take(p.LinkClosed(7, None))
    played.inworker.run()
    closed = [e for e in played.events if type(e) is p.LinkClosed]
    assert len(closed) == 1 and closed[0].condition.name == p.HANDLER_ERROR
    assert "FileNotFoundError" in closed[0].condition.description
    assert "in on_message in worker 3" in closed[0].condition.description
    assert played.inworker.links == {} and played.inworker.hosts == {}


def test_inworker_a_handler_path_that_does_not_import_never_attaches() -> None:
    played = _Played(f"{APP}:Missing")
    assert played.commands == []
    (closed,) = played.events
    assert closed.condition.name == p.HANDLER_NOT_FOUND
    assert f"'{APP}:Missing'" in closed.condition.description


def test_inworker_gives_a_pass_at_most_its_budget_then_the_next_pass_the_rest() -> None:
    from amqscale.workers import inworker

    played = _Played(f"{APP}:Counter", credit=10_000)
    count = inworker.RUN_BUDGET + 100
    played.deliver(*["m"] * count)  # one run(): one pass's worth
    assert len(played.settles()[p.ACCEPTED]) == inworker.RUN_BUDGET
    assert played.inworker.wait_time() == 0.0  # the loop does not sleep on the rest
    played.inworker.run()
    assert played.settles()[p.ACCEPTED] == list(range(count))
    assert played.inworker.wait_time() is None or played.inworker.wait_time() > 0


def test_inworker_links_have_sessions_of_their_own() -> None:
    played = _Played(f"{APP}:Counter")
    (opened,) = played.commands
    assert type(opened) is p.OpenLink and opened.own_session


def test_inworker_timers_fire_on_their_handler_and_one_that_raises_ends_its_links(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from amqscale.workers import inworker

    clock = [100.0]
    monkeypatch.setattr(inworker.time, "monotonic", lambda: clock[0])
    played = _Played(f"{APP}:Ticker")
    ticker = played.inworker.hosts[6].handler
    played.inworker.take(p.LinkOpened(7, 1, "r", False))
    played.inworker.run()
    assert played.inworker.wait_time() == pytest.approx(1.0)  # the loop sleeps that long
    clock[0] += 0.5
    played.inworker.run()
    assert ticker.ticks == 0
    clock[0] += 0.6
    played.inworker.run()
    assert ticker.ticks == 1 and len(ticker.tasks) == 2
    ticker.tasks[-1].cancel()
    clock[0] += 1.1
    played.inworker.run()
    assert ticker.ticks == 1  # cancelled
    with pytest.raises(RuntimeError, match="callback"):
        played.inworker.container.schedule(1.0)  # not from a callback: whose would it be?
    played.inworker.current = played.inworker.hosts[6]  # as in one of its callbacks
    ticker.tasks.append(played.inworker.container.schedule(0.5))
    played.inworker.current = None
    clock[0] += 0.6
    played.inworker.run()  # the second tick raises: the handler's link ends
    assert ticker.ticks == 2
    assert played.commands[-1] == p.CloseLink(
        7, p.Condition(p.HANDLER_ERROR, "the receiver's handler failed"))
    assert played.inworker.take(p.LinkClosed(7, None))
    played.inworker.run()
    (closed,) = [e for e in played.events if type(e) is p.LinkClosed]
    assert "raised in on_timer_task" in closed.condition.description
    assert "the second tick fails" in closed.condition.description


def test_an_in_worker_handler_writes_its_batches_from_a_timer(
        proton_c_broker: Any, unique_name: str, tmp_path: Path) -> None:
    count = 5000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(proton_c_broker.url, shards=2)
        _fill(conn, unique_name, count)
        _handle(conn, unique_name, "Batcher", count, credit=200, directory=tmp_path)
    _exactly_once(_recorded(tmp_path), count)
    flushes = [int(path.read_text()) for path in tmp_path.glob("*.flushes")]
    assert len(flushes) == 2 and all(n >= 1 for n in flushes)  # the timers wrote them
