"""The examples in examples/ (Qpid Proton's python examples, written for amqscale), each run
as a program against a real peer, its output checked.

Each example runs as a subprocess (`sys.executable`, this tree on PYTHONPATH) in its own
process group, with a bounded wait; it is stopped by its pid (its group: its workers too).
The peers: amqscale's own blocking listener, the Proton C broker, RabbitMQ, the spec broker
(tests/peers/spec_broker.py: selectors, browsing, dynamic nodes, the anonymous relay,
transactions), the examples' own listening programs (direct_*, server_direct) and
examples/broker.py.

Most examples use the event-driven face (`amqscale.handlers`, `amqscale.reactor`): they are
its acceptance tests and fail while it is missing. The asyncio twins skip while
`amqscale.aio` cannot be imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import amqscale
from amqscale.testing._process import free_port
from amqscale.testing.brokers import SpecBroker

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RUN_TIMEOUT = 60.0  # one example program, start to exit
START_TIMEOUT = 30.0  # a listening example, until its port accepts connections

pytestmark = pytest.mark.timeout(240)

SEQUENCE = [f"{{'sequence': {i}}}" for i in range(1, 101)]
REQUESTS = [
    "Twas brillig, and the slithy toves",
    "Did gire and gymble in the wabe.",
    "All mimsy were the borogroves,",
    "And the mome raths outgrabe.",
]
RESPONSES = [f"{r} => {r.upper()}" for r in REQUESTS]


# ---- running examples -------------------------------------------------------------------


class Example:
    """One example program running in its own process group, its output collected."""

    def __init__(self, name: str, *args: str, cwd: Path, stdin: bool = False) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            cwd=cwd, env=env, text=True, start_new_session=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        """stdout, one stripped line each, as proton's own example test compares it."""
        return [line.strip() for line in self.out]

    def describe(self) -> str:
        rc = self.proc.returncode
        return (f"{self.name} (exit {rc}):\n--- stdout\n" + "\n".join(self.out)
                + "\n--- stderr\n" + "\n".join(self.err[-40:]))

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait_for(self, predicate: Callable[[list[str]], bool],
                 timeout: float = RUN_TIMEOUT, stderr: bool = False) -> None:
        """Until `predicate(stdout lines)` (or of stderr's) holds; fails if the program
        ends first."""
        def lines() -> list[str]:
            return [line.strip() for line in self.err] if stderr else self.lines

        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(lines()):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    break
                self._changed.wait(min(left, 0.2))
        if not predicate(lines()):
            ended = self.proc.poll() is not None
            self.kill()
            pytest.fail(("ended" if ended else f"still running after {timeout} s")
                        + f" without the output expected\n{self.describe()}")

    def _reading(self) -> bool:
        return any(r.is_alive() for r in self._readers)

    def wait(self, timeout: float = RUN_TIMEOUT, rc: int | None = 0) -> Example:
        """Until it exits (killed and failed after `timeout`); checks its exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s\n{self.describe()}")
        for reader in self._readers:
            reader.join(10)
        if rc is not None and self.proc.returncode != rc:
            pytest.fail(f"exit code {self.proc.returncode}, expected {rc}\n{self.describe()}")
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # its own group: the example and its workers

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def interrupt(self, timeout: float = 15.0) -> Example:
        """Ctrl-C, as a user would stop it; killed if it does not end in time."""
        self.signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for reader in self._readers:
            reader.join(10)
        return self


class Examples:
    """Starts examples for one test and stops what is left of them afterwards."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: list[Example] = []

    def start(self, name: str, *args: str, stdin: bool = False) -> Example:
        example = Example(name, *args, cwd=self.cwd, stdin=stdin)
        self.running.append(example)
        return example

    def run(self, name: str, *args: str, timeout: float = RUN_TIMEOUT,
            rc: int | None = 0) -> Example:
        return self.start(name, *args).wait(timeout, rc)

    def listening(self, name: str, port: int, *args: str) -> Example:
        """Start a listening example and wait until its port takes connections."""
        example = self.start(name, *args)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return example
            if example.proc.poll() is not None:
                example.wait(rc=None)
                pytest.fail(f"{name} ended before listening on {port}\n{example.describe()}")
            if time.monotonic() > deadline:
                example.kill()
                pytest.fail(f"{name} not listening on {port} after {START_TIMEOUT} s\n"
                            f"{example.describe()}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for example in self.running:
            if example.proc.poll() is None:
                example.interrupt(timeout=5)
            for stream in (example.proc.stdin, example.proc.stdout, example.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[Examples]:
    runner = Examples(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


def hostport(url: str) -> str:
    """'amqp://127.0.0.1:5672' -> '127.0.0.1:5672', as proton's examples are given it."""
    return url.split("://", 1)[-1]


# ---- the peers --------------------------------------------------------------------------


@pytest.fixture
def example_broker(examples: Examples) -> str:
    """examples/broker.py, listening on a free loopback port: its host:port."""
    port = free_port(("127.0.0.1",))
    examples.listening("broker", port, "-a", f"127.0.0.1:{port}")
    return f"127.0.0.1:{port}"


BROKERS = ["proton_c", "rabbitmq", "example_broker"]
RELAY_BROKERS = ["spec_broker", "example_broker"]  # dynamic nodes and ANONYMOUS-RELAY


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """A broker's host:port: the Proton C broker, RabbitMQ, then examples/broker.py (or
    the spec broker, for RELAY_BROKERS)."""
    if request.param == "proton_c":
        return hostport(request.getfixturevalue("proton_c_broker").url)
    if request.param == "rabbitmq":
        return hostport(request.getfixturevalue("rabbitmq").url)
    if request.param == "spec_broker":
        return hostport(request.getfixturevalue("spec_broker").url)
    return str(request.getfixturevalue("example_broker"))


@pytest.fixture
def proton_c(proton_c_broker: object) -> str:
    return hostport(proton_c_broker.url)  # type: ignore[attr-defined]


@pytest.fixture
def spec(spec_broker: SpecBroker) -> str:
    """The spec broker's host:port (a session's: tests use their own addresses)."""
    return hostport(spec_broker.url)


def aio() -> None:
    """Skip while the asyncio face is not there (it is being built); one that is there but
    fails to import fails the test."""
    pytest.importorskip("amqscale.aio", exc_type=ModuleNotFoundError,
                        reason="amqscale.aio (the asyncio face) is not merged yet")


# ---- hello world ------------------------------------------------------------------------


def test_helloworld(examples: Examples, broker: str, unique_name: str) -> None:
    hello = examples.run("helloworld", "-a", f"{broker}/{unique_name}")
    assert hello.lines == ["Hello World!"]


def test_helloworld_blocking(examples: Examples, broker: str, unique_name: str) -> None:
    hello = examples.run("helloworld_blocking", "-a", f"{broker}/{unique_name}")
    assert hello.lines == ["Hello World!"]


def test_helloworld_direct(examples: Examples) -> None:
    port = free_port(("127.0.0.1",))
    hello = examples.run("helloworld_direct", "-a", f"127.0.0.1:{port}/examples")
    assert hello.lines == ["Hello World!"]


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_helloworld_async(examples: Examples, broker: str, unique_name: str) -> None:
    aio()
    hello = examples.run("helloworld_async", "-a", f"{broker}/{unique_name}")
    assert hello.lines == ["Hello World!"]


# ---- simple and direct send/receive -----------------------------------------------------


def test_simple_send_recv(examples: Examples, broker: str, unique_name: str) -> None:
    address = f"{broker}/{unique_name}"
    recv = examples.start("simple_recv", "-a", address)
    send = examples.run("simple_send", "-a", address)
    assert send.lines == ["all messages confirmed"]
    assert recv.wait().lines == SEQUENCE


def test_simple_recv_accepts_the_last_message(examples: Examples, rabbitmq: object,
                                              unique_name: str) -> None:
    """simple_recv closes its link and connection inside on_message of its last message;
    that message is still accepted (auto_accept, as in proton: the disposition goes out
    before the detach), so nothing is left on the queue."""
    address = f"{hostport(rabbitmq.url)}/{unique_name}"  # type: ignore[attr-defined]
    examples.run("simple_send", "-a", address, "-m", "5")
    assert examples.run("simple_recv", "-a", address, "-m", "5").lines == SEQUENCE[:5]
    assert rabbitmq.list_queues().get(unique_name) == 0  # type: ignore[attr-defined]


def test_simple_send_to_amqscale_listener(examples: Examples) -> None:
    """simple_send against amqscale's blocking listener: every message, in order, with
    its id, and all confirmed."""
    with amqscale.Container(workers=1) as container:
        listener = container.listen("amqp://127.0.0.1:0")
        send = examples.start("simple_send", "-a", f"127.0.0.1:{listener.port}/examples",
                              "-m", "100")
        got: list[tuple[object, object]] = []
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(got) < 100:
            if send.proc.poll() is not None:
                send.wait(rc=None)
                pytest.fail(f"simple_send ended after {len(got)} messages\n{send.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{len(got)} of 100 messages in {RUN_TIMEOUT} s\n{send.describe()}")
            with contextlib.suppress(TimeoutError):
                delivery = listener.receiver.receive(timeout=0.5)
                got.append((delivery.message.id, delivery.message.body))
                delivery.accept()
        assert send.wait().lines == ["all messages confirmed"]
    assert got == [(i, {"sequence": i}) for i in range(1, 101)]


def test_simple_send_direct_recv(examples: Examples) -> None:
    port = free_port(("127.0.0.1",))
    recv = examples.listening("direct_recv", port, "-a", f"127.0.0.1:{port}")
    send = examples.run("simple_send", "-a", f"127.0.0.1:{port}")
    assert send.lines == ["all messages confirmed"]
    assert recv.wait().lines == SEQUENCE


def test_direct_send_simple_recv(examples: Examples) -> None:
    port = free_port(("127.0.0.1",))
    send = examples.listening("direct_send", port, "-a", f"127.0.0.1:{port}")
    recv = examples.run("simple_recv", "-a", f"127.0.0.1:{port}")
    assert recv.lines == SEQUENCE
    assert send.wait().lines == ["all messages confirmed"]


def test_direct_recv_from_amqscale_sender(examples: Examples) -> None:
    """direct_recv fed by amqscale's blocking sender: not only by another example."""
    port = free_port(("127.0.0.1",))
    recv = examples.listening("direct_recv", port, "-a", f"127.0.0.1:{port}", "-m", "10")
    with amqscale.Container(workers=1) as container:
        conn = container.connect(f"amqp://127.0.0.1:{port}")
        sender = conn.open_sender("examples")
        trackers = [sender.send(amqscale.Message(id=i, body={"sequence": i}))
                    for i in range(1, 11)]
        sender.flush(timeout=RUN_TIMEOUT)
        assert [t.outcome for t in trackers] == ["accepted"] * 10
        assert recv.wait().lines == SEQUENCE[:10]


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_simple_send_recv_async(examples: Examples, broker: str, unique_name: str) -> None:
    aio()
    address = f"{broker}/{unique_name}"
    recv = examples.start("simple_recv_async", "-a", address)
    send = examples.run("simple_send_async", "-a", address)
    assert send.lines == ["all messages confirmed"]
    assert recv.wait().lines == SEQUENCE


# ---- colours, selectors, browsing -------------------------------------------------------


def test_colour_send(examples: Examples, proton_c: str, unique_name: str) -> None:
    address = f"{proton_c}/{unique_name}"
    assert examples.run("colour_send", "-a", address).lines == ["all messages confirmed"]
    colours = [f"{'green' if i % 2 else 'red'} {i}" for i in range(1, 101)]
    assert examples.run("simple_recv", "-a", address).lines == colours


def test_selected_recv(examples: Examples, spec_broker: SpecBroker, spec: str,
                       unique_name: str) -> None:
    """The spec broker applies the selector: selected_recv gets the green ones, in order,
    and the red ones stay on the queue for simple_recv."""
    address = f"{spec}/{unique_name}"
    examples.run("colour_send", "-a", address)
    green = examples.run("selected_recv", "-a", address, "-m", "50")
    assert green.lines == [f"green {i}" for i in range(1, 101, 2)]
    assert spec_broker.stats()["queues"].get(unique_name) == 50
    red = examples.run("simple_recv", "-a", address, "-m", "50")
    assert red.lines == [f"red {i}" for i in range(2, 101, 2)]
    assert spec_broker.stats()["queues"].get(unique_name) == 0


def test_queue_browser(examples: Examples, spec_broker: SpecBroker, spec: str,
                       unique_name: str) -> None:
    """The spec broker browses (distribution mode copy): queue_browser prints every
    message, in order, and leaves them all there."""
    address = f"{spec}/{unique_name}"
    examples.run("simple_send", "-a", address, "-m", "10")
    browsed = examples.run("queue_browser", "-a", address, "-t", "2")
    assert len(browsed.lines) == 10, browsed.describe()
    for line, sequence in zip(browsed.lines, SEQUENCE[:10], strict=True):
        assert line.startswith("Message(") and sequence in line, browsed.describe()
    assert spec_broker.stats()["queues"].get(unique_name) == 10
    assert examples.run("simple_recv", "-a", address, "-m", "10").lines == SEQUENCE[:10]


# ---- request/response -------------------------------------------------------------------

def run_beside(examples: Examples, server: Example, name: str, *args: str,
               timeout: float = RUN_TIMEOUT) -> Example:
    """Run example `name` to its end (exit 0) while `server` runs: fails at once, with
    both outputs, if the server ends first."""
    client = examples.start(name, *args)
    deadline = time.monotonic() + timeout
    while client.proc.poll() is None and time.monotonic() < deadline:
        if server.proc.poll() is not None:
            client.kill()
            server.wait(rc=None)
            pytest.fail(f"{server.name} ended while {name} ran\n{server.describe()}\n"
                        f"{client.describe()}")
        time.sleep(0.1)
    return client.wait(max(deadline - time.monotonic(), 0.1))


def assert_served(server: Example) -> None:
    """The server printed each request it received, in order, and ended cleanly."""
    received = [x for x in server.lines if x.startswith("Received")]
    assert len(received) == len(REQUESTS), server.describe()
    for line, request in zip(received, REQUESTS, strict=True):
        assert request in line, server.describe()
    assert server.proc.returncode == 0, server.describe()


@pytest.mark.parametrize("broker", RELAY_BROKERS, indirect=True)
def test_client_server(examples: Examples, broker: str, unique_name: str) -> None:
    """client.py's dynamic reply queue and server.py's anonymous relay, through the spec
    broker and through examples/broker.py (amqscale's listener makes both)."""
    address = f"{broker}/{unique_name}"
    server = examples.start("server", "-a", address)
    server.wait_for(lambda lines: any(x.startswith("Listening on") for x in lines))
    client = run_beside(examples, server, "client", "-a", address)
    assert client.lines == RESPONSES
    assert_served(server.interrupt())


def test_server_refuses_broker_without_relay(examples: Examples, proton_c: str) -> None:
    """server.py needs ANONYMOUS-RELAY; the Proton C broker does not offer it: it says so
    and exits 1."""
    server = examples.run("server", "-a", f"{proton_c}/examples", rc=1)
    assert server.lines == [f"Listening on {proton_c}/examples"]
    assert server.err == ["Server needs a broker which supports ANONYMOUS-RELAY"], \
        server.describe()


def test_client_server_direct(examples: Examples) -> None:
    port = free_port(("127.0.0.1",))
    server = examples.listening("server_direct", port, "-a", f"127.0.0.1:{port}")
    client = run_beside(examples, server, "client", "-a", f"127.0.0.1:{port}/examples")
    assert client.lines == RESPONSES
    assert_served(server.interrupt())


def test_sync_client_server_direct(examples: Examples) -> None:
    port = free_port(("127.0.0.1",))
    server = examples.listening("server_direct", port, "-a", f"127.0.0.1:{port}")
    client = run_beside(examples, server, "sync_client", "-a", f"127.0.0.1:{port}/examples")
    assert client.lines == RESPONSES
    assert_served(server.interrupt())


@pytest.mark.parametrize("broker", RELAY_BROKERS, indirect=True)
def test_client_server_async(examples: Examples, broker: str, unique_name: str) -> None:
    aio()
    address = f"{broker}/{unique_name}"
    server = examples.start("server_async", "-a", address)
    server.wait_for(lambda lines: any(x.startswith("Listening on") for x in lines))
    client = run_beside(examples, server, "client_async", "-a", address)
    assert client.lines == RESPONSES
    assert_served(server.interrupt())


# ---- transactions -----------------------------------------------------------------------
# The spec broker has local transactions; RabbitMQ 3.10 refuses a coordinator link
# (not-implemented): the examples say so and exit 1 rather than wait for ever.


def test_client_server_tx(examples: Examples, spec_broker: SpecBroker, spec: str,
                          unique_name: str) -> None:
    address = f"{spec}/{unique_name}"
    before = spec_broker.stats()["transactions"]
    server = examples.start("server_tx", "-a", address)
    client = run_beside(examples, server, "client", "-a", address)
    assert client.lines == RESPONSES
    server.wait_for(lambda lines: lines.count("Request processed successfully") == 4)
    server.interrupt()
    assert server.lines == ["Request processed successfully"] * len(REQUESTS)
    stats = spec_broker.stats()
    assert stats["transactions"]["committed"] - before["committed"] == len(REQUESTS)
    assert stats["queues"].get(unique_name) == 0  # each request accepted by its commit


def test_tx_send_tx_recv(examples: Examples, spec_broker: SpecBroker, spec: str,
                         unique_name: str) -> None:
    address = f"{spec}/{unique_name}"
    before = spec_broker.stats()["transactions"]
    recv = examples.start("tx_recv", "-a", address)
    send = examples.run("tx_send", "-a", address)
    assert send.lines == ["all messages committed"]
    assert recv.wait().lines == SEQUENCE
    stats = spec_broker.stats()
    # ten batches of ten each way
    assert stats["transactions"]["committed"] - before["committed"] == 20
    assert stats["queues"].get(unique_name) == 0


def test_tx_recv_interactive(examples: Examples, spec_broker: SpecBroker, spec: str,
                             unique_name: str) -> None:
    address = f"{spec}/{unique_name}"
    examples.run("simple_send", "-a", address, "-m", "2")
    recv = examples.start("tx_recv_interactive", "-a", address, stdin=True)
    recv.wait_for(lambda lines: "transaction declared" in lines)
    recv.write("fetch\n")
    recv.wait_for(lambda lines: SEQUENCE[0] in lines)
    recv.write("abort\n")
    recv.wait_for(lambda lines: "transaction aborted" in lines)
    recv.wait_for(lambda lines: lines.count("transaction declared") == 2)
    recv.write("fetch\n")  # the aborted one again: its acceptance was undone
    recv.wait_for(lambda lines: lines.count(SEQUENCE[0]) == 2)
    recv.write("commit\n")
    recv.wait_for(lambda lines: "transaction committed" in lines)
    recv.wait_for(lambda lines: lines.count("transaction declared") == 3)
    recv.write("quit\n")
    recv.wait()
    assert recv.lines == [
        "Enter 'fetch', 'commit', 'abort' or 'quit'", "transaction declared",
        SEQUENCE[0], "transaction aborted", "transaction declared",
        SEQUENCE[0], "transaction committed", "transaction declared"]
    assert examples.run("simple_recv", "-a", address, "-m", "1").lines == SEQUENCE[1:2]


def assert_declare_refused(example: Example) -> None:
    """The example said the declare failed, and why (RabbitMQ's not-implemented)."""
    err = "\n".join(example.err)
    assert "transaction declare failed" in err and "not-implemented" in err, \
        example.describe()
    assert "Traceback" not in err, example.describe()


@pytest.mark.parametrize("name", ["tx_send", "tx_recv"])
def test_tx_refused_by_rabbitmq(examples: Examples, rabbitmq: object, unique_name: str,
                                name: str) -> None:
    """RabbitMQ 3.10 has no transactions: tx_send and tx_recv fail at once, saying so."""
    address = f"{hostport(rabbitmq.url)}/{unique_name}"  # type: ignore[attr-defined]
    example = examples.run(name, "-a", address, rc=1, timeout=30)
    assert example.lines == []
    assert_declare_refused(example)


def test_server_tx_refused_by_rabbitmq(examples: Examples, rabbitmq: object,
                                       unique_name: str) -> None:
    """server_tx declares a transaction per request: against RabbitMQ 3.10 the first one
    fails, it says so and exits 1; the request stays on the queue."""
    url = rabbitmq.url  # type: ignore[attr-defined]
    server = examples.start("server_tx", "-a", f"{hostport(url)}/{unique_name}")
    with amqscale.Container(workers=1) as container:
        conn = container.connect(url)
        sender = conn.open_sender(unique_name)
        sender.send(amqscale.Message(reply_to=f"{unique_name}-replies",
                                     body=REQUESTS[0])).wait(timeout=RUN_TIMEOUT)
        conn.close()
    server.wait(timeout=30, rc=1)
    assert server.lines == []
    assert_declare_refused(server)
    assert rabbitmq.list_queues().get(unique_name) == 1  # type: ignore[attr-defined]


def test_tx_recv_interactive_refused_by_rabbitmq(examples: Examples, rabbitmq: object,
                                                 unique_name: str) -> None:
    """tx_recv_interactive against RabbitMQ 3.10: the declare fails at once, it says so,
    and 'quit' exits 1."""
    address = f"{hostport(rabbitmq.url)}/{unique_name}"  # type: ignore[attr-defined]
    recv = examples.start("tx_recv_interactive", "-a", address, stdin=True)
    recv.wait_for(lambda lines: any("transaction declare failed" in x for x in lines),
                  timeout=30, stderr=True)
    recv.write("quit\n")
    recv.wait(timeout=30, rc=1)
    assert recv.lines == ["Enter 'fetch', 'commit', 'abort' or 'quit'"]
    assert_declare_refused(recv)


# ---- sqlite -----------------------------------------------------------------------------


def fill_db(examples: Examples, db: str, lines: list[str]) -> None:
    examples.run("db_ctrl", "init", db)
    fill = examples.start("db_ctrl", "insert", db, stdin=True)
    assert fill.proc.stdin is not None
    fill.proc.stdin.write("".join(f"{line}\n" for line in lines))
    fill.proc.stdin.close()
    fill.wait()


def test_db_ctrl(examples: Examples) -> None:
    fill_db(examples, "./src_db", ["one", "two"])
    assert examples.run("db_ctrl", "list", "./src_db").lines == ["(1, 'one')", "(2, 'two')"]
    assert examples.run("db_ctrl", "frobnicate", "./src_db", rc=1).lines == [
        "Unrecognised command: frobnicate"]


def test_db_send_recv(examples: Examples, proton_c: str, unique_name: str) -> None:
    address = f"{proton_c}/{unique_name}"
    fill_db(examples, "./src_db", [f"Message-{i}" for i in range(1, 101)])
    examples.run("db_ctrl", "init", "./dst_db")
    recv = examples.start("db_recv", "-a", address, "-m", "100")
    send = examples.run("db_send", "-a", address, "-m", "100")
    settled = sorted(int(x.split()[-1]) for x in send.lines if x.startswith("settled message"))
    assert settled == list(range(1, 101))
    assert recv.wait().lines == [f"inserted message {i}" for i in range(1, 101)]
    assert examples.run("db_ctrl", "list", "./dst_db").lines == [
        f"({i}, 'Message-{i}')" for i in range(1, 101)]
    assert examples.run("db_ctrl", "list", "./src_db").lines == []  # each deleted once settled


# ---- timers and the broker --------------------------------------------------------------


def test_recurring_timer(examples: Examples) -> None:
    timer = examples.start("recurring_timer")
    timer.wait_for(lambda lines: lines.count("Tick...") >= 2, timeout=30)
    timer.interrupt()
    assert timer.proc.returncode == 0, timer.describe()


def test_broker_with_amqscale_clients(examples: Examples, example_broker: str,
                                      unique_name: str) -> None:
    """examples/broker.py queues for amqscale's blocking clients (not only for examples):
    what is sent before a consumer comes waits, in order, and each message goes once."""
    with amqscale.Container(workers=1) as container:
        conn = container.connect(f"amqp://{example_broker}")
        sender = conn.open_sender(unique_name)
        for i in range(1, 21):
            sender.send(amqscale.Message(id=i, body=f"m{i}"))
        sender.flush(timeout=RUN_TIMEOUT)
        receiver = conn.open_receiver(unique_name, credit=5)
        got = []
        for _ in range(20):
            delivery = receiver.receive(timeout=RUN_TIMEOUT)
            got.append(delivery.message.body)
            delivery.accept()
        assert got == [f"m{i}" for i in range(1, 21)]
        with pytest.raises(TimeoutError):
            receiver.receive(timeout=0.5)
        conn.close()
