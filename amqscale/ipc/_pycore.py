"""The ring's hot path in plain Python: the readable reference for ``_atomics.RingCore``.

Same constructor, same methods, same bytes in shared memory as the C core. The rings use
the C core (this one costs about a microsecond per record, ten times the C one); the tests
run both, and mix them (a Python writer with a C reader and the other way round), which
checks that the C code and :mod:`amqscale.ipc.layout` agree.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

from amqscale.ipc import layout
from amqscale.ipc._atomics import Words

_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")


class PyRingCore:
    """One end of a ring: copies records in (writer) or out (reader) and publishes its cursor.

    ``own_cursor``/``peer_cursor``/``peer_parked`` are header offsets: for a writer the
    tail, the head and the reader's parked flag; for a reader the other way round.
    ``wake_fd`` is the eventfd to write when the peer is parked after a publication.
    """

    def __init__(
        self,
        buffer: memoryview,
        data_offset: int,
        capacity: int,
        own_cursor: int,
        peer_cursor: int,
        peer_parked: int,
        wake_fd: int,
        max_length: int,
        too_large: Callable[[int, int, str], BaseException],
    ) -> None:
        self._buf = buffer
        self._words = Words(buffer)
        self._data = data_offset
        self._capacity = capacity
        self._mask = capacity - 1
        self._own = own_cursor
        self._peer = peer_cursor
        self._peer_parked = peer_parked
        self._wake_fd = wake_fd
        self._max_length = max_length
        self._too_large = too_large
        self._released = False
        self._cursor = self._words.load_acquire(own_cursor)
        self._peer_cache = self._words.load_acquire(peer_cursor)

    @property
    def cursor(self) -> int:
        """This end's cursor: bytes it has ever written (writer) or consumed (reader)."""
        return self._cursor

    def write(self, record: bytes | bytearray | memoryview) -> bool:
        """Copy one record and publish it; False if the ring is full."""
        self._check_open()
        if len(record) > self._max_length:
            raise self._too_large(len(record), self._max_length, "")
        if not self._put(record):
            return False
        self._publish()
        return True

    def write_batch(self, records: Sequence[bytes | bytearray | memoryview]) -> int:
        """Copy as many records as fit, publish once; how many were written."""
        self._check_open()
        for index, record in enumerate(records):
            if len(record) > self._max_length:
                where = f" {index} of a batch of {len(records)} (none written)"
                raise self._too_large(len(record), self._max_length, where)
        written = 0
        for record in records:
            if not self._put(record):
                break
            written += 1
        if written:
            self._publish()
        return written

    def read_batch(self, max_records: int) -> list[bytes]:
        """Copy up to ``max_records`` records out, publish the head once."""
        self._check_open()
        head = self._cursor
        tail = self._words.load_acquire(self._peer)
        out: list[bytes] = []
        while head != tail and len(out) < max_records:
            position = head & self._mask
            offset = self._data + position
            (length,) = _LENGTH.unpack_from(self._buf, offset)
            if length == layout.PADDING_LENGTH:
                head += self._capacity - position
                continue
            size = layout.record_size(length)
            if size > tail - head or size > self._capacity - position:
                raise RuntimeError(
                    f"ring corrupted: record at cursor {head} claims {length} bytes "
                    "beyond what was published"
                )
            offset += layout.RECORD_HEADER_SIZE
            out.append(bytes(self._buf[offset : offset + length]))
            head += size
        if head != self._cursor:
            self._cursor = head
            self._publish()
        return out

    def peer_state(self) -> int:
        """0: the peer is behind this end's cursor; 1: caught up; 2: caught up and parked."""
        self._check_open()
        if self._words.load_acquire(self._peer) != self._cursor:
            return 0
        return 2 if self._words.load_acquire(self._peer_parked) else 1

    def release(self) -> None:
        """Let go of the buffer."""
        self._words.release()
        self._released = True

    def _check_open(self) -> None:
        if self._released:
            raise ValueError("PyRingCore: released")

    def _put(self, record: bytes | bytearray | memoryview) -> bool:
        """Copy one record at the tail, after a wrap marker if needed; False if full."""
        length = len(record)
        size = layout.record_size(length)
        tail = self._cursor
        position = tail & self._mask
        to_end = self._capacity - position
        need = size if size <= to_end else to_end + size
        if tail + need - self._peer_cache > self._capacity:
            self._peer_cache = self._words.load_acquire(self._peer)
            if tail + need - self._peer_cache > self._capacity:
                return False
        if size > to_end:
            _HEADER.pack_into(self._buf, self._data + position, layout.PADDING_LENGTH, 0)
            tail += to_end
            position = 0
        offset = self._data + position
        _HEADER.pack_into(self._buf, offset, length, 0)
        offset += layout.RECORD_HEADER_SIZE
        self._buf[offset : offset + length] = record
        self._cursor = tail + size
        return True

    def _publish(self) -> None:
        """Store the cursor, full fence, then wake the peer if it announced itself parked.

        Taking the flag (exchange to 0) makes it one eventfd write per parking.
        """
        self._words.store_fence(self._own, self._cursor)
        words = self._words
        if words.load_acquire(self._peer_parked) and words.exchange(self._peer_parked, 0):
            os.eventfd_write(self._wake_fd, 1)
