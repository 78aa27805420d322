"""One peer of a perf/compare.py case, as its own process: a sender or a receiver.

    python perf/peers.py ROLE --url amqp://127.0.0.1:PORT [--address A] --count N
                         [--size B] [--presettled] [--rate R] [--workers W] [--messages]
                         [--batch N] [--listen] [--ca CA.pem | --cert CERT.pem --key KEY.pem]
                         [--no-reconnect]

Roles (ROLE):

* ``proton-send`` / ``proton-recv``: python-qpid-proton's MessagingHandler, written as the
  Qpid examples and Quiver's Python arrow are (credit/prefetch 1000; the receiver does
  ``container.listen`` peer-to-peer, or attaches to ``--address`` through a broker).
* ``bare-send`` / ``bare-recv``: the bare engine pair (perf/bare.py): proton's C engine
  called straight from Python through ``cproton_ffi.lib``, nothing of amqscale. The anchor.
* ``engine-send`` / ``engine-recv``: amqscale's own ``amqscale.workers.engine.Engine``
  driven by the worker's network module in this process: no rings, no workers
  (the engine-in-a-loop row; not the engine's limit: the bare pair is).
* ``amqscale-send`` / ``amqscale-recv``: the amqscale API with ``--workers`` workers (and as
  many shards); bytes in and out, or with ``--messages`` an ``amqscale.Message`` with an id
  and 3 application properties built by the sender and read by the receiver. With
  ``--batch N`` they use ``send_many`` and ``receive_many`` + ``accept_many``, N at most.
  They time the harness's own per-message work apart after the run (``cpu_own``).
* ``inworker-recv``: a receiver whose messages a handler takes inside the amqscale workers
  (``open_receiver(..., handler="inworker_peer:Count")``, perf/inworker_peer.py): it counts,
  checks the sequence and accepts there, and writes its counts to a file as its link
  closes. It connects (through a broker); the sender of its case is ``amqscale-send``.
* ``rhea-send`` / ``rhea-recv``: rhea, the Node.js AMQP 1.0 library, as a rhea user writes
  it (``perf/rhea_peer.js``, with ``tests/peers/node_modules`` as NODE_PATH; amqp:// only).
  The sender is node in place of this process (same pid and stdout); the receiver runs node
  as a child, passes its lines on, turns its latency samples into the HdrHistogram and
  closes the child's stdin when ours ends.

``--no-reconnect`` (the amqscale, aio and inworker roles): ``connect(..., reconnect=False)``
instead of amqscale's default (reconnect on), so that a case with it shows what reconnect
costs. A listening receiver makes no connection and ignores it.

TLS (the proton and amqscale roles): an ``amqps://`` URL with ``--cert``/``--key`` (a
listening receiver: the server's certificate and key) and ``--ca`` (a connecting peer: the
CA it trusts; the server's certificate and name are verified). proton-python builds an
``SSLDomain`` (server: ``set_credentials(cert, key, None)``; client: ``MODE_CLIENT``,
``set_trusted_ca_db(ca)``, ``VERIFY_PEER_NAME``); amqscale an ``amqscale.TLS``.

Every body starts with 16 bytes: the scheduled send time (``time.monotonic_ns()``, a
system-wide clock on Linux; 0 when not paced) and the sequence number. With ``--rate`` the
sender keeps a fixed schedule (message i is due at start + i/rate) and sends late messages
at once rather than shifting the schedule, so the receiver's latency, receive time minus
scheduled time, includes any waiting (coordinated omission). Receivers of a paced run record
it in an HdrHistogram (microseconds).

A receiver prints ``ready`` once it listens (or its link is attached) and, when it has
``--count`` messages (or after ``--idle`` seconds without one), a JSON line of results;
then it waits for its stdin to close before it closes its connections, so that its last
settlements reach the sender. A sender prints its JSON line when every message is settled
(or, pre-settled, handed to the engine). CPU seconds are read with psutil from the moment
the link is usable to the end of the run; amqscale's workers are read separately, before
the container closes. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import psutil

HEADER = struct.Struct("<QQ")  # scheduled send time (ns), sequence number
IDLE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 30.0
PROPS_SOURCE = "amqscale-perf"
RHEA_PEER_SCRIPT = Path(__file__).resolve().with_name("rhea_peer.js")
RHEA_MODULES = Path(__file__).resolve().parents[1] / "tests" / "peers" / "node_modules"


# ---- shared pieces --------------------------------------------------------------------------


@dataclass
class Config:
    role: str
    url: str
    address: str
    count: int
    size: int
    presettled: bool
    rate: float
    workers: int
    messages: bool
    credit: int
    window: int
    listen: bool
    idle: float
    batch: int
    ca: str | None = None  # TLS, amqps:// only: the CA a connecting peer trusts
    cert: str | None = None  # and a listening peer's certificate and key
    key: str | None = None
    no_reconnect: bool = False  # amqscale roles: connect(..., reconnect=False)

    @property
    def tls(self) -> bool:
        return self.url.startswith("amqps:")


@dataclass
class Report:
    """What a peer prints at the end: one JSON object."""

    role: str
    count: int = 0  # messages received, or settled at the sender
    start: float = 0.0  # link usable (sender: just before the first send)
    first: float = 0.0  # first message received / sent
    last: float = 0.0  # last message received / last outcome
    cpu_process: float = 0.0  # CPU seconds of this process over the run
    # Of cpu_process, an estimate of the harness's own work (making bodies, counting and
    # timing them), measured apart after the run: the amqscale roles only.
    cpu_own: float | None = None
    cpu_workers: list[float] = field(default_factory=list)  # amqscale workers, each
    accepted: int = 0
    unique: int = 0
    duplicates: int = 0
    other_outcomes: int = 0
    histogram: str | None = None  # base64 HdrHistogram of latency in microseconds
    error: str | None = None

    def emit(self) -> None:
        print(json.dumps(self.__dict__), flush=True)


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


class Schedule:
    """Message i is due at start + i/rate (monotonic ns); rate 0 means "now", stamp 0."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.interval_ns = int(1e9 / rate) if rate > 0 else 0
        self.start_ns = 0

    def begin(self) -> None:
        self.start_ns = time.monotonic_ns()

    def due(self, seq: int) -> int:
        return self.start_ns + seq * self.interval_ns if self.rate > 0 else 0

    def wait_seconds(self, seq: int) -> float:
        """How long until message `seq` is due (0 when it is due or overdue)."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (self.due(seq) - time.monotonic_ns()) / 1e9)

    def due_count(self, next_seq: int, limit: int) -> int:
        """How many of the messages from `next_seq` on are due now, at most `limit`."""
        if self.rate <= 0:
            return limit
        elapsed = time.monotonic_ns() - self.start_ns
        due_upto = elapsed // self.interval_ns + 1
        return max(0, min(limit, due_upto - next_seq))


class Tally:
    """The receiver's bookkeeping: uniqueness by sequence number, latency, first/last."""

    def __init__(self, count: int, paced: bool) -> None:
        self.seen = bytearray(count)
        self.received = 0
        self.duplicates = 0
        self.first = self.last = 0.0
        self.histogram: Any = None
        if paced:
            from hdrh.histogram import HdrHistogram

            self.histogram = HdrHistogram(1, 60_000_000, 3)  # 1 us .. 60 s

    def add(self, body: bytes | memoryview) -> None:
        stamp, seq = HEADER.unpack_from(body)
        now_ns = time.monotonic_ns()
        if 0 <= seq < len(self.seen) and not self.seen[seq]:
            self.seen[seq] = 1
        else:
            self.duplicates += 1
        if self.histogram is not None and stamp:
            self.histogram.record_value(max(1, (now_ns - stamp) // 1000))
        self.received += 1
        self.last = now_ns / 1e9
        if self.received == 1:
            self.first = self.last

    def fill(self, report: Report) -> None:
        report.count = self.received
        report.unique = sum(self.seen)
        report.duplicates = self.duplicates
        report.first, report.last = self.first, self.last
        if self.histogram is not None:
            report.histogram = base64.b64encode(self.histogram.encode()).decode()


def body_of(seq: int, stamp: int, filler: bytes) -> bytes:
    return HEADER.pack(stamp, seq) + filler


def filler_for(size: int) -> bytes:
    return b"x" * max(0, size - HEADER.size)


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 5672


def announce_ready() -> None:
    print("ready", flush=True)


def proton_ssl_domain(cfg: Config, server: bool) -> Any:
    """proton-python's SSLDomain for an amqps:// peer (None for amqp://)."""
    if not cfg.tls:
        return None
    from proton import SSLDomain

    if server:
        assert cfg.cert is not None and cfg.key is not None  # parse_args saw to it
        domain = SSLDomain(SSLDomain.MODE_SERVER)
        domain.set_credentials(cfg.cert, cfg.key, None)
    else:
        assert cfg.ca is not None
        domain = SSLDomain(SSLDomain.MODE_CLIENT)
        domain.set_trusted_ca_db(cfg.ca)
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return domain


def amqscale_tls(cfg: Config, server: bool) -> Any:
    """amqscale.TLS for an amqps:// peer (None for amqp://): a listener's certificate and
    key, or the CA a client trusts (the default verify: certificate and name)."""
    if not cfg.tls:
        return None
    import amqscale

    return amqscale.TLS(cert=cfg.cert, key=cfg.key) if server else amqscale.TLS(ca=cfg.ca)


def reconnect_option(cfg: Config) -> dict[str, Any]:
    """amqscale's connect() keyword for --no-reconnect (none otherwise: the default)."""
    return {"reconnect": False} if cfg.no_reconnect else {}


def wait_for_stdin_eof(timeout: float = CLOSE_TIMEOUT) -> None:
    """The orchestrator closes our stdin once the sender is done."""
    selector = selectors.DefaultSelector()
    try:
        selector.register(sys.stdin, selectors.EVENT_READ)
    except (OSError, ValueError):
        return  # not a pipe or a terminal (e.g. /dev/null): nothing to wait for
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(deadline - time.monotonic()) and not sys.stdin.readline():
            return


# ---- proton-python (MessagingHandler) -------------------------------------------------------


def proton_message(cfg: Config, seq: int, stamp: int, filler: bytes) -> Any:
    import proton

    body = body_of(seq, stamp, filler)
    if cfg.messages:
        return proton.Message(id=seq, body=body, inferred=True, properties={
            "seq": seq, "source": PROPS_SOURCE, "flag": True})
    return proton.Message(body=body, inferred=True)


def reactor_message(cfg: Config, seq: int, stamp: int, filler: bytes) -> Any:
    import amqscale

    body = body_of(seq, stamp, filler)
    if cfg.messages:
        return amqscale.Message(id=seq, body=body, properties={
            "seq": seq, "source": PROPS_SOURCE, "flag": True})
    return amqscale.Message(body=body)


def handler_api(role: str) -> tuple[Any, Any, Any, Callable[..., Any]]:
    """MessagingHandler, Container, AtMostOnce and the message maker of proton-python or,
    for the reactor-* roles, of amqscale's event-driven face: the same handler code runs
    on both."""
    if role.startswith("reactor"):
        from amqscale.handlers import MessagingHandler
        from amqscale.reactor import AtMostOnce, Container
        return MessagingHandler, Container, AtMostOnce, reactor_message
    from proton.handlers import MessagingHandler as ProtonHandler
    from proton.reactor import AtMostOnce as ProtonAtMostOnce
    from proton.reactor import Container as ProtonContainer
    return ProtonHandler, ProtonContainer, ProtonAtMostOnce, proton_message


def make_container(cfg: Config, container_class: Any, handler: Any) -> Any:
    if cfg.role.startswith("reactor"):
        return container_class(handler, workers=cfg.workers)
    return container_class(handler)


def worker_cpu(container: Any) -> list[psutil.Process]:
    """amqscale's workers of an event-driven Container (none for proton's)."""
    pids = getattr(container, "worker_pids", None)
    return [psutil.Process(pid) for pid in pids()] if pids is not None else []


def run_proton_sender(cfg: Config) -> Report:
    MessagingHandler, Container, AtMostOnce, make_message = handler_api(cfg.role)

    report = Report(cfg.role)
    me = psutil.Process()
    schedule = Schedule(cfg.rate)
    filler = filler_for(cfg.size)

    class Send(MessagingHandler):
        def __init__(self) -> None:
            super().__init__(prefetch=0, auto_settle=True)
            self.sender: Any = None
            self.sent = 0
            self.timer: Any = None
            self.cpu0 = 0.0
            self.finished = False

        def on_start(self, event: Any) -> None:
            options = AtMostOnce() if cfg.presettled else None
            conn = event.container.connect(cfg.url,
                                           ssl_domain=proton_ssl_domain(cfg, server=False))
            self.sender = event.container.create_sender(conn, cfg.address, options=options)

        def on_sendable(self, event: Any) -> None:
            if self.sent == 0 and not report.start:
                report.start = report.first = time.monotonic()
                self.cpu0 = cpu_seconds(me)
                self.workers = worker_cpu(event.container)
                self.wcpu0 = [cpu_seconds(w) for w in self.workers]
                schedule.begin()
            self.send_due(event.container)

        def on_timer_task(self, event: Any) -> None:
            self.timer = None
            self.send_due(event.container)

        def send_due(self, container: Any) -> None:
            sender = self.sender
            while sender.credit > 0 and self.sent < cfg.count:
                wait = schedule.wait_seconds(self.sent)
                if wait > 0:
                    if self.timer is None:
                        if hasattr(container, "mark"):
                            container.mark()  # proton: schedule() counts from the last mark
                        self.timer = container.schedule(wait, self)
                    return
                sender.send(make_message(cfg, self.sent, schedule.due(self.sent), filler))
                self.sent += 1
            if cfg.presettled and self.sent == cfg.count and not self.finished:
                report.count = report.accepted = self.sent
                self.finish(sender.connection)

        def on_accepted(self, event: Any) -> None:
            report.accepted += 1
            report.count += 1
            if report.count == cfg.count:
                self.finish(event.connection)

        def on_rejected(self, event: Any) -> None:
            self.other(event)

        def on_released(self, event: Any) -> None:
            self.other(event)

        def other(self, event: Any) -> None:
            report.other_outcomes += 1
            report.count += 1
            if report.count == cfg.count:
                self.finish(event.connection)

        def finish(self, connection: Any) -> None:
            self.finished = True
            report.last = time.monotonic()
            report.cpu_process = cpu_seconds(me) - self.cpu0
            report.cpu_workers = [cpu_seconds(w) - c
                                  for w, c in zip(self.workers, self.wcpu0, strict=True)]
            connection.close()

    make_container(cfg, Container, Send()).run()
    return report


def run_proton_receiver(cfg: Config) -> Report:
    MessagingHandler, Container, _, _ = handler_api(cfg.role)

    report = Report(cfg.role)
    me = psutil.Process()
    tally = Tally(cfg.count, cfg.rate > 0)

    class Receive(MessagingHandler):
        def __init__(self) -> None:
            super().__init__(prefetch=cfg.credit, auto_accept=False)
            self.acceptor: Any = None
            self.cpu0 = 0.0
            self.idle_timer: Any = None
            self.seen_at_timer = -1

        def on_start(self, event: Any) -> None:
            self.cpu0 = cpu_seconds(me)
            self.workers: list[psutil.Process] = []
            if cfg.listen:
                self.acceptor = event.container.listen(
                    cfg.url, ssl_domain=proton_ssl_domain(cfg, server=True))
                self.workers = worker_cpu(event.container)
                self.wcpu0 = [cpu_seconds(w) for w in self.workers]
                announce_ready()
            else:
                conn = event.container.connect(
                    cfg.url, ssl_domain=proton_ssl_domain(cfg, server=False))
                event.container.create_receiver(conn, cfg.address)
            self.idle_timer = event.container.schedule(cfg.idle, self)

        def on_link_opened(self, event: Any) -> None:
            if not cfg.listen and event.receiver is not None:
                self.cpu0 = cpu_seconds(me)
                self.workers = worker_cpu(event.container)
                self.wcpu0 = [cpu_seconds(w) for w in self.workers]
                announce_ready()

        def on_message(self, event: Any) -> None:
            message = event.message
            if cfg.messages:
                props = message.properties
                if message.id != props["seq"] or props["source"] != PROPS_SOURCE:
                    raise ValueError(f"message {message.id} has properties {props}")
            tally.add(message.body)
            if not event.delivery.settled:
                self.accept(event.delivery)
            if tally.received == cfg.count:
                self.finish(event.connection)

        def on_timer_task(self, event: Any) -> None:
            if tally.received == self.seen_at_timer:  # idle for cfg.idle seconds: give up
                report.error = f"idle for {cfg.idle} s after {tally.received} messages"
                self.finish(None)
                event.container.stop()
                return
            self.seen_at_timer = tally.received
            self.idle_timer = event.container.schedule(cfg.idle, self)

        def finish(self, connection: Any) -> None:
            report.cpu_process = cpu_seconds(me) - self.cpu0
            report.cpu_workers = [cpu_seconds(w) - c
                                  for w, c in zip(self.workers, self.wcpu0, strict=True)]
            if self.idle_timer is not None:
                self.idle_timer.cancel()
            if connection is not None:
                connection.close()
            if self.acceptor is not None:
                self.acceptor.close()

    make_container(cfg, Container, Receive()).run()
    tally.fill(report)
    return report


# ---- the engine-in-a-loop row: amqscale's Engine on the worker's network module, no rings -


class EngineLoop:
    """An Engine driven by the worker's own network module (`workers/network.py`), minus
    the rings: what a worker does, in this process."""

    def __init__(self) -> None:
        from amqscale.workers.engine import Engine
        from amqscale.workers.network import Network

        self.events: list[Any] = []
        self.engine = Engine(0, self.events.append)
        self.network = Network(self.engine)

    def take_events(self) -> list[Any]:
        events = self.events[:]
        self.events.clear()  # in place: the engine holds its append method
        return events

    def pump(self, timeout: float) -> None:
        """Let the engine act, write, wait up to `timeout` for sockets, read."""
        self.network.pump(timeout)

    def pump_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            self.pump(0.05)
        return True


def run_engine_sender(cfg: Config) -> Report:
    from amqscale.links import encode_body
    from amqscale.workers import protocol as p

    report = Report(cfg.role)
    me = psutil.Process()
    loop = EngineLoop()
    engine = loop.engine
    host, port = host_port(cfg.url)
    engine.handle(p.OpenConnection(1, host, port, "perf-engine-sender"))
    settle_mode = p.SND_SETTLED if cfg.presettled else p.SND_UNSETTLED
    engine.handle(p.OpenLink(1, 1, "perf-engine-sender", True, p.Terminus(cfg.address),
                             p.Terminus(cfg.address), snd_settle_mode=settle_mode))
    schedule = Schedule(cfg.rate)
    prefix = encode_body(b"\0" * cfg.size)[:-cfg.size]  # the data section's header
    filler = filler_for(cfg.size)
    pack = HEADER.pack
    opened = False
    next_seq = settled = 0
    cpu0 = 0.0
    deadline = time.monotonic() + IDLE_TIMEOUT + cfg.count / 1000
    while settled < cfg.count and time.monotonic() < deadline:
        for event in loop.take_events():
            kind = type(event)
            if kind is p.LinkOpened and not opened:
                opened = True
                report.start = report.first = time.monotonic()
                cpu0 = cpu_seconds(me)
                schedule.begin()
            elif kind is p.Outcomes:
                count = p.run_length(event.runs)
                settled += count
                if event.state in (p.ACCEPTED, p.SENT_SETTLED):
                    report.accepted += count
                else:
                    report.other_outcomes += count
            elif kind in (p.LinkClosed, p.ConnectionClosed):
                report.error = f"closed early: {event!r}"
                deadline = 0.0
        wait = 0.05
        if opened and next_seq < cfg.count:
            room = min(cfg.window - (next_seq - settled), cfg.count - next_seq)
            n = schedule.due_count(next_seq, room)
            if n > 0:
                payloads = [prefix + pack(schedule.due(seq), seq) + filler
                            for seq in range(next_seq, next_seq + n)]
                engine.handle(p.Send(1, next_seq, payloads, settled=cfg.presettled))
                next_seq += n
                wait = 0.0
            elif room > 0:
                wait = min(wait, schedule.wait_seconds(next_seq))
        loop.pump(wait)
    report.count = settled
    report.last = time.monotonic()
    report.cpu_process = cpu_seconds(me) - cpu0
    engine.handle(p.CloseConnection(1))
    loop.pump_until(lambda: not engine.connections, CLOSE_TIMEOUT)
    return report


def run_engine_receiver(cfg: Config) -> Report:
    from amqscale.links import decode_body
    from amqscale.workers import protocol as p

    report = Report(cfg.role)
    me = psutil.Process()
    loop = EngineLoop()
    engine = loop.engine
    host, port = host_port(cfg.url)
    engine.handle(p.Listen(1, host, port, "perf-engine-receiver", credit=cfg.credit))
    tally = Tally(cfg.count, cfg.rate > 0)
    cpu0 = cpu_seconds(me)
    idle_since = time.monotonic()
    taken: dict[int, int] = {}  # per link: messages taken since credit was last granted
    while tally.received < cfg.count:
        for event in loop.take_events():
            kind = type(event)
            if kind is p.Listening:
                announce_ready()
            elif kind is p.ListenFailed:
                raise RuntimeError(f"cannot listen: {event.condition}")
            elif kind is p.Deliveries:
                idle_since = time.monotonic()
                on_deliveries(engine, event, tally, decode_body)
                taken[event.link] = taken.get(event.link, 0) + len(event.payloads)
                if taken[event.link] * 2 >= cfg.credit:  # credit back in batches
                    engine.handle(p.Flow(event.link, taken.pop(event.link)))
        if time.monotonic() - idle_since > cfg.idle:
            report.error = f"idle for {cfg.idle} s after {tally.received} messages"
            break
        loop.pump(0.05)
    report.cpu_process = cpu_seconds(me) - cpu0
    tally.fill(report)
    loop.pump_until(lambda: not engine.connections, CLOSE_TIMEOUT)  # the sender closes
    return report


def on_deliveries(engine: Any, batch: Any, tally: Tally,
                  decode_body: Callable[[bytes], bytes | None]) -> None:
    """Count a batch, then settle it as accepted, at once."""
    from amqscale.workers import protocol as p

    for payload in batch.payloads:
        body = decode_body(payload)
        if body is None:
            raise ValueError("expected a message that is one data section")
        tally.add(body)
    n = len(batch.payloads)
    settled = set(batch.settled or ())
    ids = [batch.first_id + i for i in range(n) if i not in settled]
    if ids:
        engine.handle(p.Settle(batch.link, ids, p.ACCEPTED))


# ---- amqscale -------------------------------------------------------------------------------


def amqscale_payload(cfg: Config, seq: int, stamp: int, filler: bytes) -> Any:
    import amqscale

    body = body_of(seq, stamp, filler)
    if cfg.messages:
        return amqscale.Message(id=seq, body=body, properties={
            "seq": seq, "source": PROPS_SOURCE, "flag": True})
    return body


def run_amqscale_sender(cfg: Config) -> Report:
    import amqscale

    report = Report(cfg.role)
    me = psutil.Process()
    schedule = Schedule(cfg.rate)
    filler = filler_for(cfg.size)
    with amqscale.Container(workers=cfg.workers) as container:
        workers = [psutil.Process(pid) for pid in container.worker_pids()]
        conn = container.connect(cfg.url, shards=cfg.workers,
                                 tls=amqscale_tls(cfg, server=False), **reconnect_option(cfg))
        sender = conn.open_sender(cfg.address, window=cfg.window, presettled=cfg.presettled)
        cpu0, wcpu0 = cpu_seconds(me), [cpu_seconds(w) for w in workers]
        report.start = report.first = time.monotonic()
        schedule.begin()
        if cfg.batch:
            send_batches(cfg, sender, schedule, filler)
        else:
            send = sender.send
            for seq in range(cfg.count):
                wait = schedule.wait_seconds(seq)
                if wait > 0:
                    time.sleep(wait)
                send(amqscale_payload(cfg, seq, schedule.due(seq), filler))
        sender.flush(timeout=IDLE_TIMEOUT + cfg.count / 1000)
        report.last = time.monotonic()
        report.cpu_process = cpu_seconds(me) - cpu0
        report.cpu_workers = [cpu_seconds(w) - c for w, c in zip(workers, wcpu0, strict=True)]
        report.cpu_own = sender_own_cost(cfg, schedule, filler) * cfg.count
        report.accepted = sender.counts.get(0x24, 0) + sender.counts.get(0, 0)
        report.count = sum(sender.counts.values())
        report.other_outcomes = report.count - report.accepted
        conn.close()
    return report


def own_cost(work: Callable[[int], object], count: int = 20_000) -> float:
    """CPU seconds per call of the harness's own per-message `work`, timed alone, so that
    the library's share of a role's CPU can be told apart (building a Message and reading
    one count as the library's)."""
    start = time.thread_time()
    for i in range(count):
        work(i)
    return (time.thread_time() - start) / count


def sender_own_cost(cfg: Config, schedule: Schedule, filler: bytes) -> float:
    if cfg.rate > 0:
        return own_cost(lambda i: (schedule.wait_seconds(i), body_of(i, schedule.due(i), filler)))
    return own_cost(lambda i: body_of(i, schedule.due(i), filler))


def receiver_own_cost(cfg: Config) -> float:
    tally = Tally(20_000, cfg.rate > 0)
    bodies = [body_of(i, time.monotonic_ns(), filler_for(cfg.size)) for i in range(20_000)]
    return own_cost(lambda i: tally.add(bodies[i]))


def send_batches(cfg: Config, sender: Any, schedule: Schedule, filler: bytes) -> None:
    """send_many() what is due, at most --batch at a time."""

    seq = 0
    while seq < cfg.count:
        n = schedule.due_count(seq, min(cfg.batch, cfg.count - seq))
        if n == 0:
            time.sleep(max(schedule.wait_seconds(seq), 1e-5))
            continue
        sender.send_many(batch_payloads(cfg, seq, n, schedule, filler))
        seq += n


def batch_payloads(cfg: Config, seq: int, n: int, schedule: Schedule,
                   filler: bytes) -> list[Any]:
    """Messages seq..seq+n-1 for send_many: bytes bodies, or Messages (--messages)."""
    import amqscale

    bodies = [body_of(i, schedule.due(i), filler) for i in range(seq, seq + n)]
    if cfg.messages:
        return [amqscale.Message(id=i, body=body, properties={
                    "seq": i, "source": PROPS_SOURCE, "flag": True})
                for i, body in enumerate(bodies, seq)]
    return bodies


def run_amqscale_receiver(cfg: Config) -> Report:
    import amqscale

    report = Report(cfg.role)
    me = psutil.Process()
    tally = Tally(cfg.count, cfg.rate > 0)
    with amqscale.Container(workers=cfg.workers) as container:
        workers = [psutil.Process(pid) for pid in container.worker_pids()]
        if cfg.listen:
            receiver = container.listen(cfg.url, credit=cfg.credit,
                                        tls=amqscale_tls(cfg, server=True)).receiver
        else:
            conn = container.connect(cfg.url, shards=cfg.workers,
                                     tls=amqscale_tls(cfg, server=False),
                                     **reconnect_option(cfg))
            receiver = conn.open_receiver(cfg.address, credit=cfg.credit)
        cpu0, wcpu0 = cpu_seconds(me), [cpu_seconds(w) for w in workers]
        announce_ready()
        read = read_message if cfg.messages else read_body
        if cfg.batch:
            report.error = receive_batches(cfg, receiver, tally)
        else:
            report.error = receive_one_by_one(cfg, receiver, tally, read)
        report.cpu_process = cpu_seconds(me) - cpu0
        report.cpu_workers = [cpu_seconds(w) - c for w, c in zip(workers, wcpu0, strict=True)]
        report.cpu_own = receiver_own_cost(cfg) * tally.received
        tally.fill(report)
        report.emit()  # now: the orchestrator can stop the clock while we linger
        wait_for_stdin_eof()
    return report


def receive_one_by_one(cfg: Config, receiver: Any, tally: Tally,
                       read: Callable[[Any], bytes]) -> str | None:
    """receive() + accept() until --count; returns an error, if any."""
    while tally.received < cfg.count:
        try:
            delivery = receiver.receive(timeout=cfg.idle)
        except TimeoutError:
            return f"idle for {cfg.idle} s after {tally.received} messages"
        tally.add(read(delivery))
        delivery.accept()
    return None


def receive_batches(cfg: Config, receiver: Any, tally: Tally) -> str | None:
    """receive_many() + accept_many() until --count; returns an error, if any."""
    while tally.received < cfg.count:
        try:
            deliveries = receiver.receive_many(cfg.batch, timeout=cfg.idle)
        except TimeoutError:
            return f"idle for {cfg.idle} s after {tally.received} messages"
        if cfg.messages:
            bodies = [check_message(message) for message in deliveries.messages]
        else:
            bodies = deliveries.bodies
        for body in bodies:
            tally.add(body)
        deliveries.accept()
    return None


# ---- the asyncio face -------------------------------------------------------------------------


def run_aio_sender(cfg: Config) -> Report:
    """amqscale-send on the asyncio face: `await sender.put()` (room only) one by one,
    or `await sender.send_many()`, then the outcomes; on uvloop."""
    import asyncio

    import uvloop

    import amqscale.aio as aio

    async def main() -> Report:
        report = Report(cfg.role)
        me = psutil.Process()
        schedule = Schedule(cfg.rate)
        filler = filler_for(cfg.size)
        async with aio.Container(workers=cfg.workers) as container:
            workers = [psutil.Process(pid) for pid in container.worker_pids()]
            conn = await container.connect(cfg.url, shards=cfg.workers,
                                           **reconnect_option(cfg))
            sender = await conn.open_sender(cfg.address, window=cfg.window,
                                            presettled=cfg.presettled)
            cpu0, wcpu0 = cpu_seconds(me), [cpu_seconds(w) for w in workers]
            report.start = report.first = time.monotonic()
            schedule.begin()
            seq = 0
            while seq < cfg.count:
                wait = schedule.wait_seconds(seq)
                if wait > 0:
                    await asyncio.sleep(wait)
                if cfg.batch:
                    n = max(1, schedule.due_count(seq, min(cfg.batch, cfg.count - seq)))
                    await sender.send_many(batch_payloads(cfg, seq, n, schedule, filler))
                    seq += n
                else:
                    await sender.put(amqscale_payload(cfg, seq, schedule.due(seq), filler))
                    seq += 1
            await sender.flush(timeout=IDLE_TIMEOUT + cfg.count / 1000)
            report.last = time.monotonic()
            report.cpu_process = cpu_seconds(me) - cpu0
            report.cpu_workers = [cpu_seconds(w) - c
                                  for w, c in zip(workers, wcpu0, strict=True)]
            report.cpu_own = sender_own_cost(cfg, schedule, filler) * cfg.count
            report.accepted = sender.counts.get(0x24, 0) + sender.counts.get(0, 0)
            report.count = sum(sender.counts.values())
            report.other_outcomes = report.count - report.accepted
            await conn.aclose()
        return report

    return uvloop.run(main())


def run_aio_receiver(cfg: Config) -> Report:
    """amqscale-recv on the asyncio face: `async for` + accept() one by one, or
    `await receiver.receive_many()` + accept; on uvloop."""
    import asyncio

    import uvloop

    import amqscale.aio as aio

    async def main() -> Report:
        report = Report(cfg.role)
        me = psutil.Process()
        tally = Tally(cfg.count, cfg.rate > 0)
        async with aio.Container(workers=cfg.workers) as container:
            workers = [psutil.Process(pid) for pid in container.worker_pids()]
            if cfg.listen:
                receiver = (await container.listen(cfg.url, credit=cfg.credit)).receiver
            else:
                conn = await container.connect(cfg.url, shards=cfg.workers,
                                               **reconnect_option(cfg))
                receiver = await conn.open_receiver(cfg.address, credit=cfg.credit)
            cpu0, wcpu0 = cpu_seconds(me), [cpu_seconds(w) for w in workers]
            announce_ready()
            read = read_message if cfg.messages else read_body
            try:
                while tally.received < cfg.count:
                    if cfg.batch:
                        deliveries = await receiver.receive_many(cfg.batch, timeout=cfg.idle)
                        bodies = ([check_message(m) for m in deliveries.messages]
                                  if cfg.messages else deliveries.bodies)
                        for body in bodies:
                            tally.add(body)
                        deliveries.accept()
                    else:
                        delivery = await receiver.receive(timeout=cfg.idle)
                        tally.add(read(delivery))
                        delivery.accept()
            except TimeoutError:
                report.error = f"idle for {cfg.idle} s after {tally.received} messages"
            report.cpu_process = cpu_seconds(me) - cpu0
            report.cpu_workers = [cpu_seconds(w) - c
                                  for w, c in zip(workers, wcpu0, strict=True)]
            report.cpu_own = receiver_own_cost(cfg) * tally.received
            tally.fill(report)
            report.emit()  # now: the orchestrator can stop the clock while we linger
            # Off the loop: it hands the last settlements over while this waits.
            await asyncio.get_running_loop().run_in_executor(None, wait_for_stdin_eof)
        return report

    return uvloop.run(main())


def read_body(delivery: Any) -> bytes:
    body: bytes = delivery.body
    return body


def read_message(delivery: Any) -> bytes:
    return check_message(delivery.message)


def check_message(message: Any) -> bytes:
    props = message.properties
    if message.id != props["seq"] or props["source"] != PROPS_SOURCE:
        raise ValueError(f"message {message.id} has properties {props}")
    body: bytes = message.body
    return body


# ---- rhea (Node.js) ---------------------------------------------------------------------------


def run_rhea(cfg: Config) -> NoReturn:
    """perf/rhea_peer.js with this configuration: exec'd in place of the sender; the
    receiver as a child (see the module docstring). Exits with node's status."""
    if not (RHEA_MODULES / "rhea").exists():
        raise RuntimeError(f"rhea (npm) not found at {RHEA_MODULES}: run scripts/setup.sh")
    argv = ["node", str(RHEA_PEER_SCRIPT), cfg.role.removeprefix("rhea-"), "--url", cfg.url,
            "--address", cfg.address, "--count", str(cfg.count), "--size", str(cfg.size),
            "--rate", str(cfg.rate), "--credit", str(cfg.credit), "--window", str(cfg.window),
            "--idle", str(cfg.idle)]
    argv += ["--presettled"] * cfg.presettled + ["--listen"] * cfg.listen
    env = {**os.environ, "NODE_PATH": str(RHEA_MODULES)}
    sys.stdout.flush()
    if cfg.role == "rhea-send":
        os.execvpe(argv[0], argv, env)
    child = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    threading.Thread(target=forward_eof, args=(child.stdin,), daemon=True).start()
    for line in child.stdout:
        if line.startswith("{"):
            line = json.dumps(with_histogram(json.loads(line))) + "\n"
        sys.stdout.write(line)
        sys.stdout.flush()
    raise SystemExit(child.wait())


def forward_eof(pipe: Any) -> None:
    """Close `pipe` (the child's stdin) once our stdin reaches its end."""
    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 65536):
            pass
    with contextlib.suppress(OSError):
        pipe.close()


def with_histogram(report: dict[str, Any]) -> dict[str, Any]:
    """rhea_peer.js's latency samples (base64 of little-endian uint32 microseconds) as the
    report's `histogram`, as Tally.fill makes it."""
    samples = report.pop("latency_us_samples_b64", None)
    if samples is not None:
        from hdrh.histogram import HdrHistogram

        histogram = HdrHistogram(1, 60_000_000, 3)  # 1 us .. 60 s
        raw = base64.b64decode(samples)
        for (value,) in struct.iter_unpack("<I", raw):
            histogram.record_value(value)
        report["histogram"] = base64.b64encode(histogram.encode()).decode()
    return report


# ---- command line ---------------------------------------------------------------------------

def bare() -> Any:
    """perf/bare.py, the bare engine pair (it imports this module's shared pieces)."""
    import bare as module

    return module


def run_inworker_receiver(cfg: Config) -> Report:
    """perf/inworker_peer.py: the in-worker handler receiver (it imports this module too)."""
    import inworker_peer

    report: Report = inworker_peer.run_receiver(cfg, reconnect_option(cfg))
    return report


TLS_ROLES = ("proton", "amqscale")  # the families that take amqps:// (and --ca/--cert/--key)

ROLES: dict[str, Callable[[Config], Report]] = {
    "proton-send": run_proton_sender,
    "proton-recv": run_proton_receiver,
    "bare-send": lambda cfg: bare().run_sender(cfg),
    "bare-recv": lambda cfg: bare().run_receiver(cfg),
    "engine-send": run_engine_sender,
    "engine-recv": run_engine_receiver,
    "amqscale-send": run_amqscale_sender,
    "amqscale-recv": run_amqscale_receiver,
    "reactor-send": run_proton_sender,  # the same handlers, on amqscale.reactor
    "reactor-recv": run_proton_receiver,
    "aio-send": run_aio_sender,
    "aio-recv": run_aio_receiver,
    "rhea-send": run_rhea,  # node perf/rhea_peer.js
    "rhea-recv": run_rhea,
    "inworker-recv": run_inworker_receiver,  # perf/inworker_peer.py
}


def parse_args(argv: list[str]) -> Config:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=sorted(ROLES))
    ap.add_argument("--url", required=True)
    ap.add_argument("--address", default="amqscale-perf")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", type=int, default=100, help="body bytes (at least 16)")
    ap.add_argument("--presettled", action="store_true", help="at-most-once")
    ap.add_argument("--rate", type=float, default=0.0, help="msg/s schedule; 0: flat out")
    ap.add_argument("--workers", type=int, default=1, help="amqscale workers (and shards)")
    ap.add_argument("--messages", action="store_true", help="id + 3 properties per message")
    ap.add_argument("--credit", type=int, default=1000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--listen", action="store_true", help="receiver: listen (peer-to-peer)")
    ap.add_argument("--idle", type=float, default=IDLE_TIMEOUT)
    ap.add_argument("--batch", type=int, default=0,
                    help="amqscale: send_many / receive_many + accept_many, this many at most")
    ap.add_argument("--ca", help="TLS (amqps://): the CA PEM a connecting peer trusts")
    ap.add_argument("--cert", help="TLS (amqps://): a listening peer's certificate PEM")
    ap.add_argument("--key", help="TLS (amqps://): a listening peer's private key PEM")
    ap.add_argument("--no-reconnect", action="store_true",
                    help="amqscale roles: connect(..., reconnect=False)")
    args = ap.parse_args(argv)
    if args.size < HEADER.size:
        ap.error(f"--size must be at least {HEADER.size}")
    if args.url.startswith("amqps:"):
        if args.role.split("-")[0] not in TLS_ROLES:
            ap.error(f"amqps:// is supported by the {' and '.join(TLS_ROLES)} roles only")
        listening = args.listen and args.role.endswith("-recv")
        needed = ("cert", "key") if listening else ("ca",)
        missing = [f"--{name}" for name in needed if not getattr(args, name)]
        if missing:
            ap.error(f"amqps:// needs {' and '.join(missing)} here")
    return Config(**vars(args))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = ROLES[cfg.role](cfg)
    except Exception as exc:  # report it as JSON: the orchestrator reads one line
        Report(cfg.role, error=f"{type(exc).__name__}: {exc}").emit()
        raise
    if cfg.role not in ("amqscale-recv", "aio-recv", "bare-recv"):  # reported before closing
        report.emit()
        if cfg.role.endswith("-recv"):
            wait_for_stdin_eof()


if __name__ == "__main__":
    main()
