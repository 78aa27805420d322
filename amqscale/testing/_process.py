"""A server process that a test owns: its own directory, its own log, stopped by pid.

Tests and benchmarks start real peers (RabbitMQ, the Proton C broker, a rhea peer) next to
other people's processes on a shared machine, so everything here is deliberately narrow:
servers bind loopback only, on ports picked at run time; a start is bounded in time and fails
with the log's path and tail; a stop signals only the pids this object started (and their
descendants), waits, and escalates to SIGKILL after a bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import psutil

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"

Listener = tuple[str, int]
P = TypeVar("P", bound="ManagedProcess")


class PeerStartError(RuntimeError):
    """A peer did not start, or did not accept connections in time; the log tells why."""


def _bindable(host: str, port: int) -> bool:
    """Whether `host:port` has no listener (SO_REUSEADDR: TIME_WAIT sockets don't count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: Sequence[str] = (LOOPBACK_V4, LOOPBACK_V6)) -> int:
    """A TCP port free on every one of `hosts` now (the kernel picks it: bind to port 0).

    The port can still be taken before the server binds it; starts re-check and fail clearly.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((hosts[0], 0))
            port = int(sock.getsockname()[1])
        if all(_bindable(host, port) for host in hosts[1:]):
            return port
    raise PeerStartError(f"no port free on all of {list(hosts)}")


def check_ports_free(listeners: Iterable[Listener]) -> None:
    """Fail at once, naming the port, when another process already listens there."""
    taken = [f"{host}:{port}" for host, port in listeners if not _bindable(host, port)]
    if taken:
        raise PeerStartError(f"port already in use: {', '.join(taken)}")


def _listening(procs: Iterable[psutil.Process]) -> set[Listener]:
    """The (host, port) pairs on which `procs` hold listening TCP sockets."""
    found: set[Listener] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_processes(procs: Sequence[psutil.Process], timeout: float) -> None:
    """SIGTERM `procs`, wait up to `timeout` s, then SIGKILL what is left, and reap it."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)


class ManagedProcess:
    """One server process in its own temporary directory, logging to `<dir>/<name>.log`.

    Subclasses say what to run (`command`), how (`environment`, `prepare`), and which
    listeners prove it is ready (`listeners`); readiness is checked by looking at the
    process's own listening sockets, so a foreign server on the same port never counts.
    """

    name = "peer"
    host = LOOPBACK_V4
    scheme = "amqp"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, port: int = 0, *, keep_workdir: bool = False) -> None:
        self.port = port or free_port()
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._ready_at = 0.0
        self._stopped = False

    # What subclasses provide.
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self, workdir: Path) -> None:
        """Write the configuration the process needs into `workdir`."""

    def listeners(self) -> list[Listener]:
        return [(self.host, self.port)]

    def is_ready(self, listening: set[Listener]) -> bool:
        return set(self.listeners()) <= listening

    def extra_processes(self) -> list[psutil.Process]:
        """Processes besides the tree of the main pid that `stop` must end."""
        return []

    # Public surface.
    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def pids(self) -> list[int]:
        """Every pid `stop` would end now: the main pid, its descendants, extra processes."""
        return [proc.pid for proc in self._processes()]

    def start(self: P) -> P:
        """Start the process and wait (bounded) until it accepts connections."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started")
        check_ports_free(self.listeners())
        self.workdir = Path(tempfile.mkdtemp(prefix=f"amqscale-{self.name}-"))
        try:
            self.prepare(self.workdir)
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.keep_workdir = True  # the log explains the failure: keep it
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop by pid: SIGTERM, bounded wait, SIGKILL; then remove the directory.

        Idempotent; the main process gets its SIGTERM first so that it can shut down in
        order (RabbitMQ does), then whatever of its tree and `extra_processes` is left.
        """
        if self._stopped:
            return
        self._stopped = True
        procs = self._processes()
        stop_processes(procs[:1], self.stop_timeout)
        stop_processes(procs[1:] + self.extra_processes(), self.stop_timeout)
        if self._popen is not None:
            self._popen.wait()
        if self.workdir is not None:
            self.on_stopped(self.workdir)
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def on_stopped(self, workdir: Path) -> None:
        """Collect what the stopped process left in `workdir` before it is removed."""

    def __enter__(self: P) -> P:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Internals.
    def _spawn(self) -> None:
        assert self.workdir is not None
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal must not reach it directly
            )
        self._started_at = time.monotonic()

    def _processes(self) -> list[psutil.Process]:
        """The main process first, then its descendants (and extra processes), alive now."""
        if self._popen is None or self._popen.poll() is not None:
            return self.extra_processes()
        try:
            main = psutil.Process(self._popen.pid)
            return [main, *main.children(recursive=True), *self.extra_processes()]
        except psutil.NoSuchProcess:
            return self.extra_processes()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._popen is not None
            code = self._popen.poll()
            if code is not None:
                self._fail(f"exited with code {code} while starting")
            if self.is_ready(_listening(self._processes())):
                self._ready_at = time.monotonic()
                return
            if time.monotonic() > deadline:
                self._fail(f"did not accept connections within {self.start_timeout:.0f} s")
            time.sleep(0.05)

    def _fail(self, what: str) -> None:
        raise PeerStartError(
            f"{self.name} on port {self.port} {what}; log: {self.log_path}\n{_tail(self.log_path)}"
        )

    @property
    def started_in(self) -> float:
        """Seconds from spawning to ready (for reports and benchmarks)."""
        return max(0.0, self._ready_at - self._started_at)
