"""One-to-one shared-memory rings: one writer process, one reader process.

A ring is a :class:`~amqscale.ipc.segment.Segment` laid out as :mod:`amqscale.ipc.layout`
describes, plus two eventfds: ``data`` wakes a parked reader, ``space`` wakes a parked
writer. Records are variable-length byte strings; the hot path is batched, so one cursor
publication, one fence and at most one wake-up cover a whole batch.

Ordering: the writer copies a record's bytes, then publishes its cursor with a release
(in fact sequentially consistent) store; the reader loads that cursor with acquire before
touching the bytes (and the other way round for the reader's cursor). The copies and
cursor updates run in C (``_atomics.RingCore``: a Python loop costs about a microsecond per
record, ten times more); the flags go through ``_atomics.Words``. So publication is
ordered on every CPU, not only on x86. ``_pycore.PyRingCore`` is the same hot path in
Python, the readable reference that the tests hold the C one to.

Parking without losing a wake-up (a Dekker handshake, in both directions)::

    reader (park)                         writer (after publishing a batch)
    store_fence(READER_PARKED, 1)         store_fence(TAIL, tail)
    if TAIL != head: unpark, go on        if READER_PARKED and exchange(READER_PARKED, 0):
    else sleep on the data eventfd            write the data eventfd

Each side's store is followed by a full fence before it loads the other side's word, so at
least one of them sees the other: either the reader sees the new tail, or the writer sees
the flag and writes the eventfd. The writer takes the flag as it wakes the reader, so a
reader that is slow to get a core costs one eventfd write, not one per batch; a sleeper
therefore sets the flag again before every sleep. The space eventfd uses the same
handshake with ``WRITER_PARKED`` and ``HEAD``.

Liveness: each side stores its pid in the header when it attaches. :meth:`peer_alive`
answers from a pidfd (``os.pidfd_open``), which stays bound to the very process even after
its pid is reused and becomes readable when that process exits: :meth:`peer_fileno` hands
it to a selector so that a dead peer wakes the other side. Where pidfds are missing, it
falls back to ``os.kill(pid, 0)`` (which reports an unreaped zombie as alive). The blocking
calls (:meth:`RingReader.wait`, :meth:`RingWriter.write`) watch the peer too and raise
:class:`PeerDied` rather than sleep forever.

Setting up across processes: the creating process calls ``create``; :meth:`handles` lists
the descriptors to pass to the child (``subprocess.Popen(pass_fds=handles.fds())``,
``handles.encode()`` on its command line); the child calls ``attach``. :class:`RingPair`
does that for the usual two rings between a process and its worker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

from amqscale.ipc import layout
from amqscale.ipc._atomics import (
    PADDING_LENGTH,
    RECORD_ALIGNMENT,
    RECORD_HEADER_SIZE,
    RingCore,
    Words,
)
from amqscale.ipc.segment import Segment

__all__ = [
    "OneToOneRing",
    "PeerDied",
    "RecordTooLarge",
    "RingHandles",
    "RingPair",
    "RingPairHandles",
    "RingReader",
    "RingWriter",
]

Record = bytes | bytearray | memoryview
"""A record is any contiguous byte buffer; it is copied into the ring."""

DEFAULT_SPIN = 100
"""Checks a blocking call makes before it parks: some ten microseconds of polling, enough
to catch a peer that is already producing, short enough not to steal a shared core."""

DEFAULT_MAX_BATCH = 1024
"""Records one ``read_batch`` returns at most unless told otherwise."""

if (RECORD_HEADER_SIZE, RECORD_ALIGNMENT, PADDING_LENGTH) != (
    layout.RECORD_HEADER_SIZE,
    layout.RECORD_ALIGNMENT,
    layout.PADDING_LENGTH,
):
    raise ImportError("amqscale.ipc._atomics was built for another record layout; rebuild it")

_NO_PIDFD_POLL_MS = 100
"""Without a pidfd a sleeper cannot be woken by the peer's death: it re-checks this often."""

R = TypeVar("R", bound="OneToOneRing")


class _Core(Protocol):
    """The hot path of one end: ``_atomics.RingCore``, or ``_pycore.PyRingCore`` in tests."""

    @property
    def cursor(self) -> int: ...

    def write(self, record: Record, /) -> bool: ...

    def write_batch(self, records: Sequence[Record], /) -> int: ...

    def read_batch(self, max_records: int, /) -> list[bytes]: ...

    def peer_state(self) -> int: ...

    def release(self) -> None: ...


class RecordTooLarge(ValueError):
    """A record longer than the ring's ``max_record_size``; nothing was written."""

    def __init__(self, length: int, max_record_size: int, where: str = "") -> None:
        super().__init__(
            f"record{where} of {length} bytes exceeds this ring's max_record_size of "
            f"{max_record_size} bytes"
        )
        self.length = length
        self.max_record_size = max_record_size


class PeerDied(ConnectionError):
    """The process on the other end exited while this side was waiting for it."""


@dataclass(frozen=True)
class RingHandles:
    """What a child needs to attach to a ring: inherited descriptors and the segment size.

    Picklable, and :meth:`encode` gives a short string for a command line. The
    descriptors must reach the child (``pass_fds=handles.fds()``); the numbers stay the
    same there.
    """

    segment_fd: int
    segment_size: int
    data_fd: int
    space_fd: int

    def fds(self) -> tuple[int, ...]:
        """The descriptors to pass to the child."""
        return (self.segment_fd, self.data_fd, self.space_fd)

    def encode(self) -> str:
        """``"segment_fd:segment_size:data_fd:space_fd"``."""
        return f"{self.segment_fd}:{self.segment_size}:{self.data_fd}:{self.space_fd}"

    @classmethod
    def decode(cls, text: str) -> RingHandles:
        """The inverse of :meth:`encode`."""
        fields = text.split(":")
        if len(fields) != 4:
            raise ValueError(f"ring handles need 4 fields, got {text!r}")
        segment_fd, segment_size, data_fd, space_fd = (int(f) for f in fields)
        return cls(segment_fd, segment_size, data_fd, space_fd)

    def dup(self) -> RingHandles:
        """Copies of the descriptors, for attaching the other end in this same process."""
        return RingHandles(
            os.dup(self.segment_fd), self.segment_size, os.dup(self.data_fd), os.dup(self.space_fd)
        )


class _Peer:
    """The process at the other end, found through its pid word in the header."""

    def __init__(self, words: Words, pid_offset: int) -> None:
        self._words = words
        self._pid_offset = pid_offset
        self._pidfd: int | None = None
        self._pidfd_pid = 0
        self._gone_pid = 0

    def pid(self) -> int | None:
        """The peer's pid, or None if no peer has attached yet."""
        return self._words.load_acquire(self._pid_offset) or None

    def fileno(self) -> int | None:
        """A pidfd for the peer, readable once it exits; None if unknown or unsupported."""
        pid = self.pid()
        if pid is None or pid == self._gone_pid or not hasattr(os, "pidfd_open"):
            return None
        if pid != self._pidfd_pid:
            self._close_pidfd()
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone_pid = pid
                return None
            self._pidfd_pid = pid
        return self._pidfd

    def alive(self) -> bool:
        """False once the attached peer has exited; True while alive or not yet attached."""
        pid = self.pid()
        if pid is None:
            return True
        fd = self.fileno()
        if pid == self._gone_pid:
            return False
        if fd is not None:
            return not _readable(fd)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
            self._pidfd_pid = 0

    def close(self) -> None:
        self._close_pidfd()


class OneToOneRing:
    """What both ends of a ring share: the segment, the eventfds, liveness, closing.

    Use :class:`RingWriter` or :class:`RingReader`; each is owned by one process (and,
    like any Python object without locks, used by one thread at a time).
    """

    _OWN_PID_OFFSET: int
    _PEER_PID_OFFSET: int
    _CORE: Callable[..., _Core] = RingCore
    _core: _Core

    def __init__(self, segment: Segment, data_fd: int, space_fd: int) -> None:
        """Take ownership of an initialised segment and the two eventfds."""
        self._capacity = _read_capacity(segment)
        self._mask = self._capacity - 1
        self._segment = segment
        self._data_fd = data_fd
        self._space_fd = space_fd
        self._closed = True  # until fully built: nothing for __del__ to close
        self._poller: select.poll | None = None
        self._polled_peer_fd: int | None = None
        self.spin = DEFAULT_SPIN
        self._words = Words(segment.buf)
        try:
            self._core = self._make_core(segment.buf)
        except BaseException:
            self._words.release()
            raise
        self._peer = _Peer(self._words, self._PEER_PID_OFFSET)
        self._words.store_release(self._OWN_PID_OFFSET, os.getpid())
        self._closed = False

    def _make_core(self, buf: memoryview) -> _Core:
        """The hot path of this end (``_CORE``: the C core unless a test swaps it)."""
        raise NotImplementedError

    def _core_for(
        self, buf: memoryview, own: int, peer: int, peer_parked: int, wake_fd: int
    ) -> _Core:
        return self._CORE(
            buf,
            layout.DATA_OFFSET,
            self._capacity,
            own,
            peer,
            peer_parked,
            wake_fd,
            self.max_record_size,
            RecordTooLarge,
        )

    @classmethod
    def create(cls: type[R], capacity: int) -> R:
        """A new ring of ``capacity`` data bytes (a power of two); this process is ``cls``."""
        segment = Segment.create(layout.segment_size(capacity))
        fds: list[int] = []
        try:
            _init_header(segment, capacity)
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            return cls(segment, fds[0], fds[1])
        except BaseException:
            _close_all(segment, fds)
            raise

    @classmethod
    def attach(cls: type[R], handles: RingHandles) -> R:
        """The other end of a ring another process created; takes ownership of the fds."""
        segment = None
        try:
            segment = Segment.from_fd(handles.segment_fd, handles.segment_size)
            return cls(segment, handles.data_fd, handles.space_fd)
        except BaseException:
            if segment is None:
                os.close(handles.segment_fd)
            _close_all(segment, [handles.data_fd, handles.space_fd])
            raise

    def handles(self) -> RingHandles:
        """The descriptors and size the other end's process attaches with."""
        return RingHandles(self._segment.fd, self._segment.size, self._data_fd, self._space_fd)

    @property
    def capacity(self) -> int:
        """Data bytes in the ring."""
        return self._capacity

    @property
    def max_record_size(self) -> int:
        """The longest record this ring accepts (half the capacity, less a header)."""
        return layout.max_record_size(self._capacity)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def peer_pid(self) -> int | None:
        """The other end's pid, or None while it has not attached."""
        return self._peer.pid()

    def peer_alive(self) -> bool:
        """False once the other end's process has exited (True before it attaches)."""
        return self._peer.alive()

    def peer_fileno(self) -> int | None:
        """A pidfd that turns readable when the peer exits, for a selector.

        None while the peer has not attached, if it is already gone, or where pidfds are
        unsupported; then poll :meth:`peer_alive` instead.
        """
        return self._peer.fileno()

    def _sleep(
        self, fd: int, parked_offset: int, deadline: float | None, ready: Callable[[], bool]
    ) -> bool:
        """Park on ``fd`` until ``ready()`` is true, the deadline passes or the peer dies.

        Each round announces this side parked (store + full fence at ``parked_offset``),
        asks ``ready()`` and only then sleeps: the check after the fenced store closes the
        lost-wake-up window, and since the peer takes the flag when it wakes us, it is set
        again before every sleep. Spurious wake-ups just go round again. The caller clears
        the flag (``unpark``) afterwards. Returns False on timeout; raises
        :class:`PeerDied` once the peer has exited and ``ready()`` is still false.
        """
        peer_gone = False
        while True:
            self._words.store_fence(parked_offset, 1)
            if ready():
                return True
            poller, peer_fd = self._poll_set(fd)
            if peer_gone or (peer_fd is None and not self._peer.alive()):
                raise PeerDied(f"peer process {self._peer.pid()} exited")
            if deadline is not None and time.monotonic() >= deadline:
                return False
            ms = _remaining_ms(deadline)
            if peer_fd is None and (ms < 0 or ms > _NO_PIDFD_POLL_MS):
                ms = _NO_PIDFD_POLL_MS
            events = poller.poll(ms)
            _drain(fd)
            peer_gone = any(event_fd == peer_fd for event_fd, _ in events)

    def _poll_set(self, fd: int) -> tuple[select.poll, int | None]:
        """A poll object over ``fd`` and, once known, the peer's pidfd."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
        peer_fd = self._peer.fileno()
        if peer_fd != self._polled_peer_fd:
            if self._polled_peer_fd is not None:
                self._poller.unregister(self._polled_peer_fd)
            if peer_fd is not None:
                self._poller.register(peer_fd, select.POLLIN)
            self._polled_peer_fd = peer_fd
        return self._poller, peer_fd

    def close(self) -> None:
        """Release the shared memory and descriptors of this end (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._core.release()
        self._words.release()
        self._peer.close()
        _close_all(self._segment, [self._data_fd, self._space_fd])

    def __del__(self) -> None:
        # An end dropped without close() still gives back its descriptors and mapping.
        if not getattr(self, "_closed", True):
            self.close()

    def __enter__(self: R) -> R:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self._capacity}"
        return f"<{type(self).__name__} {state}>"


class RingWriter(OneToOneRing):
    """The producing end: copies records in, publishes them, wakes a parked reader."""

    _OWN_PID_OFFSET = layout.WRITER_PID_OFFSET
    _PEER_PID_OFFSET = layout.READER_PID_OFFSET

    # reader_caught_up() and reader_parked() in one call: 0 the reader is behind, 1 caught
    # up and awake, 2 caught up and parked. The core's own method, bound: a sender asks
    # once per message.
    reader_state: Callable[[], int]

    def _make_core(self, buf: memoryview) -> _Core:
        core = self._core_for(
            buf, layout.TAIL_OFFSET, layout.HEAD_OFFSET, layout.READER_PARKED_OFFSET, self._data_fd
        )
        self.reader_state = core.peer_state
        return core

    def fileno(self) -> int:
        """The space eventfd: readable after :meth:`park` once the reader frees room."""
        return self._space_fd

    def reader_parked(self) -> bool:
        """True while the reader sleeps for data and no publication has woken it yet.

        A producer that batches should hand over what it has now rather than wait for a
        full batch.
        """
        return bool(self._words.load_acquire(layout.READER_PARKED_OFFSET))

    def reader_caught_up(self) -> bool:
        """True when the reader has taken every record written so far."""
        return self._words.load_acquire(layout.HEAD_OFFSET) == self._core.cursor

    def try_write(self, record: Record) -> bool:
        """Write one record if it fits now; False if the ring is full.

        Raises :class:`RecordTooLarge` (nothing written) if it could never fit.
        """
        return self._core.write(record)

    def write_batch(self, records: Sequence[Record]) -> int:
        """Write as many of ``records`` as fit, in order; returns how many.

        One cursor publication and one wake-up check for the whole batch. All sizes are
        checked first: a record too large raises :class:`RecordTooLarge` and nothing of
        the batch is written.
        """
        return self._core.write_batch(records)

    def write(self, record: Record, timeout: float | None = None) -> None:
        """Write one record, waiting for room: spin briefly, then park on the space eventfd.

        Raises TimeoutError if there is still no room after ``timeout`` seconds,
        :class:`PeerDied` if the reader exits while this waits.
        """
        attempt = functools.partial(self._core.write, record)
        if attempt():
            return
        for _ in range(self.spin):
            if attempt():
                return
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self._sleep(self._space_fd, layout.WRITER_PARKED_OFFSET, deadline, attempt):
                return
        finally:
            self.unpark()
        raise TimeoutError(
            f"no room for a {len(record)}-byte record in the ring after {timeout} seconds"
        )

    def park(self, length: int = 0) -> bool:
        """Announce this writer parked, then check for room for a ``length``-byte record.

        Returns True (and unparks) if there is room already; otherwise the reader, after
        it frees room, takes the flag and writes the space eventfd (:meth:`fileno`) once.
        Park again before each sleep; :meth:`unpark` once awake.
        """
        self._words.store_fence(layout.WRITER_PARKED_OFFSET, 1)
        if self.has_room(length):
            self.unpark(drain=False)
            return True
        return False

    def unpark(self, drain: bool = True) -> None:
        """Clear the parked flag and (unless `drain` is False) reset the space eventfd.

        A loop that knows the eventfd was not readable skips the reset, a system call:
        a wake-up that lands after the check only makes the next wait return at once.
        """
        self._words.store_release(layout.WRITER_PARKED_OFFSET, 0)
        if drain:
            _drain(self._space_fd)

    def has_room(self, length: int = 0) -> bool:
        """Would a record of ``length`` bytes fit now (a wrap marker's skip included)?"""
        tail = self._core.cursor
        size = layout.record_size(length)
        to_end = self._capacity - (tail & self._mask)
        need = size if size <= to_end else to_end + size
        head = self._words.load_acquire(layout.HEAD_OFFSET)
        return tail + need - head <= self._capacity


class RingReader(OneToOneRing):
    """The consuming end: copies records out as bytes, frees room, wakes a parked writer."""

    _OWN_PID_OFFSET = layout.READER_PID_OFFSET
    _PEER_PID_OFFSET = layout.WRITER_PID_OFFSET

    def _make_core(self, buf: memoryview) -> _Core:
        return self._core_for(
            buf, layout.HEAD_OFFSET, layout.TAIL_OFFSET, layout.WRITER_PARKED_OFFSET, self._space_fd
        )

    def fileno(self) -> int:
        """The data eventfd: readable after :meth:`park` once the writer publishes."""
        return self._data_fd

    def read_batch(self, max_records: int = DEFAULT_MAX_BATCH) -> list[bytes]:
        """Up to ``max_records`` records, oldest first, copied out; [] if the ring is empty.

        Frees their room with one cursor publication and wakes a parked writer.
        """
        return self._core.read_batch(max_records)

    def has_data(self) -> bool:
        """True if at least one record (or wrap marker) is waiting."""
        return self._words.load_acquire(layout.TAIL_OFFSET) != self._core.cursor

    def park(self) -> bool:
        """Announce this reader parked, then look again for data.

        Returns True (and unparks) if data is there already, so the caller must not
        sleep; otherwise the writer's next publication takes the flag and writes the data
        eventfd (:meth:`fileno`) once. Park again before each sleep (a selector loop:
        ``park()``, ``select()``, ``unpark()``, read); :meth:`unpark` once awake.
        """
        self._words.store_fence(layout.READER_PARKED_OFFSET, 1)
        if self.has_data():
            self.unpark(drain=False)
            return True
        return False

    def unpark(self, drain: bool = True) -> None:
        """Clear the parked flag and (unless `drain` is False) reset the data eventfd.

        A loop that knows the eventfd was not readable skips the reset, a system call:
        a wake-up that lands after the check only makes the next wait return at once.
        """
        self._words.store_release(layout.READER_PARKED_OFFSET, 0)
        if drain:
            _drain(self._data_fd)

    def writer_parked(self) -> bool:
        """Is the writer asleep waiting for room?"""
        return bool(self._words.load_acquire(layout.WRITER_PARKED_OFFSET))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until data is available: spin briefly, then park on the data eventfd.

        Returns True when there is data, False after ``timeout`` seconds without;
        raises :class:`PeerDied` if the writer exited and left nothing to read.
        """
        if self.has_data():
            return True
        for _ in range(self.spin):
            if self.has_data():
                return True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._sleep(self._data_fd, layout.READER_PARKED_OFFSET, deadline, self.has_data)
        finally:
            self.unpark()


@dataclass(frozen=True)
class RingPairHandles:
    """Both rings between two processes, seen from the side that attaches with them."""

    inbound: RingHandles
    outbound: RingHandles

    def fds(self) -> tuple[int, ...]:
        """Every descriptor to pass to the child."""
        return self.inbound.fds() + self.outbound.fds()

    def encode(self) -> str:
        """``"<inbound>;<outbound>"``, each as :meth:`RingHandles.encode`."""
        return f"{self.inbound.encode()};{self.outbound.encode()}"

    @classmethod
    def decode(cls, text: str) -> RingPairHandles:
        """The inverse of :meth:`encode`."""
        inbound, sep, outbound = text.partition(";")
        if not sep:
            raise ValueError(f"ring pair handles need two parts, got {text!r}")
        return cls(RingHandles.decode(inbound), RingHandles.decode(outbound))


class RingPair:
    """A process's two rings to one peer: it writes ``outbound`` and reads ``inbound``.

    The parent calls :meth:`create`, starts the child with ``pass_fds=h.fds()`` and
    ``h.encode()`` where ``h = pair.peer_handles()``; the child calls
    ``RingPair.attach(RingPairHandles.decode(text))`` and gets the mirror image (the
    parent's outbound ring is the child's inbound one).
    """

    def __init__(self, outbound: RingWriter, inbound: RingReader) -> None:
        self.outbound = outbound
        self.inbound = inbound

    @classmethod
    def create(cls, capacity: int, inbound_capacity: int | None = None) -> RingPair:
        """Two new rings; ``inbound_capacity`` defaults to ``capacity``."""
        outbound = RingWriter.create(capacity)
        try:
            inbound = RingReader.create(inbound_capacity or capacity)
        except BaseException:
            outbound.close()
            raise
        return cls(outbound, inbound)

    @classmethod
    def attach(cls, handles: RingPairHandles) -> RingPair:
        """The peer's side of a pair, from inherited descriptors."""
        outbound = RingWriter.attach(handles.outbound)
        try:
            inbound = RingReader.attach(handles.inbound)
        except BaseException:
            outbound.close()
            raise
        return cls(outbound, inbound)

    def peer_handles(self) -> RingPairHandles:
        """What the peer attaches with: our outbound ring is its inbound one."""
        return RingPairHandles(inbound=self.outbound.handles(), outbound=self.inbound.handles())

    def close(self) -> None:
        """Close both rings (idempotent)."""
        self.outbound.close()
        self.inbound.close()

    def __enter__(self) -> RingPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _init_header(segment: Segment, capacity: int) -> None:
    """Write a fresh ring header; the magic word goes last, with release ordering."""
    words = Words(segment.buf)
    try:
        words.store_release(layout.CAPACITY_OFFSET, capacity)
        words.store_release(layout.MAGIC_VERSION_OFFSET, layout.MAGIC_VERSION)
    finally:
        words.release()


def _read_capacity(segment: Segment) -> int:
    """The capacity of a ring segment; refuses one of another version or the wrong size."""
    words = Words(segment.buf)
    try:
        magic = words.load_acquire(layout.MAGIC_VERSION_OFFSET)
        capacity = words.load_acquire(layout.CAPACITY_OFFSET)
    finally:
        words.release()
    if magic != layout.MAGIC_VERSION:
        raise ValueError(
            f"segment is not an amqscale ring of version {layout.VERSION} "
            f"(first word {magic:#x}, expected {layout.MAGIC_VERSION:#x})"
        )
    layout.check_capacity(capacity)
    if layout.segment_size(capacity) != segment.size:
        raise ValueError(
            f"ring of capacity {capacity} needs {layout.segment_size(capacity)} bytes, "
            f"segment has {segment.size}"
        )
    return capacity


def _close_all(segment: Segment | None, fds: list[int]) -> None:
    if segment is not None:
        segment.close()
    for fd in fds:
        os.close(fd)


def _readable(fd: int) -> bool:
    """Is ``fd`` readable right now? (poll, not select: descriptors may exceed 1024)"""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _drain(fd: int) -> None:
    """Reset an eventfd's counter; empty already is fine."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def _remaining_ms(deadline: float | None) -> int:
    """Milliseconds to the deadline for poll(): -1 for none, rounded up, never negative."""
    if deadline is None:
        return -1
    remaining = deadline - time.monotonic()
    return max(0, int(remaining * 1000) + 1) if remaining > 0 else 0
