"""The network side of a worker: sockets, name resolution, connecting, listening, accepting
and handing accepted connections to the other workers.

`Network` moves bytes between sockets and an `engine.Engine` (the sans-IO proton adapter)
and owns the loop's selector; the worker loop (`worker.py`) and `perf/peers.py` both drive
an engine through it. Nothing here blocks: names that are not numeric addresses are
resolved on a small thread pool (a `getaddrinfo` in the loop would stall every connection
of the worker for as long as DNS takes), whose results wake the loop through an eventfd.
Outbound connections that are not open within their `connect_timeout` fail with a clear
condition. Running out of file descriptors in `accept()` pauses that listener briefly
instead of failing: every other connection keeps being served.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import selectors
import socket
import time
from collections import deque
from typing import Any

from . import protocol as p
from .engine import IO_CHUNK, Connection, Engine, describe, log_internal

ACCEPT_BACKOFF = 0.1  # seconds a listener is not watched after fd or memory exhaustion
ACCEPTS_PER_WAKEUP = 64  # bound the time one wake-up spends accepting
LISTEN_BACKLOG = 128
RESOLVER_THREADS = 2
CONNECT_TIMEOUT = "amqscale:connect-timeout"
# accept() errors that say "no resources now": retrying at once would spin.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

Address = tuple[int, Any]  # (family, sockaddr)


class Channel:
    """A connection's socket (None while its name is being resolved)."""

    __slots__ = ("conn", "sock", "connecting", "want_write", "shut", "deadline", "timeout")

    def __init__(self, conn: Connection, sock: socket.socket | None = None) -> None:
        self.conn = conn
        self.sock = sock
        self.connecting = False  # a non-blocking connect is under way
        self.want_write = False
        self.shut = False  # our write side is shut down
        self.deadline = 0.0  # outbound: fail unless open by then (0: no deadline)
        self.timeout = 0.0


class Acceptor:
    """A bound, listening socket (on the worker that accepts)."""

    __slots__ = ("id", "sock", "paused_until")

    def __init__(self, listener_id: int, sock: socket.socket) -> None:
        self.id = listener_id
        self.sock = sock
        self.paused_until = 0.0


class HandoffIn:
    """The channel on which worker 0 deals this worker its share of inbound connections."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Resolver:
    """getaddrinfo off the loop thread; a done lookup writes the eventfd `fd`.

    The pool's threads sleep in a queue or in getaddrinfo (the GIL released), so they do
    not slow the engine's C calls the way a busy thread would.
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._done: deque[tuple[Any, list[Address] | Exception]] = deque()

    @staticmethod
    def numeric(host: str, port: int, passive: bool) -> list[Address] | None:
        """The address of a numeric host (or of a passive empty one), found at once."""
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        if passive:
            flags |= socket.AI_PASSIVE
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=flags)
        except (OSError, UnicodeError):
            return None
        return [(info[0], info[4]) for info in infos]

    def submit(self, token: Any, host: str, port: int, passive: bool) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                RESOLVER_THREADS, thread_name_prefix="amqscale-resolver")
        self._pool.submit(self._lookup, token, host, port, passive)

    def _lookup(self, token: Any, host: str, port: int, passive: bool) -> None:
        result: list[Address] | Exception
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE if passive else 0)
            result = [(info[0], info[4]) for info in infos]
        except Exception as exc:  # reported to the connection, not lost in the pool
            result = exc
        self._done.append((token, result))
        os.eventfd_write(self.fd, 1)

    def take(self) -> list[tuple[Any, list[Address] | Exception]]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self.fd)


class Network:
    """Every socket of one worker, and the selector its loop waits on.

    `handoff`: on worker 0 (`deals`), one Unix socket to each other worker, to deal
    accepted connections round-robin over them; on the others, the one from worker 0.
    """

    def __init__(self, engine: Engine, handoff: list[socket.socket] | None = None,
                 deals: bool = True) -> None:
        self.engine = engine
        self.selector = selectors.DefaultSelector()
        self.masks: dict[int, int] = {}
        self.channels: dict[int, Channel] = {}  # by id(channel)
        self.acceptors: dict[int, Acceptor] = {}
        self.handoff = list(handoff or ())
        self.deals = deals
        self.next_handoff = 0
        self.resolver = Resolver()
        self.selector.register(self.resolver.fd, selectors.EVENT_READ, self.resolver)
        self.pending_deadlines: list[Channel] = []  # outbound channels not yet open
        # Connects waiting for their delay (OpenConnection.delay): (due, channel, command).
        self.delayed: list[tuple[float, Channel, p.OpenConnection]] = []
        if not deals:
            for channel in self.handoff:
                self.selector.register(channel, selectors.EVENT_READ, HandoffIn(channel))

    # ---- the loop's hooks ----------------------------------------------------------------

    def watch(self, fileobj: Any, data: Any) -> None:
        """Have select() report `fileobj` (readable) as `data` (the loop's own fds)."""
        self.selector.register(fileobj, selectors.EVENT_READ, data)

    def unwatch(self, fileobj: Any) -> None:
        self.selector.unregister(fileobj)

    def pump(self, timeout: float) -> list[Any]:
        """One pass for a loop with nothing else to do: act, write, wait, read, write."""
        engine = self.engine
        engine.process()
        self.write_all()
        engine.flush_events()
        self.update()
        others = self.select(timeout)
        engine.process()
        self.write_all()
        engine.flush_events()
        return others

    def select(self, timeout: float) -> list[Any]:
        """Wait up to `timeout` and serve the ready sockets; returns the `data` of the
        ready fds that are not the network's (see watch())."""
        others = []
        for key, mask in self.selector.select(timeout):
            target = key.data
            kind = type(target)
            if kind is Channel:
                self._on_socket(target, mask)
            elif kind is Acceptor:
                self.accept(target)
            elif kind is HandoffIn:
                self._adopt_handed(target)
            elif target is self.resolver:
                self._resolved()
            else:
                others.append(target)
        return others

    def tick(self, now: float) -> float | None:
        """Timers: idle timeouts, connect deadlines, paused listeners. Returns seconds
        until the next one is due (None: none)."""
        soonest = self.engine.tick(now)
        soonest = self._start_due(now, soonest)
        for chan in list(self.pending_deadlines):
            if chan.conn.opened or chan.conn.id not in self.engine.connections:
                self.pending_deadlines.remove(chan)
            elif now >= chan.deadline:
                self.pending_deadlines.remove(chan)
                self.engine.fail(chan.conn, f"{describe(chan.conn)}: not connected within "
                                            f"{chan.timeout:g} s", CONNECT_TIMEOUT)
            else:
                soonest = _sooner(soonest, chan.deadline - now)
        for acceptor in self.acceptors.values():
            if acceptor.paused_until:
                if now >= acceptor.paused_until:
                    acceptor.paused_until = 0.0
                else:
                    soonest = _sooner(soonest, acceptor.paused_until - now)
        return soonest

    def _start_due(self, now: float, soonest: float | None) -> float | None:
        """Start the delayed connects that are due (closed ones are dropped)."""
        waiting = []
        for due, chan, cmd in self.delayed:
            if chan.conn.id not in self.engine.connections or chan.conn.io is not chan:
                continue  # closed meanwhile
            if now >= due:
                self._start(chan, cmd)
            else:
                waiting.append((due, chan, cmd))
                soonest = _sooner(soonest, due - now)
        self.delayed = waiting
        return soonest

    def sync(self) -> None:
        """Act on what the engine asked for: connects, listens, closed listeners and the
        sockets of dropped connections."""
        engine = self.engine
        while (engine.connect_requests or engine.listen_requests or engine.closed_listeners
               or engine.dropped):
            connects, engine.connect_requests = engine.connect_requests, []
            listens, engine.listen_requests = engine.listen_requests, []
            closed, engine.closed_listeners = engine.closed_listeners, []
            dropped, engine.dropped = engine.dropped, []
            for conn, open_cmd in connects:
                self._connect(conn, open_cmd)
            for listen in listens:
                self._listen(listen)
            for listener_id in closed:
                self._close_acceptor(listener_id)
            for conn in dropped:
                self._close_channel(conn)

    def update(self, reading: bool = True) -> None:
        """Keep the selector in step with the sockets; `reading` False stops taking input
        (the event ring is full)."""
        self.sync()
        register = self._register
        for chan in self.channels.values():
            if chan.sock is None:
                continue  # still resolving
            want = selectors.EVENT_READ if reading else 0
            if chan.want_write or chan.connecting:
                want |= selectors.EVENT_WRITE
            register(chan.sock, want, chan)
        for acceptor in self.acceptors.values():
            watching = reading and not acceptor.paused_until
            register(acceptor.sock, selectors.EVENT_READ if watching else 0, acceptor)

    def close(self) -> None:
        for chan in list(self.channels.values()):
            self._close_channel(chan.conn)
        for listener_id in list(self.acceptors):
            self._close_acceptor(listener_id)
        self.selector.close()
        self.resolver.close()

    # ---- bytes ---------------------------------------------------------------------------

    def write_all(self) -> None:
        for chan in list(self.channels.values()):
            self.write(chan)

    def write(self, chan: Channel) -> None:
        """Send what the transport has, popping only what the socket took."""
        sock = chan.sock
        if sock is None or chan.connecting:
            return
        conn = chan.conn
        engine = self.engine
        if conn.id not in engine.connections:
            return
        output = engine.output
        while True:
            n = engine.peek(conn)
            if n <= 0:
                chan.want_write = False
                if n < 0:
                    self._output_closed(chan)
                return
            try:
                sent = sock.send(output[:n])
            except (BlockingIOError, InterruptedError):
                chan.want_write = True
                return
            except OSError as exc:
                engine.fail(conn, f"{describe(conn)}: connection lost: {exc}")
                return
            engine.pop(conn, sent)
            if sent < n:
                chan.want_write = True
                return

    def _output_closed(self, chan: Channel) -> None:
        if not chan.shut and chan.sock is not None:
            chan.shut = True
            with contextlib.suppress(OSError):
                chan.sock.shutdown(socket.SHUT_WR)
        self.engine.output_closed(chan.conn)

    def read(self, chan: Channel) -> None:
        """Move what the socket has into the transport, a slice at a time."""
        conn = chan.conn
        engine = self.engine
        connections = engine.connections
        sock = chan.sock
        assert sock is not None
        buf = engine.input_buffer
        for _ in range(64):
            capacity = engine.capacity(conn)
            if capacity < 0:
                return  # the tail is closed; the transport will report why
            if capacity == 0:
                break  # the engine is full: don't mistake this for EOF
            wanted = min(capacity, IO_CHUNK)
            try:
                n = sock.recv_into(buf, wanted)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                engine.fail(conn, f"{describe(conn)}: connection lost: {exc}")
                return
            if n == 0:
                engine.close_input(conn)
                break
            engine.push(conn, n)
            if conn.id not in connections:
                return  # what it read ended it
            if n < wanted:
                break  # the socket is drained (the engine takes ~4 KiB at a time)

    def _on_socket(self, chan: Channel, mask: int) -> None:
        conn = chan.conn
        connections = self.engine.connections
        if conn.id not in connections:
            return
        try:
            if chan.connecting and mask & selectors.EVENT_WRITE:
                self._on_connected(chan)
            if mask & selectors.EVENT_READ and conn.id in connections:
                self.read(chan)
            if mask & selectors.EVENT_WRITE and conn.id in connections:
                self.write(chan)
        except Exception as exc:  # one connection's trouble is not the worker's
            log_internal(exc, f"serving {describe(conn)} failed")
            self.engine.fail(conn, f"{describe(conn)}: the worker failed serving it: "
                                   f"{type(exc).__name__}: {exc}", "amqscale:internal-error")

    # ---- connecting ----------------------------------------------------------------------

    def _connect(self, conn: Connection, cmd: p.OpenConnection) -> None:
        chan = Channel(conn)
        conn.io = chan
        self.channels[id(chan)] = chan
        if cmd.delay > 0:  # a reconnect's backoff: tick() starts it when it is due
            self.delayed.append((time.monotonic() + cmd.delay, chan, cmd))
            return
        self._start(chan, cmd)

    def _start(self, chan: Channel, cmd: p.OpenConnection) -> None:
        if cmd.connect_timeout > 0:
            chan.timeout = cmd.connect_timeout
            chan.deadline = time.monotonic() + chan.timeout
            self.pending_deadlines.append(chan)
        addresses = Resolver.numeric(cmd.host, cmd.port, passive=False)
        if addresses is None:
            self.resolver.submit(chan, cmd.host, cmd.port, passive=False)
        else:
            self._start_connect(chan, addresses)

    def _start_connect(self, chan: Channel, addresses: list[Address]) -> None:
        conn = chan.conn
        family, addr = addresses[0]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.engine.fail(conn, f"{describe(conn)}: cannot make a socket: {exc}")
            return
        sock.setblocking(False)
        rc = sock.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            self.engine.fail(conn, f"cannot connect to {conn.address}: "
                                   f"{errno.errorcode.get(rc, rc)} ({os.strerror(rc)})")
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chan.sock = sock
        chan.connecting = rc == errno.EINPROGRESS
        conn.connected = not chan.connecting

    def _on_connected(self, chan: Channel) -> None:
        """A non-blocking connect finished: succeeded, or failed with SO_ERROR."""
        assert chan.sock is not None
        chan.connecting = False
        err = chan.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.engine.fail(chan.conn, f"cannot connect to {chan.conn.address}: "
                                        f"{errno.errorcode.get(err, err)} ({os.strerror(err)})")
        else:
            chan.conn.connected = True

    def _resolved(self) -> None:
        for token, result in self.resolver.take():
            if isinstance(token, Channel):
                self._on_connect_resolved(token, result)
            else:
                self._on_listen_resolved(token, result)

    def _on_connect_resolved(self, chan: Channel, result: list[Address] | Exception) -> None:
        conn = chan.conn
        if conn.id not in self.engine.connections:
            return  # closed or timed out meanwhile
        if isinstance(result, Exception) or not result:
            host = conn.address.rpartition(":")[0]
            self.engine.fail(conn, f"cannot resolve {host!r}: {result}")
        else:
            self._start_connect(chan, result)

    def _close_channel(self, conn: Connection) -> None:
        chan = conn.io
        if chan is None:
            return
        conn.io = None
        self.channels.pop(id(chan), None)
        if chan.sock is not None:
            if self.masks.pop(id(chan), None) is not None:
                self.selector.unregister(chan.sock)  # before close: its fd number is reused
            chan.sock.close()

    # ---- listening and accepting ---------------------------------------------------------

    def _listen(self, cmd: p.Listen) -> None:
        addresses = Resolver.numeric(cmd.host, cmd.port, passive=True)
        if addresses is None:
            self.resolver.submit(cmd, cmd.host, cmd.port, passive=True)
        else:
            self._bind(cmd, addresses)

    def _on_listen_resolved(self, cmd: p.Listen, result: list[Address] | Exception) -> None:
        if cmd.listener not in self.engine.listeners:
            return  # closed meanwhile
        if isinstance(result, Exception) or not result:
            self.engine.listen_failed(
                cmd.listener, f"cannot listen on {cmd.host}:{cmd.port}: {result}")
        else:
            self._bind(cmd, result)

    def _bind(self, cmd: p.Listen, addresses: list[Address]) -> None:
        family, addr = addresses[0]
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            self.engine.listen_failed(
                cmd.listener, f"cannot listen on {cmd.host}:{cmd.port}: {exc}")
            return
        self.acceptors[cmd.listener] = Acceptor(cmd.listener, sock)
        self.engine.listening(cmd.listener, sock.getsockname()[1])

    def _close_acceptor(self, listener_id: int) -> None:
        acceptor = self.acceptors.pop(listener_id, None)
        if acceptor is not None:
            if self.masks.pop(id(acceptor), None) is not None:
                self.selector.unregister(acceptor.sock)
            acceptor.sock.close()

    def accept(self, acceptor: Acceptor) -> None:
        """Take pending inbound connections and deal them round-robin over the workers.

        The kernel's SO_REUSEPORT spreads connections by a hash, which leaves workers idle
        when there are few connections; dealing them keeps every core's share equal.
        """
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = acceptor.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:  # retry later; meanwhile serve the others
                    log_internal(exc, f"accept on listener {acceptor.id} (pausing it "
                                      f"{ACCEPT_BACKOFF:g} s)")
                    acceptor.paused_until = time.monotonic() + ACCEPT_BACKOFF
                    self._register(acceptor.sock, 0, acceptor)
                    return
                continue  # that one connection failed (ECONNABORTED, EPROTO, EPERM...)
            self._deal(acceptor.id, sock)

    def _deal(self, listener_id: int, sock: socket.socket) -> None:
        turn = self.next_handoff
        self.next_handoff = (turn + 1) % (len(self.handoff) + 1)
        if turn and self._hand_off(self.handoff[turn - 1], listener_id, sock):
            return
        self._adopt(listener_id, sock)

    @staticmethod
    def _hand_off(channel: socket.socket, listener_id: int, sock: socket.socket) -> bool:
        try:
            socket.send_fds(channel, [listener_id.to_bytes(8, "little")], [sock.fileno()])
        except OSError:
            return False  # that worker is gone (or its channel is full): keep it here
        sock.close()
        return True

    def _adopt_handed(self, handoff: HandoffIn) -> None:
        """Take the connections worker 0 dealt us; stop watching once it is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(handoff.sock, 8, 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if len(data) < 8:
            for fd in fds:
                os.close(fd)
            self.selector.unregister(handoff.sock)  # worker 0 is gone
            return
        listener_id = int.from_bytes(data[:8], "little")
        for fd in fds:
            self._adopt(listener_id, socket.socket(fileno=fd))

    def _adopt(self, listener_id: int, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host, port = sock.getpeername()[:2]
        except OSError:
            sock.close()  # gone already
            return
        conn = self.engine.adopt(listener_id, f"{host}:{port}")
        if conn is None:
            sock.close()  # its listener was closed meanwhile
            return
        chan = Channel(conn, sock)
        conn.io = chan
        conn.connected = True
        self.channels[id(chan)] = chan

    # ---- the selector --------------------------------------------------------------------

    def _register(self, sock: Any, want: int, data: Any) -> None:
        key = id(data)
        have = self.masks.get(key, 0)
        if want == have:
            return
        if have and want:
            self.selector.modify(sock, want, data)
        elif want:
            self.selector.register(sock, want, data)
        else:
            self.selector.unregister(sock)
        if want:
            self.masks[key] = want
        else:
            self.masks.pop(key, None)


def _sooner(soonest: float | None, wait: float) -> float:
    wait = max(0.0, wait)
    return wait if soonest is None else min(soonest, wait)
