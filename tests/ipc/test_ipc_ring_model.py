"""The ring against a model, in one process: random interleavings of writes and reads.

The model is a deque of records plus the two cursors of the specification (a record takes
``record_size(len)`` bytes, and a record that would cross the end of the data area first
skips to the start). It predicts exactly when a write must fit and what every read
returns. Small capacities make the wrap-around frequent. Every mix of the C core and the
Python reference core runs it, so both cores write and read the same bytes.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from ipc_helpers import ring_in_process

from amqscale.ipc import layout
from amqscale.ipc.ring import RecordTooLarge, RingReader, RingWriter

CAPACITIES = [64, 128, 256, 1024]


class RingModel:
    """The specified behaviour: cursors, wrap-around, FIFO contents."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tail = 0
        self.head = 0
        self.records: deque[tuple[bytes, int]] = deque()  # record, cursor after it

    def fits(self, length: int) -> bool:
        size = layout.record_size(length)
        to_end = self.capacity - self.tail % self.capacity
        need = size if size <= to_end else to_end + size
        return self.tail + need - self.head <= self.capacity

    def write(self, record: bytes) -> None:
        size = layout.record_size(len(record))
        to_end = self.capacity - self.tail % self.capacity
        if size > to_end:
            self.tail += to_end
        self.tail += size
        self.records.append((record, self.tail))

    def read(self, max_records: int) -> list[bytes]:
        out: list[bytes] = []
        while self.records and len(out) < max_records:
            record, end = self.records.popleft()
            out.append(record)
            self.head = end
        return out


def record_lengths(max_length: int) -> st.SearchStrategy[int]:
    """Lengths with the edges over-represented: empty, tiny, around the maximum."""
    return st.one_of(
        st.sampled_from([0, 1, 7, 8, 9, max_length - 1, max_length]),
        st.integers(0, max_length),
    )


class RingMachine(RuleBasedStateMachine):
    kinds = "c-c"

    writer: RingWriter
    reader: RingReader
    model: RingModel

    @initialize(capacity=st.sampled_from(CAPACITIES))
    def open_ring(self, capacity: int) -> None:
        self.writer, self.reader = ring_in_process(capacity, self.kinds)
        self.model = RingModel(capacity)
        self.counter = 0

    def record(self, length: int) -> bytes:
        """Distinct contents, so a misplaced or repeated record shows."""
        self.counter += 1
        seed = self.counter.to_bytes(4, "little")
        return (seed * (length // 4 + 1))[:length]

    @rule(data=st.data())
    def try_write(self, data: st.DataObject) -> None:
        length = data.draw(record_lengths(self.writer.max_record_size))
        record = self.record(length)
        expected = self.model.fits(length)
        assert self.writer.has_room(length) == expected
        assert self.writer.try_write(record) == expected
        if expected:
            self.model.write(record)

    @rule(data=st.data())
    def write_batch(self, data: st.DataObject) -> None:
        lengths = data.draw(st.lists(record_lengths(self.writer.max_record_size), max_size=6))
        records = [self.record(n) for n in lengths]
        expected = 0
        for record in records:
            if not self.model.fits(len(record)):
                break
            self.model.write(record)
            expected += 1
        assert self.writer.write_batch(records) == expected

    @rule(data=st.data())
    def write_blocking_when_room(self, data: st.DataObject) -> None:
        length = data.draw(record_lengths(self.writer.max_record_size))
        if self.model.fits(length):
            record = self.record(length)
            self.writer.write(memoryview(record), timeout=0)
            self.model.write(record)

    @rule(data=st.data())
    def write_too_large(self, data: st.DataObject) -> None:
        extra = data.draw(st.integers(1, 100))
        with pytest.raises(RecordTooLarge):
            self.writer.write_batch([b"", bytes(self.writer.max_record_size + extra)])

    @rule(max_records=st.one_of(st.integers(1, 4), st.just(10_000)))
    def read_batch(self, max_records: int) -> None:
        got = self.reader.read_batch(max_records)
        assert got == self.model.read(max_records)
        assert all(type(record) is bytes for record in got)

    @precondition(lambda self: not self.model.records)
    @rule()
    def park_on_empty_ring(self) -> None:
        assert self.reader.park() is False
        self.reader.unpark()

    @invariant()
    def data_announced_iff_records_waiting(self) -> None:
        if hasattr(self, "reader"):
            assert self.reader.has_data() == bool(self.model.records)

    def teardown(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()
            self.reader.close()


def machine_for(kinds: str, examples: int) -> type[RingMachine]:
    """The machine over one mix of cores; the all-C one (what ships) gets more examples."""
    machine = type(f"RingMachine_{kinds}", (RingMachine,), {"kinds": kinds})
    return settings(
        max_examples=examples,
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(machine)


TestRingCC = machine_for("c-c", 40).TestCase
TestRingPyC = machine_for("py-c", 15).TestCase
TestRingCPy = machine_for("c-py", 15).TestCase
TestRingPyPy = machine_for("py-py", 10).TestCase
