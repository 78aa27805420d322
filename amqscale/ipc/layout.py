"""The shared-memory layout of a one-to-one ring: the single source of truth.

Every offset, size and marker that the writer, the reader and the C helpers in
``_atomics.c`` rely on is defined here; nothing else spells a number of its own (the C
module exports its copies of the record constants and ``ring.py`` checks them against
these at import).

Segment (one per ring)::

      offset  word (u64, little-endian)        written by   read by
    +-------+--------------------------------+------------+-----------------+
    |     0 | MAGIC_VERSION                  | creator    | attacher        |
    |    64 | CAPACITY  (data bytes, 2**k)   | creator    | attacher        |
    |   128 | WRITER_PID                     | writer     | reader          |
    |   192 | READER_PID                     | reader     | writer          |
    |   256 | TAIL   producer cursor         | writer     | reader (acquire)|
    |   320 | HEAD   consumer cursor         | reader     | writer (acquire)|
    |   384 | READER_PARKED  0/1             | reader     | writer (fenced) |
    |   448 | WRITER_PARKED  0/1             | writer     | reader (fenced) |
    +-------+--------------------------------+------------+-----------------+
    |   512 | data: CAPACITY bytes of records                                 |
    +-------+-----------------------------------------------------------------+

Each header word sits alone in its 64-byte cache line, so the words one side writes on
every batch (its cursor) never share a line with the words the other side writes: no false
sharing between the two cores.

Cursors are monotonically increasing 64-bit byte counts; a record's position in the data
area is ``cursor % CAPACITY`` (CAPACITY is a power of two, so ``cursor & (CAPACITY - 1)``).
``TAIL - HEAD`` is the number of bytes in use; the ring is empty when they are equal.

Record (8-byte aligned, never split across the end of the data area)::

    +----------------+----------------+------------------------------+---------+
    | length: u32 LE | reserved: u32  | payload: length bytes        | pad to 8|
    +----------------+----------------+------------------------------+---------+
    |<------ RECORD_HEADER_SIZE ----->|

A record that does not fit between its position and the end of the data area is preceded
by a wrap marker: a record header whose length is ``PADDING_LENGTH``. The reader skips from
a wrap marker to the start of the data area. Because positions are 8-byte aligned and the
capacity is a multiple of 8, there is always room for a marker's header.
"""

from __future__ import annotations

CACHE_LINE = 64
"""Bytes per cache line: each header word gets a line of its own."""

VERSION = 1
MAGIC = 0x616D_7172_696E_67  # b"amqring" as a big-endian integer
MAGIC_VERSION = (MAGIC << 8) | VERSION
"""First word of every ring segment: a stale or foreign segment is refused on attach."""

MAGIC_VERSION_OFFSET = 0 * CACHE_LINE
CAPACITY_OFFSET = 1 * CACHE_LINE
WRITER_PID_OFFSET = 2 * CACHE_LINE
READER_PID_OFFSET = 3 * CACHE_LINE
TAIL_OFFSET = 4 * CACHE_LINE
HEAD_OFFSET = 5 * CACHE_LINE
READER_PARKED_OFFSET = 6 * CACHE_LINE
WRITER_PARKED_OFFSET = 7 * CACHE_LINE

HEADER_SIZE = 8 * CACHE_LINE
DATA_OFFSET = HEADER_SIZE
"""The data area starts on a cache line right after the header."""

RECORD_HEADER_SIZE = 8
RECORD_ALIGNMENT = 8
PADDING_LENGTH = 0xFFFF_FFFF
"""A record length that marks "skip to the start of the data area" (a wrap marker)."""

MIN_CAPACITY = 64
MAX_CAPACITY = 1 << 40
MAX_LENGTH_FIELD = PADDING_LENGTH - 1
"""The largest length a record header can carry (the marker value itself is reserved)."""


def check_capacity(capacity: int) -> None:
    """Refuse a data capacity that the cursor arithmetic cannot use.

    A power of two lets positions be computed with a mask; the bounds keep a ring big
    enough for a record header plus payload and small enough to map.
    """
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"ring capacity must be an int, not {type(capacity).__name__}")
    if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError(
            f"ring capacity must be a power of two between {MIN_CAPACITY} and "
            f"{MAX_CAPACITY} bytes, got {capacity}"
        )


def segment_size(capacity: int) -> int:
    """Bytes of shared memory a ring of ``capacity`` data bytes needs."""
    check_capacity(capacity)
    return HEADER_SIZE + capacity


def record_size(length: int) -> int:
    """Bytes a record of ``length`` payload bytes occupies in the data area."""
    return (RECORD_HEADER_SIZE + length + RECORD_ALIGNMENT - 1) & ~(RECORD_ALIGNMENT - 1)


def max_record_size(capacity: int) -> int:
    """The largest payload that can always be written into an empty ring of ``capacity``.

    A record that does not fit before the end of the data area needs a wrap marker plus
    its own size; with an aligned size of at most half the capacity, one of the two
    placements always fits once the reader has drained the ring, wherever the cursors are.
    """
    check_capacity(capacity)
    return min(capacity // 2 - RECORD_HEADER_SIZE, MAX_LENGTH_FIELD)
