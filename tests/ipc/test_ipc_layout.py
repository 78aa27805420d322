"""The layout constants: separated cache lines, record arithmetic, agreement with the C core."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale.ipc import _atomics, layout

HEADER_WORDS = {
    "MAGIC_VERSION_OFFSET": layout.MAGIC_VERSION_OFFSET,
    "CAPACITY_OFFSET": layout.CAPACITY_OFFSET,
    "WRITER_PID_OFFSET": layout.WRITER_PID_OFFSET,
    "READER_PID_OFFSET": layout.READER_PID_OFFSET,
    "TAIL_OFFSET": layout.TAIL_OFFSET,
    "HEAD_OFFSET": layout.HEAD_OFFSET,
    "READER_PARKED_OFFSET": layout.READER_PARKED_OFFSET,
    "WRITER_PARKED_OFFSET": layout.WRITER_PARKED_OFFSET,
}

CAPACITIES = st.integers(6, 24).map(lambda k: 1 << k)


def test_each_header_word_has_its_own_cache_line_inside_the_header() -> None:
    lines = {offset // layout.CACHE_LINE for offset in HEADER_WORDS.values()}
    assert len(lines) == len(HEADER_WORDS)
    for name, offset in HEADER_WORDS.items():
        assert offset % 8 == 0, name
        assert offset + 8 <= layout.HEADER_SIZE, name


def test_data_area_starts_on_a_cache_line_after_the_header() -> None:
    assert layout.DATA_OFFSET % layout.CACHE_LINE == 0
    assert layout.DATA_OFFSET >= layout.HEADER_SIZE


def test_c_core_uses_the_same_record_format() -> None:
    assert _atomics.RECORD_HEADER_SIZE == layout.RECORD_HEADER_SIZE
    assert _atomics.RECORD_ALIGNMENT == layout.RECORD_ALIGNMENT
    assert _atomics.PADDING_LENGTH == layout.PADDING_LENGTH


def test_magic_fits_a_word_and_carries_the_version() -> None:
    assert 0 < layout.MAGIC_VERSION < 1 << 64
    assert layout.MAGIC_VERSION & 0xFF == layout.VERSION


@pytest.mark.parametrize(
    ("length", "size"), [(0, 8), (1, 16), (8, 16), (9, 24), (100, 112), (120, 128)]
)
def test_record_size_is_header_plus_payload_rounded_to_8(length: int, size: int) -> None:
    assert layout.record_size(length) == size


@pytest.mark.parametrize("capacity", [0, 1, 32, 63, 100, 96, 1 << 41, -64])
def test_bad_capacities_are_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match=str(capacity)):
        layout.check_capacity(capacity)


@pytest.mark.parametrize("capacity", [True, 64.0, "64"])
def test_non_int_capacities_are_refused(capacity: object) -> None:
    with pytest.raises(TypeError):
        layout.check_capacity(capacity)  # type: ignore[arg-type]


@given(CAPACITIES, st.data())
def test_a_max_size_record_fits_an_empty_ring_wherever_the_cursor_is(
    capacity: int, data: st.DataObject
) -> None:
    # Empty ring, head == tail at an arbitrary aligned position: the record goes at the
    # position or, after a wrap marker, at 0; one of the two must fit in `capacity` bytes.
    position = data.draw(st.integers(0, capacity // 8 - 1)) * 8
    size = layout.record_size(layout.max_record_size(capacity))
    to_end = capacity - position
    need = size if size <= to_end else to_end + size
    assert need <= capacity
    assert layout.record_size(layout.max_record_size(capacity) + 1) > capacity // 2


def test_segment_size_is_header_plus_capacity() -> None:
    assert layout.segment_size(4096) == layout.HEADER_SIZE + 4096
