"""proton-python peers that watch amqscale from the other end of the wire.

Each runs proton's own reactor (MessagingHandler) in a thread of the test process, or, to
be killed, in a process of its own (`python tests/proton_peers.py sink PORT`, or
`pair URL ADDRESS`). They record
what they see (credit granted, transfers, dispositions) so that a test can check amqscale's
promises with an observer that shares no code with it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from proton import Condition, Delivery, Endpoint, Message
from proton.handlers import MessagingHandler
from proton.reactor import AtMostOnce, Container

from amqscale.testing._process import free_port

TICK = 0.02  # seconds between the peer's looks at its links


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready()` (the peer's thread changes what it reads) until true."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


_STATES = {Delivery.ACCEPTED: "accepted", Delivery.REJECTED: "rejected",
           Delivery.RELEASED: "released", Delivery.MODIFIED: "modified"}


_P = TypeVar("_P", bound="_Peer")


class _Peer(MessagingHandler):
    """A reactor in a thread; `stop()` ends it at its next tick."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stopping = False
        self._stop_by = 0.0
        self._thread: threading.Thread | None = None
        self.acceptor: Any = None
        self.connections: list[Any] = []
        self.error: BaseException | None = None
        self.started = threading.Event()

    def start(self: _P) -> _P:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=type(self).__name__)
        self._thread.start()
        if not self.started.wait(30):
            raise TimeoutError(f"{type(self).__name__} did not start")
        return self

    def _run(self) -> None:
        try:
            Container(self).run()
        except BaseException as exc:  # the test sees it in .error
            self.error = exc
            self.started.set()

    def on_start(self, event: Any) -> None:
        self.begin(event.container)
        event.container.schedule(TICK, self)
        self.started.set()

    def begin(self, container: Any) -> None:
        raise NotImplementedError

    def on_connection_opened(self, event: Any) -> None:
        self.connections.append(event.connection)

    def on_timer_task(self, event: Any) -> None:
        if self._stopping:
            # Close cleanly first (proton's stop() alone leaves the sockets open).
            if not self._stop_by:
                self._stop_by = time.monotonic() + 3
                if self.acceptor is not None:
                    self.acceptor.close()
                for conn in self.connections:
                    if not conn.state & Endpoint.LOCAL_CLOSED:
                        conn.close()
            if time.monotonic() > self._stop_by or all(
                    c.state & Endpoint.REMOTE_CLOSED for c in self.connections):
                event.container.stop()
                return
            event.container.schedule(TICK, self)
            return
        self.tick()
        event.container.schedule(TICK, self)

    def tick(self) -> None:
        pass

    def stop(self) -> None:
        """End the reactor; raises what failed in the peer's own code, if anything did."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(10)
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"the {type(self).__name__} peer failed") from error

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def mirror(link: Any) -> None:
        """Answer a remote attach with the same termini (proton leaves ours null)."""
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)


class _Listening(_Peer):
    """A peer that listens on 127.0.0.1:`port` (set by the subclass)."""

    port: int

    @property
    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.port}"

    def begin(self, container: Any) -> None:
        self.acceptor = container.listen(f"127.0.0.1:{self.port}")


class Source(_Listening):
    """Listens; offers `count` messages (id i, body `body`) to each receiver that attaches.

    Records every credit value it sees on the link (`credit_seen`), how many it sent
    (`sent`), each message's outcome by id (`outcomes`), and whether the link was closed.
    """

    def __init__(self, count: int, body: bytes = b"x", port: int | None = None,
                 close_with: str | None = None) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.count = count
        # Detach once every message is settled: "" cleanly, else with this condition.
        self.close_with = close_with
        self.body = body
        self.port = port or free_port()
        self.sent = 0
        self.credit_seen: list[int] = []
        self.outcomes: dict[int, str] = {}
        self.link_closed = False
        self._link: Any = None

    def on_link_opening(self, event: Any) -> None:
        self.mirror(event.link)
        if event.link.is_sender:
            self._link = event.link

    def on_sendable(self, event: Any) -> None:
        self._look()

    def tick(self) -> None:
        self._look()

    def _look(self) -> None:
        link = self._link
        if link is None or link.state & Endpoint.LOCAL_CLOSED:
            return
        self.credit_seen.append(link.credit)
        while link.credit > 0 and self.sent < self.count:
            delivery = link.send(Message(id=self.sent, body=self.body))
            delivery.tag_id = self.sent
            self.sent += 1

    def _outcome(self, event: Any) -> None:
        delivery = event.delivery
        self.outcomes[delivery.tag_id] = _STATES.get(delivery.remote_state, "?")
        if self.close_with is not None and len(self.outcomes) == self.count:
            if self.close_with:
                event.link.condition = Condition(self.close_with, "closed by the test")
            event.link.close()

    on_accepted = on_rejected = on_released = on_modified = _outcome

    def on_link_closing(self, event: Any) -> None:
        self.link_closed = True

    def on_link_closed(self, event: Any) -> None:
        self.link_closed = True


class Sink(_Listening):
    """Listens; grants `credit` to each sender that attaches and never settles (unless
    `accept`). Records each message it got (`messages`, in order of arrival)."""

    def __init__(self, credit: int = 1000, accept: bool | Callable[[Message], bool] = False,
                 port: int | None = None, max_message_size: int = 0) -> None:
        super().__init__(prefetch=0, auto_accept=False)
        self.credit = credit
        self.max_message_size = max_message_size  # announced in the attach; 0: none
        # True: accept every message; a callable: accept those it says yes to.
        self.accept_if = accept if callable(accept) else (lambda message: accept)
        self.port = port or free_port()
        self.messages: list[Message] = []
        self.links_opened = 0

    def on_link_opening(self, event: Any) -> None:
        self.mirror(event.link)
        if event.link.is_receiver:
            self.links_opened += 1
            if self.max_message_size:
                event.link.max_message_size = self.max_message_size
            event.link.flow(self.credit)

    def on_message(self, event: Any) -> None:
        self.messages.append(event.message)
        if self.accept_if(event.message):
            self.accept(event.delivery)


class ClientSender(_Peer):
    """Connects to `url` and sends `count` messages to `address` as credit allows.

    Records every credit value it sees (`credit_seen`), how many it sent (`sent`) and
    each outcome by id (`outcomes`).
    """

    def __init__(self, url: str, address: str, count: int) -> None:
        super().__init__(auto_settle=True)
        self.target_url = url
        self.address = address
        self.count = count
        self.sent = 0
        self.credit_seen: list[int] = []
        self.outcomes: dict[int, str] = {}
        self._link: Any = None

    def begin(self, container: Any) -> None:
        self._link = container.create_sender(self.target_url, self.address)

    def on_sendable(self, event: Any) -> None:
        self._look()

    def tick(self) -> None:
        self._look()

    def _look(self) -> None:
        link = self._link
        if link is None or not link.state & Endpoint.REMOTE_ACTIVE:
            return
        self.credit_seen.append(link.credit)
        while link.credit > 0 and self.sent < self.count:
            delivery = link.send(Message(id=self.sent, body=b"from proton"))
            delivery.tag_id = self.sent
            self.sent += 1

    def _outcome(self, event: Any) -> None:
        self.outcomes[event.delivery.tag_id] = _STATES.get(event.delivery.remote_state, "?")

    on_accepted = on_rejected = on_released = on_modified = _outcome


class ClientReceiver(_Peer):
    """Connects to `url` and receives from `address` with `credit` prefetched, accepting
    each message; with `detach_after`, closes its link once it received that many.

    Records the messages (`messages`) and whether the peer detached it (`remote_closed`).
    """

    def __init__(self, url: str, address: str, credit: int = 10,
                 detach_after: int | None = None, at_most_once: bool = False) -> None:
        super().__init__(prefetch=credit, auto_accept=True)
        self.target_url = url
        self.address = address
        self.detach_after = detach_after
        self.at_most_once = at_most_once
        self.messages: list[Message] = []
        self.settled_on_arrival: list[bool] = []
        self.remote_closed = False

    def begin(self, container: Any) -> None:
        options = AtMostOnce() if self.at_most_once else None
        container.create_receiver(self.target_url, self.address, options=options)

    def on_message(self, event: Any) -> None:
        self.messages.append(event.message)
        self.settled_on_arrival.append(event.delivery.settled)
        if self.detach_after is not None and len(self.messages) == self.detach_after:
            event.receiver.close()

    def on_link_closing(self, event: Any) -> None:
        self.remote_closed = True


class ClientPair(_Peer):
    """Connects to `url` and attaches a sender and a receiver on `address`, both on that
    one connection; sends nothing. Records whether the peer closed the connection
    (`remote_closed`)."""

    def __init__(self, url: str, address: str) -> None:
        super().__init__()
        self.target_url = url
        self.address = address
        self.container_id = ""
        self.remote_closed = threading.Event()

    def begin(self, container: Any) -> None:
        self.container_id = container.container_id
        conn = container.connect(self.target_url)
        container.create_sender(conn, self.address)
        container.create_receiver(conn, self.address)

    def on_connection_closing(self, event: Any) -> None:
        self.remote_closed.set()


class DynamicReceiver(_Peer):
    """Connects to `url` and attaches a receiver with a dynamic source, accepting what
    comes. Records the address the peer gave the source (`address`, once attached) and
    the messages (`messages`)."""

    def __init__(self, url: str) -> None:
        super().__init__(auto_accept=True)
        self.target_url = url
        self.address: str | None = None
        self.attached = threading.Event()
        self.messages: list[Message] = []

    def begin(self, container: Any) -> None:
        container.create_receiver(self.target_url, dynamic=True)

    def on_link_opened(self, event: Any) -> None:
        self.address = event.receiver.remote_source.address
        self.attached.set()

    def on_message(self, event: Any) -> None:
        self.messages.append(event.message)


def _main(argv: list[str]) -> None:
    """`sink PORT`: a Sink that never settles, in a process of its own (to be killed);
    `pair URL ADDRESS`: a ClientPair, likewise."""
    if argv[0] == "pair":
        ClientPair(argv[1], argv[2]).start()
        print("ready", flush=True)
        while True:
            time.sleep(1)
    kind, port = argv
    assert kind == "sink"
    sink = Sink(credit=100_000, port=int(port)).start()
    print("ready", flush=True)
    while True:
        time.sleep(1)
        print(len(sink.messages), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
