"""Hostile peers: generated malformed, truncated and random AMQP byte sequences thrown at a
worker's listener and at its client connections.

The bulk (10,000 sequences) drives the proton adapter in this process with bytes, ten
sequences per example, beside a healthy connection on the same engine that must keep
moving messages; a few hundred more go through real sockets to a real worker process, as
inbound connections to its listener and as the answers of a plain TCP server that the
worker connects to. The worker must live, its other connection must flow, and its file
descriptors and memory must come back to where they were.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_helpers import LISTENER, Pair
from worker_process import Driven, loop_link, take_messages, worker

from amqscale.workers import protocol as p
from amqscale.workers.engine import Engine

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
PER_EXAMPLE = 10
IN_PROCESS_EXAMPLES = 600  # x PER_EXAMPLE sequences (the suite's time budget)
SOCKET_EXAMPLES = 30


def valid_streams() -> list[bytes]:
    """What a real client writes: header, SASL, open, begin, attach, transfers, and what
    a real server answers; the seeds for mutations."""
    pair = Pair(fragment=4096)
    cc_id = pair.connect()
    c, s = pair.client.engine, pair.server.engine
    client_conn, server_conn = pair.conns[0]
    sent, answered = bytearray(), bytearray()
    c.handle(p.OpenLink(1, cc_id, "l", True, p.Terminus("q"), p.Terminus("q")))
    c.handle(p.Send(1, 0, [b"m" * 100, b"M" * 9000]))
    for _ in range(50):
        for src, sconn, dst, dconn, log in ((c, client_conn, s, server_conn, sent),
                                            (s, server_conn, c, client_conn, answered)):
            src.process()
            n = src.peek(sconn)
            if n > 0:
                chunk = bytes(src.output[:n])
                log += chunk
                src.pop(sconn, n)
                dst.input_buffer[:n] = chunk
                dst.push(dconn, n)
    return [bytes(sent), bytes(answered)]


SEEDS = valid_streams()


def frame(body: bytes, size: int | None = None, doff: int = 2, kind: int = 0,
          channel: int = 0) -> bytes:
    declared = 8 + len(body) if size is None else size
    return struct.pack(">IBBH", declared & 0xFFFFFFFF, doff, kind, channel) + body


@st.composite
def performative(draw: st.DrawFn) -> bytes:
    """A described list: a real or bogus performative code and random fields."""
    code = draw(st.one_of(st.integers(0x10, 0x18), st.integers(0x40, 0x44),
                          st.integers(0, 255)))
    fields = draw(st.lists(st.one_of(
        st.just(b"\x40"),  # null
        st.binary(max_size=4).map(lambda b: b"\x52" + (b[:1] or b"\x00")),  # smalluint
        st.binary(max_size=40).map(lambda b: b"\xa0" + bytes([len(b)]) + b),  # vbin8
        st.binary(max_size=40).map(lambda b: b"\xa3" + bytes([len(b)]) + b),  # sym8
        st.binary(max_size=12),  # garbage
    ), max_size=12))
    payload = b"".join(fields)
    count = draw(st.one_of(st.just(len(fields)), st.integers(0, 255)))
    size = draw(st.one_of(st.just(len(payload) + 1), st.integers(0, 255)))
    return b"\x00\x53" + bytes([code]) + b"\xc0" + bytes([size, count]) + payload


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A header, then frames with bad performatives, sizes, offsets, types, channels."""
    out = draw(st.sampled_from([AMQP_HEADER, SASL_HEADER, b""]))
    for _ in range(draw(st.integers(1, 6))):
        body = draw(st.one_of(performative(), st.binary(max_size=200)))
        size = draw(st.one_of(st.none(), st.integers(0, 16), st.just(0xFFFFFFFF),
                              st.integers(0, 1 << 32)))
        out += frame(body, size, draw(st.integers(0, 255)), draw(st.integers(0, 3)),
                     draw(st.integers(0, 0xFFFF)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real stream truncated, bit-flipped, or with a span replaced or repeated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            del data[at:]
        elif op == 1:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 2:
            data[at:at + draw(st.integers(1, 8))] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
    return bytes(data)


sequences = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: AMQP_HEADER + b),
    framed(),
    mutated(),
    st.integers(0, 0xFFFFFFFF).map(lambda n: AMQP_HEADER + struct.pack(">I", n) + b"\x02"),
)
batches = st.lists(st.tuples(sequences, st.integers(1, 512)), min_size=PER_EXAMPLE,
                   max_size=PER_EXAMPLE)


def feed(engine: Engine, conn: Any, data: bytes, chunk: int) -> None:
    """Push `data` a chunk at a time, answering nothing (what is written is dropped), then
    close the input as a peer that hangs up would; the connection must then be over."""
    alive = engine.connections
    for start in range(0, len(data), chunk):
        if conn.id not in alive or engine.capacity(conn) <= 0:
            break
        piece = data[start:start + min(chunk, engine.capacity(conn))]
        engine.input_buffer[:len(piece)] = piece
        engine.push(conn, len(piece))
        drain(engine, conn)
    if conn.id in alive:
        if engine.capacity(conn) >= 0:
            engine.close_input(conn)
        drain(engine, conn)
    assert conn.id not in alive, "a hung-up connection was kept"


def drain(engine: Engine, conn: Any) -> None:
    while conn.id in engine.connections:
        n = engine.peek(conn)
        if n < 0:
            engine.output_closed(conn)
            return
        if n == 0:
            return
        engine.pop(conn, n)


class Target:
    """One engine pair for the whole run: the hostile connections go to the server's
    listener and out of the client, beside a healthy connection between the two."""

    def __init__(self) -> None:
        self.pair = Pair(fragment=4096)
        self.good = self.pair.connect()
        self.inbound = self.pair.open_sender(1, self.good)
        self.seq = 0
        self.next_conn = 1000
        self.sequences = 0

    def healthy(self) -> None:
        self.pair.server.events.clear()
        self.pair.client.engine.handle(p.Send(1, self.seq, [b"still flowing"]))
        self.seq += 1
        self.pair.pump()
        (got,) = self.pair.server.of(p.Deliveries)
        self.pair.server.engine.handle(p.Settle(self.inbound, [got.first_id]))
        self.pair.server.engine.handle(p.Flow(self.inbound, 1))  # as the user side does
        self.pair.pump()

    def hostile_inbound(self, data: bytes, chunk: int) -> None:
        engine = self.pair.server.engine
        conn = engine.adopt(LISTENER, "hostile")
        assert conn is not None
        feed(engine, conn, data, chunk)
        engine.flush_events()

    def hostile_server(self, data: bytes, chunk: int) -> None:
        engine = self.pair.client.engine
        self.next_conn += 1
        engine.handle(p.OpenConnection(self.next_conn, "hostile", 1, "c"))
        engine.handle(p.OpenLink(self.next_conn, self.next_conn, "x", False, p.Terminus("q"),
                                 p.Terminus("q"), credit=10))
        conn, _ = engine.connect_requests.pop()
        drain(engine, conn)  # our header and open go nowhere
        feed(engine, conn, data, chunk)
        engine.flush_events()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    yield Target()


@settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batch=batches)
def test_hostile_bytes_in_process(target: Target, batch: list[tuple[bytes, int]]) -> None:
    for i, (data, chunk) in enumerate(batch):
        if i % 2:
            target.hostile_server(data, chunk)
        else:
            target.hostile_inbound(data, chunk)
        target.sequences += 1
    target.healthy()


def test_hostile_bytes_in_process_left_nothing_behind(target: Target) -> None:
    assert target.sequences >= IN_PROCESS_EXAMPLES * PER_EXAMPLE
    for side in (target.pair.client.engine, target.pair.server.engine):
        assert list(side.connections) == [target.good] or \
            list(side.connections) == [c.id for _, c in target.pair.conns]
        assert len(side.by_ptr) == 1 and len(side.links) == 1 and len(side.link_by_ptr) == 1
    target.healthy()


# ---- through real sockets, to a real worker -----------------------------------------------


class Garbage:
    """A plain TCP server that answers each connection with the next queued bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.answers: list[bytes] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                answer = self.answers.pop(0) if self.answers else b""
            with conn:
                try:
                    conn.settimeout(5)
                    conn.sendall(answer)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass  # until the worker hangs up
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


class RealTarget:
    def __init__(self, w: Driven) -> None:
        self.w = w
        self.port, self.inbound = loop_link(w)
        self.garbage = Garbage()
        self.seq = 0
        self.next_conn = 100
        self.process = psutil.Process(w.pid)

    def healthy(self) -> None:
        self.w.events.clear()
        self.w.send(p.Send(1, self.seq, [b"still flowing"]))
        self.seq += 1
        assert take_messages(self.w, self.inbound, 1) == [b"still flowing"]
        self.w.send(p.Flow(self.inbound, 1))

    def hostile_inbound(self, data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as peer:
            try:
                peer.sendall(data)
                peer.shutdown(socket.SHUT_WR)
                while peer.recv(65536):
                    pass  # the worker must hang up
            except OSError as exc:  # it did so already (a reset, or before our shutdown)
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                    raise

    def hostile_servers(self, answers: list[bytes]) -> None:
        with self.garbage.lock:
            self.garbage.answers += answers
        first = self.next_conn
        for _ in answers:
            self.next_conn += 1
            self.w.send(p.OpenConnection(self.next_conn, "127.0.0.1", self.garbage.port, "c"),
                        p.OpenLink(self.next_conn, self.next_conn, "x", False,
                                   p.Terminus("q"), p.Terminus("q"), credit=10))
        self.w.wait(lambda ev: {e.conn for e in ev if type(e) is p.ConnectionClosed}
                    >= set(range(first + 1, self.next_conn + 1)), timeout=30,
                    what="every hostile server's connection to end")


@pytest.fixture(scope="module")
def real() -> Iterator[RealTarget]:
    with worker() as w:
        target = RealTarget(w)
        yield target
        target.garbage.close()


def settled_fds(process: psutil.Process, want: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := process.num_fds()) > want and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


@settings(max_examples=SOCKET_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batch=batches)
def test_hostile_bytes_through_sockets(real: RealTarget, batch: list[tuple[bytes, int]]) -> None:
    if real.seq == 0:
        real.healthy()  # warm: the first message allocates what later ones reuse
        real.fds = real.process.num_fds()  # type: ignore[attr-defined]
        real.rss = real.process.memory_info().rss  # type: ignore[attr-defined]
    for data, _ in batch[:PER_EXAMPLE // 2]:
        real.hostile_inbound(data)
    real.hostile_servers([data for data, _ in batch[PER_EXAMPLE // 2:]])
    assert real.w.alive()
    real.healthy()


def test_hostile_bytes_through_sockets_leaked_nothing(real: RealTarget) -> None:
    fds, rss = real.fds, real.rss  # type: ignore[attr-defined]
    assert settled_fds(real.process, fds) <= fds
    growth = real.process.memory_info().rss - rss
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB"
    real.healthy()
