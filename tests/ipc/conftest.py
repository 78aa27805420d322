"""Fixtures for the IPC tests: child processes that are always reaped, rings in one process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from ipc_helpers import ENDPOINTS, SpawnChild, ring_in_process, spawn

from amqscale.ipc.ring import RingReader, RingWriter


@pytest.fixture
def spawn_child() -> Iterator[SpawnChild]:
    """Start ``ring_child.py MODE ARGS...``; every child started is killed and reaped."""
    children: list[subprocess.Popen[str]] = []

    def start(*args: object, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        child = spawn(*args, pass_fds=pass_fds)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


@pytest.fixture(params=sorted(ENDPOINTS))
def kinds(request: pytest.FixtureRequest) -> str:
    """Each mix of C and Python cores."""
    return str(request.param)


@pytest.fixture
def ring(kinds: str) -> Iterator[tuple[RingWriter, RingReader]]:
    """A small ring (1 KiB of data) in this process, closed afterwards."""
    writer, reader = ring_in_process(1024, kinds)
    yield writer, reader
    writer.close()
    reader.close()
