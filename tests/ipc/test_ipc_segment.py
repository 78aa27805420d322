"""Segments: mode 0600, the name prefix, and no name left in /dev/shm on any exit path."""

from __future__ import annotations

import gc
import os
import re
import signal
import stat
from pathlib import Path

import pytest
from ipc_helpers import SpawnChild, wait_ready

from amqscale.ipc.segment import MODE, NAME_PREFIX, Segment

SHM = Path("/dev/shm")
NAME = re.compile(rf"^{NAME_PREFIX}(\d+)-(\d+)-[0-9a-f]{{8}}$")


def shm_names(pid: int) -> list[str]:
    """Names in /dev/shm that a process with ``pid`` created."""
    return sorted(p.name for p in SHM.glob(f"{NAME_PREFIX}{pid}-*"))


def test_create_gives_mode_0600_and_a_named_pid_counter_random_name() -> None:
    with Segment.create(4096) as segment:
        assert stat.S_IMODE(os.fstat(segment.fd).st_mode) == MODE == 0o600
        assert segment.name is not None
        match = NAME.match(segment.name)
        assert match is not None, segment.name
        assert int(match.group(1)) == os.getpid()
        assert segment.size == len(segment.buf) == 4096
        assert bytes(segment.buf[:16]) == bytes(16)


def test_names_are_unique() -> None:
    segments = [Segment.create(64) for _ in range(5)]
    try:
        assert len({s.name for s in segments}) == 5
    finally:
        for segment in segments:
            segment.close()


def test_name_is_unlinked_at_once_and_memory_still_shared() -> None:
    with Segment.create(4096) as segment:
        assert segment.name is not None
        assert not (SHM / segment.name).exists()
        assert shm_names(os.getpid()) == []
        with Segment.from_fd(os.dup(segment.fd), 4096) as other:
            segment.buf[100:105] = b"hello"
            assert bytes(other.buf[100:105]) == b"hello"


def test_kept_name_has_mode_0600_and_is_gone_after_close() -> None:
    segment = Segment.create(4096, unlink_at_once=False)
    assert segment.name is not None
    path = SHM / segment.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    segment.close()
    assert not path.exists()
    segment.close()  # idempotent


def test_kept_name_is_gone_after_garbage_collection() -> None:
    segment = Segment.create(4096, unlink_at_once=False)
    assert segment.name is not None
    path = SHM / segment.name
    assert path.exists()
    del segment
    gc.collect()
    assert not path.exists()


def test_kept_name_is_gone_after_interpreter_exit(spawn_child: SpawnChild) -> None:
    child = spawn_child("named-segment")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    name = out.strip()
    assert NAME.match(name), name
    assert not (SHM / name).exists()


def test_no_name_survives_sigkill(spawn_child: SpawnChild) -> None:
    child = spawn_child("segments", 5)
    wait_ready(child)
    assert shm_names(child.pid) == []  # unlinked while the creator is still alive
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert shm_names(child.pid) == []


def test_from_fd_refuses_a_segment_smaller_than_asked() -> None:
    with Segment.create(4096) as segment:
        fd = os.dup(segment.fd)
        try:
            with pytest.raises(ValueError, match="4096 bytes, expected 8192"):
                Segment.from_fd(fd, 8192)
        finally:
            os.close(fd)


def test_from_fd_refuses_something_that_is_not_shared_memory() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a shared-memory segment"):
            Segment.from_fd(read_end, 64)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_closed_segment_refuses_use() -> None:
    segment = Segment.create(64)
    segment.close()
    assert segment.closed
    with pytest.raises(ValueError, match="closed"):
        _ = segment.buf
    with pytest.raises(ValueError, match="closed"):
        _ = segment.fd


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Segment.create(0)
