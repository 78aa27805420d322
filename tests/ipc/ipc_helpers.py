"""Shared helpers for the IPC tests (a uniquely named module, imported by the test files)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from amqscale.ipc._pycore import PyRingCore
from amqscale.ipc.ring import RingReader, RingWriter

CHILD = Path(__file__).with_name("ring_child.py")

SpawnChild = Callable[..., subprocess.Popen[str]]
"""The spawn_child fixture: start ring_child.py with arguments and descriptors."""


def spawn(*args: object, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    """Start ``ring_child.py ARGS...`` with its stdout piped (use the spawn_child fixture)."""
    return subprocess.Popen(
        [sys.executable, str(CHILD), *map(str, args)],
        pass_fds=pass_fds,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_ready(child: subprocess.Popen[str]) -> None:
    """Block until a holding child says it attached."""
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "ready", f"child said {line!r}, exit status {child.poll()}"


class PyRingWriter(RingWriter):
    """A writer over the pure-Python reference core."""

    _CORE = PyRingCore


class PyRingReader(RingReader):
    """A reader over the pure-Python reference core."""

    _CORE = PyRingCore


ENDPOINTS: dict[str, tuple[type[RingWriter], type[RingReader]]] = {
    "c-c": (RingWriter, RingReader),
    "py-c": (PyRingWriter, RingReader),
    "c-py": (RingWriter, PyRingReader),
    "py-py": (PyRingWriter, PyRingReader),
}
"""Writer and reader classes: every mix of the C core and the Python reference core."""


def ring_in_process(capacity: int, kinds: str = "c-c") -> tuple[RingWriter, RingReader]:
    """A writer and a reader of one new ring, both in this process (separate mappings)."""
    writer_cls, reader_cls = ENDPOINTS[kinds]
    writer = writer_cls.create(capacity)
    reader = reader_cls.attach(writer.handles().dup())
    return writer, reader
