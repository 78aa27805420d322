"""Rings between real processes: a stress run, an echo over a RingPair, wake-ups, peer death."""

from __future__ import annotations

import os
import select
import signal
import threading
import zlib

import pytest
from ipc_helpers import SpawnChild, wait_ready
from ring_child import STRESS_HEADER

from amqscale.ipc import layout
from amqscale.ipc.ring import PeerDied, RingPair, RingReader, RingWriter

STRESS_RECORDS = 200_000


def check_stress_record(record: bytes, expected_seq: int) -> None:
    seq, crc = STRESS_HEADER.unpack_from(record)
    assert seq == expected_seq
    assert zlib.crc32(record[STRESS_HEADER.size :]) == crc, f"record {seq} damaged"


@pytest.mark.timeout(180)
def test_every_record_arrives_once_in_order_intact(spawn_child: SpawnChild) -> None:
    # A 64 KiB ring holds ~400 of these records: both sides block and wrap constantly.
    with RingReader.create(1 << 16) as reader:
        handles = reader.handles()
        child = spawn_child(
            "stress", handles.encode(), STRESS_RECORDS, 1234, pass_fds=handles.fds()
        )
        received = 0
        while received < STRESS_RECORDS:
            assert reader.wait(timeout=60), f"stalled after {received} records"
            for record in reader.read_batch():
                check_stress_record(record, received)
                received += 1
        assert child.wait(timeout=60) == 0
        assert reader.read_batch() == []
        with pytest.raises(PeerDied):
            reader.wait(timeout=60)


@pytest.mark.timeout(120)
def test_ring_pair_echo_both_directions(spawn_child: SpawnChild) -> None:
    count = 20_000
    with RingPair.create(4096, 8192) as pair:
        peer = pair.peer_handles()
        child = spawn_child("echo", peer.encode(), pass_fds=peer.fds())
        records = [i.to_bytes(4, "little") * (i % 50) + b"!" for i in range(count)]
        sent = 0
        echoed: list[bytes] = []
        while len(echoed) < count:
            progress = pair.outbound.write_batch(records[sent : sent + 64])
            sent += progress
            got = pair.inbound.read_batch()
            echoed.extend(got)
            if not progress and not got:
                assert pair.inbound.wait(timeout=60), f"no echo after {len(echoed)}"
        pair.outbound.write(b"", timeout=60)
        assert child.wait(timeout=60) == 0
        assert echoed == records


@pytest.mark.timeout(120)
def test_parked_reader_wakes_when_the_other_process_writes(spawn_child: SpawnChild) -> None:
    with RingReader.create(4096) as reader:
        reader.spin = 0
        handles = reader.handles()
        child = spawn_child("write-when-parked", handles.encode(), pass_fds=handles.fds())
        assert reader.wait(timeout=60)
        assert reader.read_batch() == [b"wake up"]
        wait_ready(child)
        assert reader.peer_alive()


@pytest.mark.timeout(120)
def test_reader_notices_a_killed_writer(spawn_child: SpawnChild) -> None:
    with RingReader.create(4096) as reader:
        handles = reader.handles()
        child = spawn_child("hold-writer", handles.encode(), 10, pass_fds=handles.fds())
        wait_ready(child)
        assert reader.peer_pid() == child.pid
        assert reader.peer_alive()
        peer_fd = reader.peer_fileno()
        assert peer_fd is not None
        assert not select.select([peer_fd], [], [], 0)[0]
        os.kill(child.pid, signal.SIGKILL)  # not reaped yet: a zombie must count as dead
        assert select.select([peer_fd], [], [], 60)[0] == [peer_fd]
        assert not reader.peer_alive()
        assert reader.wait(timeout=60)  # what it wrote before dying is still there
        assert reader.read_batch() == [seq.to_bytes(8, "little") for seq in range(10)]
        with pytest.raises(PeerDied, match=str(child.pid)):
            reader.wait(timeout=60)


@pytest.mark.timeout(120)
def test_blocked_writer_wakes_when_the_reader_is_killed(spawn_child: SpawnChild) -> None:
    with RingWriter.create(4096) as writer:
        writer.spin = 0
        handles = writer.handles()
        child = spawn_child("hold-reader", handles.encode(), pass_fds=handles.fds())
        wait_ready(child)
        while writer.try_write(bytes(100)):
            pass

        def kill_once_parked() -> None:
            while not writer._words.load_acquire(layout.WRITER_PARKED_OFFSET):
                os.sched_yield()
            os.kill(child.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_parked)
        killer.start()
        with pytest.raises(PeerDied):
            writer.write(bytes(100), timeout=60)
        killer.join(timeout=60)


@pytest.mark.timeout(120)
def test_liveness_without_pidfd_falls_back_to_kill(
    spawn_child: SpawnChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    with RingReader.create(4096) as reader:
        handles = reader.handles()
        child = spawn_child("hold-writer", handles.encode(), 0, pass_fds=handles.fds())
        wait_ready(child)
        assert reader.peer_fileno() is None
        assert reader.peer_alive()
        child.kill()
        child.wait(timeout=60)
        assert not reader.peer_alive()
        with pytest.raises(PeerDied):
            reader.wait(timeout=60)
