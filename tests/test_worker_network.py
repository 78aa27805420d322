"""The worker's network module in this process: names resolved off the loop, the connect
timeout, a listener and connections on loopback."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from amqscale.workers import network
from amqscale.workers import protocol as p
from amqscale.workers.engine import Engine
from amqscale.workers.network import CONNECT_TIMEOUT, Network


class Loop:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.engine = Engine(0, self.events.append)
        self.network = Network(self.engine)

    def pump_until(self, done: Any, timeout: float = 10.0) -> float:
        """Pump until done(); returns the longest single pass, in seconds."""
        deadline = time.monotonic() + timeout
        longest = 0.0
        while not done():
            assert time.monotonic() < deadline, self.events[-5:]
            start = time.monotonic()
            self.network.pump(0.01)
            self.network.tick(time.monotonic())
            longest = max(longest, time.monotonic() - start)
        return longest

    def of(self, kind: type, **fields: Any) -> list[Any]:
        return [e for e in self.events if type(e) is kind
                and all(getattr(e, k) == v for k, v in fields.items())]


@pytest.fixture
def loop() -> Any:
    loop = Loop()
    yield loop
    loop.network.close()


def listen(loop: Loop) -> int:
    loop.engine.handle(p.Listen(1, "127.0.0.1", 0, "srv"))
    loop.pump_until(lambda: loop.of(p.Listening))
    return int(loop.of(p.Listening)[0].port)


def test_a_slow_name_lookup_does_not_stall_the_loop(
        loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    port = listen(loop)
    real = socket.getaddrinfo
    release = threading.Event()

    def slow(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "slow.test" and not kw.get("flags", 0) & socket.AI_NUMERICHOST:
            release.wait(5)  # a DNS server that takes its time
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    start = time.monotonic()
    loop.engine.handle(p.OpenConnection(1, "slow.test", port, "c1"))
    loop.engine.handle(p.OpenConnection(2, "127.0.0.1", port, "c2"))
    loop.engine.handle(p.OpenLink(2, 2, "l2", True, p.Terminus("q"), p.Terminus("q")))
    # The numeric connection opens and moves a message while the lookup hangs.
    longest = loop.pump_until(lambda: loop.of(p.LinkOpened, link=2))
    loop.engine.handle(p.Send(2, 0, [b"hello"]))
    loop.pump_until(lambda: loop.of(p.Deliveries))
    assert not loop.of(p.ConnectionOpened, conn=1)
    assert longest < 0.5 and time.monotonic() - start < 4
    release.set()
    loop.pump_until(lambda: loop.of(p.ConnectionOpened, conn=1))


def test_an_unknown_name_fails_its_connection(loop: Loop) -> None:
    loop.engine.handle(p.OpenConnection(1, "no-such-host.invalid", 5672, "c1"))
    loop.pump_until(lambda: loop.of(p.ConnectionClosed), timeout=30)
    (closed,) = loop.of(p.ConnectionClosed)
    assert "cannot resolve 'no-such-host.invalid'" in closed.condition.description


def test_a_peer_that_never_answers_times_out(loop: Loop) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        start = time.monotonic()
        loop.engine.handle(p.OpenConnection(1, "127.0.0.1", silent.getsockname()[1], "c",
                                            connect_timeout=0.3))
        loop.pump_until(lambda: loop.of(p.ConnectionClosed), timeout=5)
        (closed,) = loop.of(p.ConnectionClosed)
        assert closed.condition.name == CONNECT_TIMEOUT
        assert "not connected within 0.3 s" in closed.condition.description
        assert 0.25 < time.monotonic() - start < 2
        loop.network.sync()  # the loop's next pass closes the socket
        assert not loop.engine.connections and not loop.network.channels
    finally:
        silent.close()


def test_a_refused_connection_names_the_address(loop: Loop) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    loop.engine.handle(p.OpenConnection(1, "127.0.0.1", port, "c"))
    loop.pump_until(lambda: loop.of(p.ConnectionClosed))
    (closed,) = loop.of(p.ConnectionClosed)
    assert f"127.0.0.1:{port}" in closed.condition.description
    assert "ECONNREFUSED" in closed.condition.description


def test_accept_backs_off_when_out_of_fds(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    port = listen(loop)
    acceptor = loop.network.acceptors[1]
    calls = 0

    class Exhausted:
        def accept(self) -> Any:
            nonlocal calls
            calls += 1
            raise OSError(24, "Too many open files")

        def fileno(self) -> int:
            return real.fileno()

    real = acceptor.sock
    acceptor.sock = Exhausted()  # type: ignore[assignment]
    with socket.create_connection(("127.0.0.1", port)):
        loop.network.pump(0.05)
        assert calls == 1 and acceptor.paused_until > 0
        for _ in range(5):  # paused: not watched, not retried in a busy loop
            loop.network.pump(0.01)
        assert calls == 1
        acceptor.sock = real
        time.sleep(network.ACCEPT_BACKOFF)
        loop.network.tick(time.monotonic())
        loop.pump_until(lambda: loop.network.channels)
