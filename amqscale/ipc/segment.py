"""Shared-memory segments that no crash can leak.

A segment is created with ``shm_open(O_CREAT | O_EXCL | O_RDWR, 0600)`` under a fresh name
(``amqscale-<pid>-<counter>-<random>``), sized with ``ftruncate`` and memory-mapped. The
name is unlinked at once: the open file descriptor keeps the memory alive, and the other
process gets the memory by inheriting that descriptor (``subprocess.Popen(pass_fds=...)``)
and calling :meth:`Segment.from_fd`. So no name outlives set-up, even if the creator is
killed with SIGKILL a moment later; the memory itself goes away when the last process
that maps it exits.

``multiprocessing.shared_memory`` is not used: before Python 3.13 its resource tracker
unlinks segments that a process merely attached to, and it registers every segment by
name, which is exactly what this module avoids.

A caller that needs the name for a while (``unlink_at_once=False``) still gets it removed
by :meth:`Segment.unlink`, :meth:`Segment.close`, garbage collection or interpreter exit.
"""

from __future__ import annotations

import _posixshmem
import atexit
import contextlib
import itertools
import mmap
import os
import secrets
import stat
import threading
from types import TracebackType

NAME_PREFIX = "amqscale-"
MODE = 0o600

_counter = itertools.count()
_named: dict[str, None] = {}
"""Names this process created and has not unlinked yet (only with unlink_at_once=False)."""
_named_lock = threading.Lock()


def _new_name() -> str:
    """A name no other segment has: pid and counter for humans, random bits against races."""
    return f"{NAME_PREFIX}{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _unlink_name(name: str) -> None:
    """Remove ``name`` from the shm namespace if this process still owns it."""
    with _named_lock:
        if name not in _named:
            return
        del _named[name]
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name)


@atexit.register
def _unlink_all() -> None:
    """Last resort at interpreter exit for names kept with ``unlink_at_once=False``."""
    for name in list(_named):
        _unlink_name(name)


class Segment:
    """A memory-mapped shared-memory segment owned by this process.

    Build one with :meth:`create` (new memory) or :meth:`from_fd` (memory another process
    created and passed as a file descriptor). ``buf`` is a writable memoryview of the
    whole segment; anything that takes a buffer from it must release it before
    :meth:`close`, which unmaps the memory.
    """

    def __init__(self, fd: int, size: int, name: str | None) -> None:
        """Map ``size`` bytes of ``fd``; the segment takes ownership of ``fd``."""
        self._fd = fd
        self._size = size
        self._name = name
        self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        self._view: memoryview | None = memoryview(self._mmap)

    @classmethod
    def create(cls, size: int, *, unlink_at_once: bool = True) -> Segment:
        """Create a segment of ``size`` bytes, mode 0600, zero-filled.

        With ``unlink_at_once`` (the default) the name is gone before this returns: only
        the file descriptor (:attr:`fd`) gives access to the memory from then on.
        """
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        name = _new_name()
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, MODE)
        with _named_lock:
            _named[name] = None
        try:
            os.fchmod(fd, MODE)  # exactly 0600, whatever the umask
            os.ftruncate(fd, size)
            segment = cls(fd, size, name)
        except BaseException:
            os.close(fd)
            _unlink_name(name)
            raise
        if unlink_at_once:
            _unlink_name(name)
        return segment

    @classmethod
    def from_fd(cls, fd: int, size: int) -> Segment:
        """Map a segment whose descriptor this process inherited; takes ownership of ``fd``.

        Refuses a descriptor that is not a shared-memory object of at least ``size``
        bytes, so a wrong descriptor number fails here rather than as a bus error later.
        """
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"fd {fd} is not a shared-memory segment")
        if st.st_size < size:
            raise ValueError(f"segment on fd {fd} has {st.st_size} bytes, expected {size}")
        return cls(fd, size, None)

    @property
    def name(self) -> str | None:
        """The name the segment was created under (for diagnostics; usually unlinked)."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return self._size

    @property
    def fd(self) -> int:
        """The descriptor to pass to another process (``pass_fds``)."""
        if self._fd < 0:
            raise ValueError("segment is closed")
        return self._fd

    @property
    def buf(self) -> memoryview:
        """A writable view of the whole segment."""
        if self._view is None:
            raise ValueError("segment is closed")
        return self._view

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._view is None

    def unlink(self) -> None:
        """Remove the name (idempotent); the memory stays until every mapping is gone."""
        if self._name is not None:
            _unlink_name(self._name)

    def close(self) -> None:
        """Unlink the name if still there, unmap the memory and close the descriptor.

        Raises BufferError if something still holds a buffer of :attr:`buf`.
        """
        self.unlink()
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A segment dropped without close() must still not leave its name or descriptor
        # behind; the mapping itself may still be in use through a buffer someone holds.
        try:
            self.close()
        except BufferError:
            self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Segment {self._name or '(inherited)'} size={self._size} {state}>"
