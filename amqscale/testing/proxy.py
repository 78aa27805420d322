"""A TCP proxy that injects faults between an AMQP client and its broker, for tests.

`FaultProxy` listens on loopback, forwards every accepted connection to an upstream that is
also on loopback, and on request drops, resets, stalls or cuts the connections that pass
through it, refuses new ones, or does all of that at random from a seed. It never looks at
the bytes it forwards.

One daemon thread runs a `selectors` loop (no asyncio), so the proxy works beside whatever
event loop a test uses. Every state change happens on that thread: a control called from
another thread queues a command, wakes the loop through a socketpair and waits until the
loop has applied it. Every wait is bounded.

    with FaultProxy(upstream=("127.0.0.1", broker_port)) as proxy:
        client.connect(proxy.url)
        proxy.reset()          # the client sees ECONNRESET, the broker too
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import random
import selectors
import socket
import struct
import termios
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Literal, TypedDict, TypeVar, cast

Direction = Literal["upstream", "downstream", "both"]
FaultKind = Literal["drop", "reset", "stall", "cut"]
FAULT_KINDS: tuple[FaultKind, ...] = ("drop", "reset", "stall", "cut")

BUFFER_LIMIT = 256 * 1024  # bytes held per direction per connection before reading stops
CONTROL_TIMEOUT = 5.0  # seconds a control waits for the proxy thread to apply it
CONNECT_TIMEOUT = 5.0  # seconds an upstream connect may take before the client is closed
CUT_FLUSH_TIMEOUT = 2.0  # seconds a cut waits for its last bytes to leave the kernel
JOIN_TIMEOUT = 5.0

_CHUNK = 64 * 1024
_MAX_WAIT = 0.5  # the loop's longest sleep: nothing depends on it, it only bounds surprises
_POLL = 0.005  # how often a pending cut checks whether its bytes have left
_ACCEPTS_PER_TICK = 64
_RANDOM_CUT_MAX = 16 * 1024
_UP, _DOWN = 0, 1  # directions, and also sides: direction d is read from side d
_DIRECTIONS = {"upstream": (_UP,), "downstream": (_DOWN,), "both": (_UP, _DOWN)}
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # Linux: bytes not yet acked
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LISTENER, _WAKE = "listener", "wake"
_BYTES = ("bytes_upstream", "bytes_downstream")  # counter names by direction

T = TypeVar("T")


class ProxyStats(TypedDict):
    """A snapshot of a proxy's counters; `faults` counts one per connection hit, by kind."""

    accepted: int
    active: int
    refused: int
    upstream_failed: int
    bytes_upstream: int
    bytes_downstream: int
    faults: dict[str, int]
    random_faults: int


def _loopback(host: str, port: int, what: str, *, any_port: bool) -> tuple[str, int]:
    """`(host, port)` with `localhost` spelled 127.0.0.1; ValueError unless on loopback."""
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        ok = ipaddress.ip_address(literal).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{what} address {host!r} (port {port}) is not loopback: "
            "FaultProxy only listens on and connects to 127.0.0.0/8 and ::1"
        )
    lowest = 0 if any_port else 1
    if not isinstance(port, int) or not lowest <= port <= 65535:
        raise ValueError(f"{what} port {port!r} for {host!r} is not in {lowest}..65535")
    return literal, port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _unsent(sock: socket.socket) -> int:
    """Bytes the kernel still holds for `sock`'s peer (unsent or unacked); 0 where unknown."""
    if _OUTQ is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def _close_socket(sock: socket.socket, *, rst: bool) -> None:
    """Close `sock`, with RST when `rst`, else with FIN (unread input is discarded first,
    because Linux answers close() with RST while input is unread)."""
    with contextlib.suppress(OSError):
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        else:
            sock.setblocking(False)  # a freshly accepted socket blocks
            for _ in range(64):  # bounded: at most 4 MiB discarded
                if not sock.recv(_CHUNK):
                    break
    with contextlib.suppress(OSError):
        sock.close()


class _Command(Generic[T]):
    """A function for the proxy thread to run, and its outcome for the thread that waits."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, who re-raises it
            self.error = exc
        finally:
            self.done.set()


class _Link:
    """One client connection and its upstream connection (touched only on the proxy thread).

    Index `socks` by side (0 client, 1 upstream) and the rest by direction: direction d is
    read from side d and written to side 1 - d, so `bufs[_UP]` goes client -> upstream.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, now: float) -> None:
        self.socks = (client, upstream)
        self.connecting = True
        self.deadline = now + CONNECT_TIMEOUT
        self.bufs = (bytearray(), bytearray())
        self.eof = [False, False]  # the source of that direction sent FIN
        self.shut = [False, False]  # that FIN was passed on
        self.budget: list[int | None] = [None, None]  # bytes left before a cut
        self.cut: tuple[socket.socket, float] | None = None  # flushing before the RST
        self.stall_until = 0.0
        self.events = [0, 0]  # what each side is registered for now
        self.closed = False


@dataclass
class _Chaos:
    rng: random.Random
    rate: float
    kinds: tuple[FaultKind, ...]
    stall_time: tuple[float, float]
    due: float


class _Engine:
    """The proxy's sockets, connections and counters; every method runs on the proxy thread
    (or on the caller's once that thread has ended)."""

    def __init__(
        self, listener: socket.socket, upstream: tuple[str, int], buffer_limit: int
    ) -> None:
        self.listener = listener
        self.upstream = upstream
        self.limit = buffer_limit
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (listener, self.wake_r, self.wake_w):
            sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, _READ, _LISTENER)
        self.selector.register(self.wake_r, _READ, _WAKE)
        self.links: dict[_Link, None] = {}  # a dict keeps order: random picks are seeded
        self.stalled = False
        self.refusing = False
        self.chaos: _Chaos | None = None
        self.stopping = False
        self.counts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter({kind: 0 for kind in FAULT_KINDS})

    # -- the loop ---------------------------------------------------------------------------

    def tick(self, commands: Callable[[], list[_Command[object]]]) -> None:
        """Wait for sockets or timers, serve them, run queued commands, re-register."""
        events = self.selector.select(self._timeout(time.monotonic()))
        for key, mask in events:
            self._dispatch(key.data, mask)
        for command in commands():
            command.run()
        now = time.monotonic()
        self._expire(now)
        self._chaos_tick(now)
        for link in list(self.links):
            try:
                self._register(link, now)
            except OSError:  # the socket went bad under the selector: end that connection
                self._close(link, rst=True)

    def _timeout(self, now: float) -> float:
        deadlines = [self.chaos.due] if self.chaos else []
        for link in self.links:
            if link.cut:
                return _POLL
            if link.connecting:
                deadlines.append(link.deadline)
            if link.stall_until > now:
                deadlines.append(link.stall_until)
        return max(0.0, min(min(deadlines, default=now + _MAX_WAIT) - now, _MAX_WAIT))

    def _dispatch(self, data: object, mask: int) -> None:
        if data == _LISTENER:
            self._accept()
        elif data == _WAKE:
            with contextlib.suppress(OSError):
                while self.wake_r.recv(4096):
                    pass
        else:
            link, side = cast(tuple[_Link, int], data)
            if not link.closed:
                self._serve(link, side, mask)

    def _expire(self, now: float) -> None:
        for link in list(self.links):
            if link.connecting and now >= link.deadline:
                self._fail_upstream(link)
            elif link.cut and (now >= link.cut[1] or _unsent(link.cut[0]) == 0):
                self._close(link, rst=True)

    def shutdown(self) -> None:
        """Close every socket the engine owns (connections with FIN); safe to repeat."""
        for link in list(self.links):
            self._close(link, rst=False)
        self.chaos = None
        for sock in (self.listener, self.wake_r, self.wake_w):
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.selector.unregister(sock)
            _close_socket(sock, rst=False)
        self.selector.close()

    def wake(self) -> None:
        """Called from any thread; a full or closed socketpair means the loop is awake or gone."""
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    # -- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TICK):
            try:
                client, _addr = self.listener.accept()
            except OSError:  # BlockingIOError once the backlog is empty
                return
            self.counts["accepted"] += 1
            if self.refusing:
                self.counts["refused"] += 1
                _close_socket(client, rst=False)
                continue
            try:
                self._open(client)
            except OSError:
                self.counts["upstream_failed"] += 1
                _close_socket(client, rst=False)

    def _open(self, client: socket.socket) -> None:
        """Start the upstream connect for `client`; its outcome arrives as writability."""
        upstream = socket.socket(_family(self.upstream[0]), socket.SOCK_STREAM)
        try:
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # AMQP is chatty
            err = upstream.connect_ex(self.upstream)
        except OSError:
            upstream.close()
            raise
        link = _Link(client, upstream, time.monotonic())
        self.links[link] = None
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._fail_upstream(link)

    def _fail_upstream(self, link: _Link) -> None:
        self.counts["upstream_failed"] += 1
        self._close(link, rst=False)

    def _close(self, link: _Link, *, rst: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self.links.pop(link, None)
        for side, sock in enumerate(link.socks):
            if link.events[side]:
                with contextlib.suppress(OSError, KeyError, ValueError):
                    self.selector.unregister(sock)
            _close_socket(sock, rst=rst)

    def _stalled(self, link: _Link, now: float) -> bool:
        return self.stalled or link.stall_until > now

    def _interest(self, link: _Link, side: int, now: float) -> int:
        """The events side `side` waits for: read while its buffer has room, write while the
        other direction has bytes; nothing while stalled or cutting."""
        if link.connecting:
            return _WRITE if side == _DOWN else self._readable(link, side, now)
        if link.cut or self._stalled(link, now):
            return 0
        writable = _WRITE if link.bufs[1 - side] else 0
        return self._readable(link, side, now) | writable

    def _readable(self, link: _Link, side: int, now: float) -> int:
        full = len(link.bufs[side]) >= self.limit
        blocked = link.eof[side] or full or link.cut is not None or self._stalled(link, now)
        return 0 if blocked else _READ

    def _register(self, link: _Link, now: float) -> None:
        for side, sock in enumerate(link.socks):
            want, have = self._interest(link, side, now), link.events[side]
            if want == have:
                continue
            if not have:
                self.selector.register(sock, want, (link, side))
            elif not want:
                self.selector.unregister(sock)
            else:
                self.selector.modify(sock, want, (link, side))
            link.events[side] = want

    def _serve(self, link: _Link, side: int, mask: int) -> None:
        """Move bytes for one ready socket; any socket error resets the whole connection."""
        try:
            if link.connecting and side == _DOWN:
                self._connected(link)
                return
            if mask & _READ:
                self._pull(link, side)
            if mask & _WRITE and not link.closed:
                self._push(link, 1 - side)
        except OSError:
            self._close(link, rst=True)

    def _connected(self, link: _Link) -> None:
        if link.socks[_DOWN].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._fail_upstream(link)
            return
        link.connecting = False
        self._push(link, _UP)  # bytes the client sent while the connect was under way

    def _pull(self, link: _Link, d: int) -> None:
        """Read direction `d` from its source into its buffer (re-checked: events can be stale)."""
        if not self._readable(link, d, time.monotonic()):
            return
        try:
            data = link.socks[d].recv(min(_CHUNK, self.limit - len(link.bufs[d])))
        except BlockingIOError:
            return
        if data:
            link.bufs[d].extend(data)
            self._push(link, d)
        else:
            link.eof[d] = True
            self._pass_eof(link, d)

    def _push(self, link: _Link, d: int) -> None:
        """Write what direction `d` holds, up to its cut budget, to its destination."""
        if link.connecting or link.cut or self._stalled(link, time.monotonic()):
            return
        buf, budget = link.bufs[d], link.budget[d]
        size = len(buf) if budget is None else min(len(buf), budget)
        sent = 0
        if size:
            with contextlib.suppress(BlockingIOError), memoryview(buf) as view:
                sent = link.socks[1 - d].send(view[:size])
            del buf[:sent]
            self.counts[_BYTES[d]] += sent
        if budget is not None:
            link.budget[d] = budget - sent
            if budget == sent:
                self._begin_cut(link, d)
                return
        self._pass_eof(link, d)

    def _pass_eof(self, link: _Link, d: int) -> None:
        """Pass on a FIN once its direction's buffer is empty; close after both have passed."""
        if link.connecting or not link.eof[d] or link.bufs[d] or link.shut[d]:
            return
        link.socks[1 - d].shutdown(socket.SHUT_WR)
        link.shut[d] = True
        if all(link.shut):
            self._close(link, rst=False)

    def _begin_cut(self, link: _Link, d: int) -> None:
        # The RST waits until the last bytes have left the kernel: an RST drops what the
        # kernel still holds, and the contract is "exactly nbytes are delivered".
        if link.cut is None:
            link.cut = (link.socks[1 - d], time.monotonic() + CUT_FLUSH_TIMEOUT)

    # -- faults (run on the proxy thread) ---------------------------------------------------

    def _count(self, kind: FaultKind, chaos: bool) -> None:
        self.faults[kind] += 1
        if chaos:
            self.counts["random_faults"] += 1

    def drop(self, link: _Link, chaos: bool = False) -> None:
        self._count("drop", chaos)
        self._close(link, rst=False)

    def reset(self, link: _Link, chaos: bool = False) -> None:
        self._count("reset", chaos)
        self._close(link, rst=True)

    def cut(self, link: _Link, nbytes: int, dirs: Iterable[int], chaos: bool = False) -> None:
        self._count("cut", chaos)
        for d in dirs:
            link.budget[d] = nbytes
            if nbytes == 0:
                self._begin_cut(link, d)

    def stall_all(self) -> int:
        self.stalled = True
        self.faults["stall"] += len(self.links)
        return len(self.links)

    def resume_all(self) -> None:
        self.stalled = False
        for link in self.links:
            link.stall_until = 0.0

    def each(self, fault: Callable[[_Link], None]) -> int:
        """Apply `fault` to every current connection; how many there were."""
        links = list(self.links)
        for link in links:
            fault(link)
        return len(links)

    def _chaos_tick(self, now: float) -> None:
        for _ in range(100):  # bounded catch-up after a long tick
            chaos = self.chaos
            if chaos is None or chaos.due > now:
                return
            chaos.due += chaos.rng.expovariate(chaos.rate)
            if self.links:  # no connection, no fault: nothing is counted
                self._random_fault(chaos, now)

    def _random_fault(self, chaos: _Chaos, now: float) -> None:
        rng = chaos.rng
        link = rng.choice(list(self.links))
        kind = rng.choice(chaos.kinds)
        if kind == "drop":
            self.drop(link, chaos=True)
        elif kind == "reset":
            self.reset(link, chaos=True)
        elif kind == "stall":
            self._count("stall", True)
            link.stall_until = now + rng.uniform(*chaos.stall_time)
        else:
            direction = rng.choice(("upstream", "downstream", "both"))
            self.cut(link, rng.randrange(_RANDOM_CUT_MAX), _DIRECTIONS[direction], chaos=True)

    def snapshot(self) -> ProxyStats:
        return ProxyStats(
            accepted=self.counts["accepted"],
            active=len(self.links),
            refused=self.counts["refused"],
            upstream_failed=self.counts["upstream_failed"],
            bytes_upstream=self.counts["bytes_upstream"],
            bytes_downstream=self.counts["bytes_downstream"],
            faults=dict(self.faults),
            random_faults=self.counts["random_faults"],
        )


_ZERO_STATS = ProxyStats(
    accepted=0,
    active=0,
    refused=0,
    upstream_failed=0,
    bytes_upstream=0,
    bytes_downstream=0,
    faults={kind: 0 for kind in FAULT_KINDS},
    random_faults=0,
)


class FaultProxy:
    """A loopback TCP proxy to an upstream on loopback, with faults on demand.

    `upstream` and `host` must be loopback addresses (127.0.0.0/8, ::1 or `localhost`), or
    ValueError names the address: the proxy never sends traffic anywhere else. `port` 0
    (the default) lets the kernel pick; `port`, `host` and `url` are known after `start()`.

    The controls (`drop`, `reset`, `stall`, `resume`, `cut_after`, `refuse`,
    `random_faults`, `stop_random`) may be called from any thread while the proxy runs
    (RuntimeError otherwise). Each acts on the connections open at that moment and returns
    once the proxy thread has applied it, or raises TimeoutError after `CONTROL_TIMEOUT`
    seconds (the command may still be applied later). Faults are counted in `stats`, one per
    connection hit.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self._upstream = _loopback(upstream[0], upstream[1], "upstream", any_port=False)
        self._host, self._want_port = _loopback(host, port, "listen", any_port=True)
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be at least 1 byte, not {buffer_limit}")
        self._limit = buffer_limit
        self._port: int | None = None
        self._lock = threading.Lock()
        self._commands: deque[_Command[object]] = deque()
        self._running = False  # commands are queued only while this is true
        self._started = False
        self._closed = False
        self._engine: _Engine | None = None
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind, listen and start the proxy thread; once only (RuntimeError after that)."""
        with self._lock:
            if self._started or self._closed:
                raise RuntimeError("a FaultProxy starts once; make a new one")
            self._started = True
        listener = socket.socket(_family(self._host), socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._want_port))
            listener.listen(128)
            self._engine = _Engine(listener, self._upstream, self._limit)
        except BaseException:
            listener.close()
            raise
        self._port = int(listener.getsockname()[1])
        self._running = True
        self._thread = threading.Thread(
            target=self._run, name=f"FaultProxy-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Close every socket and join the thread; idempotent. Raises RuntimeError if the
        thread had died of an unexpected error, or TimeoutError if it does not end in time."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if running:
            with contextlib.suppress(RuntimeError):  # the thread ended meanwhile
                self._call(self._request_stop)
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            if self._thread.is_alive():
                raise TimeoutError(f"{self._thread.name} did not end in {JOIN_TIMEOUT} s")
        elif self._engine is not None:
            self._engine.shutdown()
        if self._crash is not None:
            raise RuntimeError(f"the FaultProxy thread died: {self._crash!r}") from self._crash

    def __enter__(self) -> FaultProxy:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        engine = cast(_Engine, self._engine)
        try:
            while not engine.stopping:
                engine.tick(self._take_commands)
        except BaseException as exc:  # a bug, not a socket error: close() reports it
            self._crash = exc
            raise
        finally:
            engine.shutdown()
            with self._lock:
                self._running = False
                pending = list(self._commands)
                self._commands.clear()
            for command in pending:  # queued before the end: they see no connections
                command.run()

    def _take_commands(self) -> list[_Command[object]]:
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        return commands

    def _request_stop(self) -> None:
        cast(_Engine, self._engine).stopping = True

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the proxy thread and return its result (or raise its exception)."""
        command = _Command(fn)
        with self._lock:
            if not self._running:
                raise RuntimeError("the FaultProxy is not running (start() it first)")
            self._commands.append(cast(_Command[object], command))
        cast(_Engine, self._engine).wake()
        if not command.done.wait(CONTROL_TIMEOUT):
            raise TimeoutError(f"the FaultProxy thread did not answer in {CONTROL_TIMEOUT} s")
        if command.error is not None:
            raise command.error
        return cast(T, command.result)

    # -- addresses and counters -------------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the proxy listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on (RuntimeError before `start()`)."""
        if self._port is None:
            raise RuntimeError("the FaultProxy has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        """`amqp://host:port` for clients, with brackets around an IPv6 host."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"amqp://{host}:{self.port}"

    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    @property
    def stats(self) -> ProxyStats:
        """A fresh snapshot of the counters (zeros before start, final values after close)."""
        with self._lock:
            running = self._running
        if self._engine is None:
            return cast(ProxyStats, {**_ZERO_STATS, "faults": dict(_ZERO_STATS["faults"])})
        if not running:  # the thread has finished with the engine: read it here
            return self._engine.snapshot()
        try:
            return self._call(self._engine.snapshot)
        except RuntimeError:  # the thread ended between the check and the call
            return self._engine.snapshot()

    # -- faults -----------------------------------------------------------------------------

    def drop(self) -> int:
        """Close both sides of every current connection with FIN; returns how many.

        (Bytes still arriving at the instant of the close can turn a FIN into an RST: Linux
        resets a socket closed with unread input.)"""
        engine = self._running_engine()
        return self._call(lambda: engine.each(engine.drop))

    def reset(self) -> int:
        """Close both sides of every current connection with RST; returns how many."""
        engine = self._running_engine()
        return self._call(lambda: engine.each(engine.reset))

    def stall(self) -> int:
        """Stop forwarding in both directions on every connection, current and new, until
        `resume()`: bytes wait in the kernel and the proxy, sockets stay open. Returns how
        many connections were open."""
        engine = self._running_engine()
        return self._call(engine.stall_all)

    def resume(self) -> None:
        """Forward again after `stall()` (and end any random stall early)."""
        engine = self._running_engine()
        self._call(engine.resume_all)

    def cut_after(self, nbytes: int, direction: Direction = "upstream") -> int:
        """Let exactly `nbytes` more bytes through `direction` on every current connection,
        then reset that connection (RST both sides, usually mid-frame). With "both", each
        direction gets `nbytes` and the first to use them up resets the connection. The
        RST waits up to `CUT_FLUSH_TIMEOUT` s for those bytes to leave the kernel. Returns
        how many connections were armed."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be an int >= 0, not {nbytes!r}")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, not {direction!r}")
        engine, dirs = self._running_engine(), _DIRECTIONS[direction]
        return self._call(lambda: engine.each(lambda link: engine.cut(link, nbytes, dirs)))

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, close each newly accepted connection at once (FIN, before any
        upstream connect), like a broker that is down; open connections go on."""
        engine = self._running_engine()
        self._call(lambda: setattr(engine, "refusing", bool(refusing)))

    def random_faults(
        self,
        seed: int,
        rate_per_s: float,
        kinds: Iterable[FaultKind] = FAULT_KINDS,
        stall_time: tuple[float, float] = (0.05, 0.5),
    ) -> None:
        """Start (or restart) chaos on the proxy thread: faults arrive at exponential
        intervals, `rate_per_s` a second on average, each hitting one connection chosen at
        random with a kind chosen from `kinds`: a stall lasts `stall_time` (uniform, s), a
        cut lets 0 to 16 KiB more through a random direction. A moment with no connection
        passes without a fault. `seed` makes the choices repeatable (the timing depends on
        the traffic). Counted in `stats["faults"]` and `stats["random_faults"]`."""
        chosen = tuple(kinds)
        unknown = set(chosen) - set(FAULT_KINDS)
        if not chosen or unknown:
            raise ValueError(f"kinds must be some of {FAULT_KINDS}, not {chosen!r}")
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, not {rate_per_s!r}")
        low, high = stall_time
        if not 0 <= low <= high:
            raise ValueError(f"stall_time must be (low, high) with 0 <= low <= high: {stall_time}")
        engine, rng = self._running_engine(), random.Random(seed)
        chaos = _Chaos(rng, float(rate_per_s), chosen, (low, high), 0.0)

        def begin() -> None:
            chaos.due = time.monotonic() + rng.expovariate(chaos.rate)
            engine.chaos = chaos

        self._call(begin)

    def stop_random(self) -> None:
        """End the chaos of `random_faults` (faults already applied stay: a stall runs out)."""
        engine = self._running_engine()
        self._call(lambda: setattr(engine, "chaos", None))

    def _running_engine(self) -> _Engine:
        if self._engine is None or not self._running:
            raise RuntimeError("the FaultProxy is not running (start() it first)")
        return self._engine
