"""Ring behaviour in one process: errors, parking and wake-ups, handles, closing."""

from __future__ import annotations

import gc
import os
import select
import threading

import pytest
from ipc_helpers import ring_in_process

from amqscale.ipc import layout
from amqscale.ipc.ring import (
    RecordTooLarge,
    RingHandles,
    RingPairHandles,
    RingReader,
    RingWriter,
)
from amqscale.ipc.segment import Segment

Ring = tuple[RingWriter, RingReader]


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def fill(writer: RingWriter, length: int = 100) -> int:
    """Write records until the ring refuses one; how many went in."""
    count = 0
    while writer.try_write(bytes([count % 256]) * length):
        count += 1
    return count


# --- records too large ---------------------------------------------------------------------


def test_max_record_size_is_half_the_capacity_less_a_header(ring: Ring) -> None:
    writer, reader = ring
    assert writer.max_record_size == reader.max_record_size == 1024 // 2 - 8
    assert writer.try_write(bytes(writer.max_record_size))
    assert reader.read_batch() == [bytes(writer.max_record_size)]


def test_too_large_record_names_both_sizes_and_writes_nothing(ring: Ring) -> None:
    writer, reader = ring
    with pytest.raises(RecordTooLarge, match=r"record of 505 bytes .* max_record_size of 504"):
        writer.try_write(bytes(505))
    with pytest.raises(RecordTooLarge, match="505 bytes"):
        writer.write(bytes(505), timeout=1)
    assert not reader.has_data()
    assert reader.read_batch() == []


def test_too_large_record_in_a_batch_refuses_the_whole_batch(ring: Ring) -> None:
    writer, reader = ring
    with pytest.raises(RecordTooLarge, match=r"record 2 of a batch of 3 \(none written\)"):
        writer.write_batch([b"a", b"b", bytes(600)])
    assert reader.read_batch() == []
    assert writer.write_batch([b"a", b"b"]) == 2
    assert reader.read_batch() == [b"a", b"b"]


def test_record_too_large_is_a_value_error() -> None:
    error = RecordTooLarge(10, 5)
    assert isinstance(error, ValueError)
    assert (error.length, error.max_record_size) == (10, 5)


def test_non_buffer_records_are_refused_before_anything_is_written(ring: Ring) -> None:
    writer, reader = ring
    with pytest.raises(TypeError):
        writer.write_batch([b"ok", "text"])  # type: ignore[list-item]
    assert reader.read_batch() == []


# --- full ring ------------------------------------------------------------------------------


def test_write_on_a_full_ring_times_out_then_succeeds_after_a_read(ring: Ring) -> None:
    writer, reader = ring
    count = fill(writer)
    assert count > 0
    with pytest.raises(TimeoutError, match="no room for a 100-byte record"):
        writer.write(bytes(100), timeout=0.05)
    assert len(reader.read_batch(1)) == 1
    writer.write(b"z" * 100, timeout=0.05)
    records = reader.read_batch()
    assert len(records) == count
    assert records[-1] == b"z" * 100


def test_batch_on_a_nearly_full_ring_writes_a_prefix(ring: Ring) -> None:
    writer, reader = ring
    count = fill(writer) - 2
    reader.read_batch(2)
    assert writer.write_batch([b"x" * 100] * 5) == 2
    assert len(reader.read_batch()) == count + 2
    assert writer.write_batch([]) == 0


def test_records_may_be_any_byte_buffer(ring: Ring) -> None:
    writer, reader = ring
    assert writer.try_write(bytearray(b"ba"))
    assert writer.write_batch([memoryview(b"xmvx")[1:3], b"", bytearray(3)]) == 3
    assert reader.read_batch() == [b"ba", b"mv", b"", bytes(3)]


# --- capacity and attaching -----------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, 32, 100, 1000, 1 << 41])
def test_bad_capacity_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingWriter.create(capacity)


def test_attach_refuses_a_segment_that_is_not_a_ring() -> None:
    with Segment.create(layout.segment_size(1024)) as segment:
        handles = RingHandles(os.dup(segment.fd), segment.size, os.eventfd(0), os.eventfd(0))
        with pytest.raises(ValueError, match="not an amqscale ring"):
            RingReader.attach(handles)


def test_attach_refuses_a_wrong_size() -> None:
    with RingWriter.create(1024) as writer:
        handles = writer.handles().dup()
        wrong = RingHandles(handles.segment_fd, 512, handles.data_fd, handles.space_fd)
        with pytest.raises(ValueError, match="segment has 512"):
            RingReader.attach(wrong)


def test_descriptors_reach_only_children_they_are_passed_to() -> None:
    with RingWriter.create(1024) as writer:
        assert not any(os.get_inheritable(fd) for fd in writer.handles().fds())


def test_handles_round_trip_through_text() -> None:
    handles = RingHandles(5, 4096, 6, 7)
    assert RingHandles.decode(handles.encode()) == handles
    pair = RingPairHandles(handles, RingHandles(8, 8192, 9, 10))
    assert RingPairHandles.decode(pair.encode()) == pair
    assert pair.fds() == (5, 6, 7, 8, 9, 10)
    with pytest.raises(ValueError, match="4 fields"):
        RingHandles.decode("1:2:3")
    with pytest.raises(ValueError, match="two parts"):
        RingPairHandles.decode("1:2:3:4")


def test_a_new_reader_continues_where_the_last_one_stopped() -> None:
    writer, reader = ring_in_process(1024)
    with writer:
        writer.write_batch([b"one", b"two"])
        with reader:
            assert reader.read_batch(1) == [b"one"]
        with RingReader.attach(writer.handles().dup()) as second:
            assert second.read_batch() == [b"two"]


# --- parking and wake-ups -------------------------------------------------------------------


def test_parked_reader_is_woken_by_a_write(ring: Ring) -> None:
    writer, reader = ring
    assert not writer.reader_parked()
    assert reader.park() is False
    assert writer.reader_parked()
    assert not readable(reader.fileno())
    writer.try_write(b"wake")
    assert readable(reader.fileno())
    reader.unpark()
    assert not readable(reader.fileno())
    assert reader.read_batch() == [b"wake"]


def test_reader_state_is_caught_up_and_parked_in_one(ring: Ring) -> None:
    writer, reader = ring
    assert writer.reader_state() == 1  # nothing written: caught up, awake
    writer.try_write(b"a")
    assert writer.reader_state() == 0  # behind
    assert reader.park() is True  # data is there: it does not park
    assert reader.read_batch() == [b"a"]
    assert writer.reader_state() == 1
    assert reader.park() is False
    assert writer.reader_state() == 2  # caught up and asleep
    assert writer.reader_state() == 2 * writer.reader_caught_up() * writer.reader_parked()
    writer.try_write(b"b")  # the publication takes the flag and wakes it
    assert writer.reader_state() == 0
    reader.unpark()
    assert reader.read_batch() == [b"b"]
    assert writer.reader_state() == 1


def test_one_wake_up_per_parking_however_many_writes(ring: Ring) -> None:
    writer, reader = ring
    reader.park()
    writer.try_write(b"a")
    writer.write_batch([b"b", b"c"])
    writer.try_write(b"d")
    assert not writer.reader_parked()  # the first publication took the flag
    assert os.eventfd_read(reader.fileno()) == 1
    reader.unpark()
    assert reader.read_batch() == [b"a", b"b", b"c", b"d"]
    assert reader.park() is False  # parking again re-arms the flag
    writer.try_write(b"e")
    assert os.eventfd_read(reader.fileno()) == 1


def test_unparked_reader_is_not_signalled(ring: Ring) -> None:
    writer, reader = ring
    writer.write_batch([b"a", b"b"])
    writer.try_write(b"c")
    assert not readable(reader.fileno())


def test_park_with_data_waiting_returns_true_and_stays_unparked(ring: Ring) -> None:
    writer, reader = ring
    writer.try_write(b"early")
    assert reader.park() is True
    writer.try_write(b"later")
    assert not readable(reader.fileno())


def test_parked_writer_is_woken_when_the_reader_frees_room(ring: Ring) -> None:
    writer, reader = ring
    fill(writer)
    assert not reader.writer_parked()
    assert writer.park(100) is False
    assert reader.writer_parked()
    assert not readable(writer.fileno())
    reader.read_batch(1)
    assert readable(writer.fileno())
    writer.unpark()
    assert not readable(writer.fileno())
    assert writer.park(100) is True


def test_wait_returns_false_on_timeout_and_true_with_data(ring: Ring) -> None:
    writer, reader = ring
    assert reader.wait(timeout=0.02) is False
    writer.try_write(b"x")
    assert reader.wait(timeout=0) is True


def test_sleeping_reader_wakes_for_a_write_from_another_thread(ring: Ring) -> None:
    writer, reader = ring
    reader.spin = 0
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(reader.wait(timeout=30)))
    waiter.start()
    # Write only once the reader is parked, so the eventfd path is what wakes it.
    while not writer.reader_parked():
        os.sched_yield()
    writer.try_write(b"hello")
    waiter.join(timeout=60)
    assert results == [True]
    assert reader.read_batch() == [b"hello"]


def test_blocked_writer_wakes_when_another_thread_reads(ring: Ring) -> None:
    writer, reader = ring
    writer.spin = 0
    fill(writer)
    errors: list[BaseException] = []

    def blocked_write() -> None:
        try:
            writer.write(b"last" * 25, timeout=30)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=blocked_write)
    thread.start()
    while not reader.writer_parked():
        os.sched_yield()
    first = reader.read_batch(1)
    thread.join(timeout=60)
    assert errors == []
    rest = reader.read_batch()
    assert len(first) == 1 and rest[-1] == b"last" * 25


# --- liveness and closing -------------------------------------------------------------------


def test_peer_unknown_until_it_attaches() -> None:
    with RingWriter.create(1024) as writer:
        assert writer.peer_pid() is None
        assert writer.peer_fileno() is None
        assert writer.peer_alive() is True
        with RingReader.attach(writer.handles().dup()) as reader:
            assert writer.peer_pid() == reader.peer_pid() == os.getpid()
            assert writer.peer_alive() and reader.peer_alive()
            fd = writer.peer_fileno()
            assert fd is not None and not readable(fd)


def test_closed_ring_refuses_use_and_closes_twice(ring: Ring) -> None:
    writer, reader = ring
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(ValueError):
        writer.try_write(b"x")
    with pytest.raises(ValueError):
        writer.write_batch([b"x"])
    with pytest.raises(OSError):
        os.fstat(writer.fileno())
    reader.close()
    with pytest.raises(ValueError):
        reader.read_batch()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closing_or_dropping_rings_gives_back_every_descriptor() -> None:
    before = open_fds()
    for _ in range(10):
        writer, reader = ring_in_process(1024)
        writer.close()
        reader.close()
    for _ in range(10):
        ring_in_process(1024)  # dropped without close()
    gc.collect()
    assert open_fds() == before


def test_context_managers_close() -> None:
    with RingWriter.create(1024) as writer:
        with RingReader.attach(writer.handles().dup()) as reader:
            pass
        assert reader.closed and not writer.closed
    assert writer.closed
