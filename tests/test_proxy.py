"""FaultProxy (amqscale.testing.proxy) over real loopback sockets, with an echo server as the
upstream: no AMQP peer is needed. Every socket has a timeout and every wait a deadline."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from amqscale.testing import FaultProxy
from amqscale.testing._process import free_port

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0
NOT_YET = 0.2  # how long "nothing has arrived" is checked for


class EchoServer:
    """A loopback echo server on its own threads; records per connection what it received
    and how the connection ended ("eof", "reset" or "error")."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.listener.settimeout(0.1)
        self.address = (host, self.listener.getsockname()[1])
        self.received: list[bytearray] = []
        self.endings: list[str | None] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = len(self.received)
                self.received.append(bytearray())
                self.endings.append(None)
                self._conns.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(TIMEOUT * 2)
        ending = "error"
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    ending = "eof"
                    break
                self.received[index] += data
                conn.sendall(data)
        except ConnectionResetError:
            ending = "reset"
        except OSError:
            pass
        finally:
            conn.close()
            self.endings[index] = ending

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):  # shutdown wakes a blocked recv; close doesn't
                conn.shutdown(socket.SHUT_RDWR)
        for thread in [self._acceptor, *threads]:
            thread.join(TIMEOUT)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def roundtrip(sock: socket.socket, data: bytes = b"ping") -> None:
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything `sock` still delivers, and how it ended: "eof" or "reset"."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return bytes(data), "reset"
    return bytes(data), "eof"


def send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # a cut may reset the connection before the end
        sock.sendall(data)


def nothing_arrives(sock: socket.socket, within: float = NOT_YET) -> bool:
    readable, _, _ = select.select([sock], [], [], within)
    return not readable


def proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("FaultProxy-")]


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=echo.address) as p:
        yield p


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1 here")),
    ],
)
def test_forwards_large_data_both_ways(echo: EchoServer, host: str) -> None:
    payload = random.Random(7).randbytes(5 * 1024 * 1024)
    with FaultProxy(upstream=echo.address, host=host) as proxy:
        assert proxy.url == (
            f"amqp://[::1]:{proxy.port}" if host == "::1" else f"amqp://127.0.0.1:{proxy.port}"
        )
        with socket.create_connection((host, proxy.port), timeout=TIMEOUT) as client:

            def send() -> None:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)  # the FIN travels through the proxy too

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            echoed, ending = read_to_end(client)
            sender.join(TIMEOUT)
        assert ending == "eof"
        assert len(echoed) == len(payload) and echoed == payload
        assert echo.received[0] == payload
        stats = proxy.stats
        assert stats["accepted"] == 1
        assert stats["bytes_upstream"] == stats["bytes_downstream"] == len(payload)
        wait_for(lambda: proxy.stats["active"] == 0)


def test_drop_gives_the_client_eof(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        roundtrip(client)
        assert proxy.drop() == 1
        assert client.recv(1) == b""
    wait_for(lambda: echo.endings[0] is not None)
    assert echo.endings[0] == "eof"
    assert proxy.stats["faults"]["drop"] == 1
    assert proxy.stats["active"] == 0


def test_reset_gives_the_client_econnreset(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as client:
        roundtrip(client)
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    wait_for(lambda: echo.endings[0] is not None)
    assert echo.endings[0] == "reset"
    assert proxy.stats["faults"]["reset"] == 1


def test_stall_holds_bytes_until_resume(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        roundtrip(old)
        assert proxy.stall() == 1
        old.sendall(b"a" * 1000)
        with connect(proxy) as new:  # accepted while stalled, and stalled too
            new.sendall(b"b" * 1000)
            assert nothing_arrives(old) and nothing_arrives(new)
            assert proxy.stats["active"] == 2
            proxy.resume()
            assert recv_exactly(old, 1000) == b"a" * 1000
            assert recv_exactly(new, 1000) == b"b" * 1000
            roundtrip(new)
    assert proxy.stats["faults"]["stall"] == 1


def test_cut_after_downstream_delivers_exactly_n_then_resets(proxy: FaultProxy) -> None:
    payload = random.Random(3).randbytes(300_000)
    with connect(proxy) as client:
        roundtrip(client)
        assert proxy.cut_after(100_001, "downstream") == 1
        sender = threading.Thread(target=lambda: send_quietly(client, payload), daemon=True)
        sender.start()
        received, ending = read_to_end(client)
        sender.join(TIMEOUT)
    assert ending == "reset"
    assert received == payload[:100_001]
    assert proxy.stats["faults"]["cut"] == 1


def test_cut_after_upstream_delivers_exactly_n_then_resets(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as client:
        roundtrip(client)
        proxy.cut_after(777)
        send_quietly(client, b"z" * 10_000)
        _, ending = read_to_end(client)
    assert ending == "reset"
    wait_for(lambda: echo.endings[0] is not None)
    assert echo.endings[0] == "reset"
    assert bytes(echo.received[0]) == b"ping" + b"z" * 777


def test_cut_after_zero_resets_at_once(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        roundtrip(client)
        proxy.cut_after(0, "both")
        assert read_to_end(client) == (b"", "reset")


def test_refuse_closes_new_connections_and_keeps_old_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        roundtrip(old)
        proxy.refuse(True)
        with connect(proxy) as refused:  # the kernel accepts; the proxy closes at once
            assert read_to_end(refused)[0] == b""
        roundtrip(old)
        proxy.refuse(False)
        with connect(proxy) as new:
            roundtrip(new)
    stats = proxy.stats
    assert stats["accepted"] == 3 and stats["refused"] == 1


def test_upstream_refusing_closes_the_client_at_once() -> None:
    with FaultProxy(upstream=("127.0.0.1", free_port(("127.0.0.1",)))) as proxy:
        with connect(proxy) as client:
            assert read_to_end(client)[0] == b""
        wait_for(lambda: proxy.stats["upstream_failed"] == 1)
        assert proxy.stats["active"] == 0


def test_random_faults_are_counted_and_never_kill_the_thread(proxy: FaultProxy) -> None:
    proxy.random_faults(seed=11, rate_per_s=40.0, stall_time=(0.01, 0.1))
    deadline = time.monotonic() + 1.5
    roundtrips = 0
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((proxy.host, proxy.port), timeout=0.3) as client:
                for _ in range(20):
                    roundtrip(client, b"x" * 5000)
                    roundtrips += 1
        except (OSError, AssertionError):  # the faults at work: timeouts, resets, EOFs
            pass
    proxy.stop_random()
    proxy.resume()
    stats = proxy.stats
    assert stats["random_faults"] > 0
    assert sum(stats["faults"].values()) == stats["random_faults"]
    assert proxy_threads() == [f"FaultProxy-{proxy.port}"]
    with connect(proxy) as client:  # still forwarding once the chaos ends
        roundtrip(client)


def test_random_faults_check_their_arguments(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="kinds"):
        proxy.random_faults(1, 1.0, kinds=("explode",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate_per_s"):
        proxy.random_faults(1, 0.0)
    with pytest.raises(ValueError, match="direction"):
        proxy.cut_after(1, "sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("upstream", "host"),
    [
        (("10.1.2.3", 5672), "127.0.0.1"),
        (("example.com", 5672), "127.0.0.1"),
        (("0.0.0.0", 5672), "127.0.0.1"),
        (("127.0.0.1", 5672), "0.0.0.0"),
    ],
)
def test_refuses_addresses_off_loopback(upstream: tuple[str, int], host: str) -> None:
    bad = host if upstream[0] == "127.0.0.1" else upstream[0]
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        FaultProxy(upstream=upstream, host=host)


def test_close_is_idempotent_and_leaves_no_thread(echo: EchoServer) -> None:
    proxy = FaultProxy(upstream=echo.address)
    assert proxy.stats["accepted"] == 0
    with pytest.raises(RuntimeError):
        _ = proxy.port
    proxy.start()
    with connect(proxy) as client:
        roundtrip(client)
        assert proxy_threads() == [f"FaultProxy-{proxy.port}"]
        proxy.close()
        proxy.close()
        assert client.recv(1) == b""
    assert proxy_threads() == []
    assert proxy.stats["accepted"] == 1 and proxy.stats["active"] == 0
    with pytest.raises(RuntimeError):
        proxy.drop()
    with pytest.raises(RuntimeError):
        proxy.start()
