"""The bare engine pair: proton's C engine called straight from Python, nothing of amqscale.

    python perf/peers.py bare-recv --url amqp://127.0.0.1:PORT --listen --count N [--size B]
    python perf/peers.py bare-send --url amqp://127.0.0.1:PORT --count N [--size B]
                                   [--presettled] [--rate R]

This is what one Python process gets from proton-c with the least Python around it, the
anchor "(b)" of perf/compare.py: the functions of the `cproton_ffi.lib` that
python-qpid-proton ships, bound to locals; one socket, a selectors loop, one collector drain
per wake-up, pre-allocated buffers and a pre-built delivery tag; the receiver tops credit up
in batches of half the window. No SASL layer (both ends speak plain AMQP), no TLS, one link.

Per message, sender: `pn_delivery`, `pn_link_send`, `pn_link_advance`, then on its outcome
`pn_delivery_remote_state` and `pn_delivery_settle`; receiver: `pn_delivery_pending`,
`pn_delivery_partial`, `pn_link_recv`, `pn_link_advance`, `pn_delivery_update`,
`pn_delivery_settle`. Per wake-up: `pn_transport_capacity` / `pn_transport_push` in,
`pn_transport_pending` / `pn_transport_peek` / `pn_transport_pop` out. The receiver checks
each body's sequence number (loss and duplicates) as every peer of perf/peers.py does.

Bodies are sent as one data section (the same bytes amqscale's `send(bytes)` puts on the
wire): a 5- or 8-byte section header before the --size bytes.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
import time
from typing import Any

import psutil
from cproton_ffi import ffi, lib
from peers import (
    CLOSE_TIMEOUT,
    HEADER,
    Config,
    Report,
    Schedule,
    Tally,
    announce_ready,
    cpu_seconds,
    filler_for,
    host_port,
)

IO_SIZE = 64 * 1024  # one socket read or write at most, and one engine push
DRAIN_FROM = 1024  # bodies of at least this many bytes: read until the socket is drained
RECV_BUFFER = 1 << 16  # grown to the largest message seen
IN_FLIGHT_BYTES = 64 << 20  # the sender's window, for large bodies: proton buffers them all
ACCEPTED = lib.PN_ACCEPTED
E_DELIVERY = lib.PN_DELIVERY
E_LINK_FLOW = lib.PN_LINK_FLOW
E_CONNECTION_REMOTE_OPEN = lib.PN_CONNECTION_REMOTE_OPEN
E_SESSION_REMOTE_OPEN = lib.PN_SESSION_REMOTE_OPEN
E_LINK_REMOTE_OPEN = lib.PN_LINK_REMOTE_OPEN
E_TRANSPORT_CLOSED = lib.PN_TRANSPORT_CLOSED


def data_section(size: int) -> bytes:
    """The AMQP encoding of a data section of `size` bytes, less the bytes themselves."""
    described = b"\x00\x53\x75"  # descriptor: smallulong 0x75 (data)
    if size < 256:
        return described + b"\xa0" + bytes([size])
    return described + b"\xb0" + struct.pack(">I", size)


class Pump:
    """One connection's transport and socket: bytes in, events drained, bytes out."""

    def __init__(self, sock: socket.socket, server: bool, drain_reads: bool) -> None:
        self.sock = sock
        self.drain_reads = drain_reads
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = lib.pn_transport()
        if server:
            lib.pn_transport_set_server(self.transport)
        self.connection = lib.pn_connection()
        self.collector = lib.pn_collector()
        lib.pn_connection_collect(self.connection, self.collector)
        lib.pn_transport_bind(self.transport, self.connection)
        self.in_buffer = bytearray(IO_SIZE)
        self.in_view = memoryview(self.in_buffer)
        self.in_c = ffi.from_buffer(self.in_buffer)
        self.out_buffer = bytearray(IO_SIZE)
        self.out_view = memoryview(self.out_buffer)
        self.out_c = ffi.from_buffer(self.out_buffer)
        self.closed = False

    def read(self) -> None:
        """Take what the socket has: with `drain_reads`, until it has no more or the
        transport is full, else one read a wake-up. Measured side by side (3 runs each,
        interleaved): draining doubles the rate at 4 KiB, where one read of 64 KiB holds
        the pair to 16 messages a wake-up, and halves it at 100 B. DRAIN_FROM picks."""
        transport = self.transport
        while True:
            capacity = lib.pn_transport_capacity(transport)
            if capacity < 0:
                self.closed = True
                return
            if capacity == 0:
                return  # the transport is full: read once it has processed
            try:
                n = self.sock.recv_into(self.in_view[:min(capacity, IO_SIZE)])
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n == 0:
                lib.pn_transport_close_tail(transport)
                self.closed = True
                return
            lib.pn_transport_push(transport, self.in_c, n)
            if n < min(capacity, IO_SIZE) or not self.drain_reads:
                return  # the socket is drained, or one read is the better choice

    def write(self) -> bool:
        """Write what the transport has until the socket is full; True if some is left."""
        transport = self.transport
        pending_fn, peek, pop, send = (lib.pn_transport_pending, lib.pn_transport_peek,
                                       lib.pn_transport_pop, self.sock.send)
        while True:
            pending = pending_fn(transport)
            if pending <= 0:
                if pending < 0:
                    self.closed = True
                return False
            n = peek(transport, self.out_c, min(pending, IO_SIZE))
            try:
                sent = send(self.out_view[:n])
            except BlockingIOError:
                return True
            except OSError:
                self.closed = True
                return False
            pop(transport, sent)
            if sent < n:
                return True


def idle() -> float:
    return 0.05


def run_loop(pump: Pump, drain: Any, done: Any, deadline: float, tick: Any = idle,
             extra: Any = None) -> None:
    """The selectors loop: `drain()` the collector, `tick()` (it returns how long the loop
    may wait), write, wait for the socket (and `extra`: a file and what to call when it is
    readable), read. Each role drains its own collector, the per-message case inline."""
    selector = selectors.DefaultSelector()
    sock = pump.sock
    selector.register(sock, selectors.EVENT_READ)
    if extra is not None:
        selector.register(extra[0], selectors.EVENT_READ, extra[1])
    writing = False
    while not done() and time.monotonic() < deadline:
        drain()
        timeout = tick()
        more = pump.write()
        if pump.closed:
            return
        if more != writing:
            writing = more
            selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if more else 0))
        for key, mask in selector.select(timeout):
            if key.data is not None:
                key.data()
            elif mask & selectors.EVENT_READ:
                pump.read()
        if pump.closed:
            return


def discard_events(collector: Any) -> Any:
    def drain() -> None:
        while lib.pn_collector_peek(collector):
            lib.pn_collector_pop(collector)
    return drain


def run_sender(cfg: Config) -> Report:
    report = Report(cfg.role)
    me = psutil.Process()
    host, port = host_port(cfg.url)
    pump = Pump(socket.create_connection((host, port), timeout=10), server=False,
                drain_reads=cfg.size >= DRAIN_FROM)
    conn = pump.connection
    lib.pn_connection_set_container(conn, b"perf-bare-sender")
    lib.pn_connection_set_hostname(conn, host.encode())
    lib.pn_connection_open(conn)
    session = lib.pn_session(conn)
    lib.pn_session_open(session)
    link = lib.pn_sender(session, b"perf-bare-sender")
    lib.pn_terminus_set_address(lib.pn_link_target(link), cfg.address.encode())
    lib.pn_terminus_set_address(lib.pn_link_source(link), cfg.address.encode())
    if cfg.presettled:
        lib.pn_link_set_snd_settle_mode(link, lib.PN_SND_SETTLED)
    lib.pn_link_open(link)

    schedule = Schedule(cfg.rate)
    paced = cfg.rate > 0
    # The message: a data section's header, the 16-byte stamp and sequence, filler; the
    # stamp and sequence are written into it in place.
    prefix = data_section(cfg.size)
    body = bytearray(prefix + bytes(HEADER.size) + filler_for(cfg.size))
    body_c, body_len = ffi.from_buffer(body), len(body)
    stamp_at, pack_into = len(prefix), HEADER.pack_into
    tag_int = ffi.new("uint64_t[1]")  # the delivery tag: the sequence number, 8 bytes
    tag = ffi.new("pn_bytes_t *", (8, ffi.cast("char *", tag_int)))[0]
    new_delivery, link_send, advance = lib.pn_delivery, lib.pn_link_send, lib.pn_link_advance
    link_credit, remote_state, settle = (lib.pn_link_credit, lib.pn_delivery_remote_state,
                                         lib.pn_delivery_settle)
    collector = pump.collector
    peek, pop, event_type, event_delivery = (lib.pn_collector_peek, lib.pn_collector_pop,
                                             lib.pn_event_type, lib.pn_event_delivery)
    count, presettled = cfg.count, cfg.presettled
    window = min(cfg.window, max(2, IN_FLIGHT_BYTES // body_len))
    refill_at = window // 2
    next_seq = settled = accepted = 0
    opened = False
    cpu0 = 0.0

    def send_due() -> None:
        nonlocal next_seq, settled
        seq = next_seq
        room = min(link_credit(link), window - (seq - settled), count - seq)
        end = seq + (schedule.due_count(seq, room) if paced else room)
        while seq < end:
            tag_int[0] = seq
            delivery = new_delivery(link, tag)
            pack_into(body, stamp_at, schedule.due(seq) if paced else 0, seq)
            link_send(link, body_c, body_len)
            advance(link)
            if presettled:
                settle(delivery)
            seq += 1
        next_seq = seq
        if presettled:
            settled = seq

    def drain() -> None:
        nonlocal settled, accepted, opened, cpu0
        while True:
            event = peek(collector)
            if not event:
                return
            kind = event_type(event)
            if kind == E_DELIVERY:
                delivery = event_delivery(event)
                outcome = remote_state(delivery)
                if outcome:
                    settle(delivery)
                    settled += 1
                    if outcome == ACCEPTED:
                        accepted += 1
                    if next_seq - settled <= refill_at:  # the window half empty
                        send_due()
            elif kind == E_LINK_FLOW:
                if not opened:
                    opened = True
                    report.start = report.first = time.monotonic()
                    cpu0 = cpu_seconds(me)
                    schedule.begin()
                send_due()
            pop(collector)

    def tick() -> float:
        if paced and opened and next_seq < count:
            if schedule.wait_seconds(next_seq) == 0:
                send_due()  # what fell due while we slept
            return min(0.05, schedule.wait_seconds(next_seq))
        return 0.05

    run_loop(pump, drain, lambda: settled >= count, time.monotonic() + 10 + count / 1000,
             tick)
    report.last = time.monotonic()
    report.cpu_process = cpu_seconds(me) - cpu0
    report.count = settled
    report.accepted = settled if presettled else accepted
    report.other_outcomes = report.count - report.accepted
    if report.count < count:
        report.error = f"settled {report.count} of {count}"
    lib.pn_connection_close(conn)
    run_loop(pump, discard_events(collector), lambda: False,
             time.monotonic() + CLOSE_TIMEOUT)
    pump.sock.close()
    return report


def run_receiver(cfg: Config) -> Report:
    report = Report(cfg.role)
    me = psutil.Process()
    host, port = host_port(cfg.url)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1)
    cpu0 = cpu_seconds(me)
    announce_ready()
    listener.settimeout(60)
    sock, _ = listener.accept()
    listener.close()
    pump = Pump(sock, server=True, drain_reads=cfg.size >= DRAIN_FROM)

    tally = Tally(cfg.count, cfg.rate > 0)
    paced = cfg.rate > 0
    seen = tally.seen
    recv_c = ffi.new("char[]", RECV_BUFFER)
    recv_view = ffi.buffer(recv_c)
    seq_at = struct.Struct("<Q").unpack_from
    seq_offset = len(data_section(cfg.size)) + 8
    section = seq_offset - 8
    pending_fn, partial, recv, advance = (lib.pn_delivery_pending, lib.pn_delivery_partial,
                                          lib.pn_link_recv, lib.pn_link_advance)
    update, settle, is_settled = (lib.pn_delivery_update, lib.pn_delivery_settle,
                                  lib.pn_delivery_settled)
    flow = lib.pn_link_flow
    collector = pump.collector
    peek, pop, event_type, event_delivery = (lib.pn_collector_peek, lib.pn_collector_pop,
                                             lib.pn_event_type, lib.pn_event_delivery)
    window, half = cfg.credit, cfg.credit // 2
    link: Any = None
    received = duplicates = taken = 0
    stdin_open = True

    def grow(size: int) -> tuple[Any, Any]:
        """A receive buffer for a message of `size` bytes, and its view."""
        grown = ffi.new("char[]", size)
        return grown, ffi.buffer(grown)

    def drain() -> None:
        nonlocal link, received, duplicates, taken, recv_c, recv_view
        while True:
            event = peek(collector)
            if not event:
                return
            kind = event_type(event)
            if kind == E_DELIVERY:
                delivery = event_delivery(event)
                if not partial(delivery):  # else the rest of it comes in later frames
                    size = pending_fn(delivery)
                    if size > len(recv_view):
                        recv_c, recv_view = grow(size)
                    n = recv(link, recv_c, size)
                    advance(link)
                    if paced:
                        tally.add(recv_view[section:n])
                    else:
                        seq = seq_at(recv_view, seq_offset)[0]
                        if seq < len(seen) and not seen[seq]:
                            seen[seq] = 1
                        else:
                            duplicates += 1
                    received += 1
                    if not is_settled(delivery):
                        update(delivery, ACCEPTED)
                    settle(delivery)
                    taken += 1
                    if taken >= half:  # credit back in batches
                        flow(link, taken)
                        taken = 0
            elif kind == E_CONNECTION_REMOTE_OPEN:
                lib.pn_connection_open(lib.pn_event_connection(event))
            elif kind == E_SESSION_REMOTE_OPEN:
                lib.pn_session_open(lib.pn_event_session(event))
            elif kind == E_LINK_REMOTE_OPEN:
                link = lib.pn_event_link(event)  # one link per run
                lib.pn_terminus_copy(lib.pn_link_source(link), lib.pn_link_remote_source(link))
                lib.pn_terminus_copy(lib.pn_link_target(link), lib.pn_link_remote_target(link))
                lib.pn_link_open(link)
                flow(link, window)
            pop(collector)

    run_loop(pump, drain, lambda: received >= cfg.count,
             time.monotonic() + 60 + cfg.count / 1000)
    report.last = time.monotonic()
    report.cpu_process = cpu_seconds(me) - cpu0
    if paced:
        tally.fill(report)
    else:
        report.count, report.unique, report.duplicates = received, sum(seen), duplicates
    if report.count < cfg.count:
        report.error = f"received {report.count} of {cfg.count}"
    report.emit()  # now: the orchestrator stops the clock while we linger

    def stdin_closed() -> None:
        nonlocal stdin_open
        stdin_open = bool(sys.stdin.buffer.read1(4096))

    # Keep pumping (the last dispositions, the sender's close) until our stdin closes.
    run_loop(pump, drain, lambda: not stdin_open, time.monotonic() + CLOSE_TIMEOUT,
             extra=(sys.stdin, stdin_closed))
    pump.sock.close()
    return report
