"""A real worker process driven through its rings, without the user-side API: commands
written to its command ring as records, events read from its event ring."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from amqscale._supervisor import Supervisor
from amqscale.workers import protocol as p


class Driven:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.worker = supervisor.workers[0]
        self.events: list[Any] = []

    @property
    def pid(self) -> int:
        return self.worker.process.pid

    def send(self, *commands: p.Command) -> None:
        self.worker.rings.outbound.write(p.encode(list(commands)), timeout=10)

    def poll(self, timeout: float = 0.05) -> None:
        inbound = self.worker.rings.inbound
        if inbound.wait(timeout):
            for record in inbound.read_batch():
                self.events += p.decode_events(record)
        assert self.alive(), f"the worker died: {self.worker.process.poll()}"

    def wait(self, done: Callable[[list[Any]], Any], timeout: float = 20.0,
             what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = done(self.events)
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited for {what or done}: {self.events[-10:]}")
            self.poll()

    def wait_for(self, kind: type, timeout: float = 20.0, **fields: Any) -> Any:
        def match(events: list[Any]) -> Any:
            for event in events:
                if type(event) is kind and all(getattr(event, k) == v
                                               for k, v in fields.items()):
                    return event
            return None
        return self.wait(match, timeout, f"{kind.__name__} {fields}")

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if type(e) is kind]

    def alive(self) -> bool:
        return self.worker.process.poll() is None


@contextmanager
def worker(ring_capacity: int = 8 * 1024 * 1024) -> Iterator[Driven]:
    supervisor = Supervisor(1, ring_capacity=ring_capacity)
    try:
        yield Driven(supervisor)
    finally:
        supervisor.stop()


def loop_link(w: Driven, listener: int = 1, conn: int = 1, link: int = 1,
              credit: int = 1000, max_message_size: int = 0) -> tuple[int, int]:
    """A listener on the worker and a sending link from the worker to it: returns
    (listener port, the inbound link's id)."""
    w.send(p.Listen(listener, "127.0.0.1", 0, "srv", credit=credit,
                    max_message_size=max_message_size))
    port = w.wait_for(p.Listening, listener=listener).port
    w.send(p.OpenConnection(conn, "127.0.0.1", port, "cli"),
           p.OpenLink(link, conn, f"link-{link}", True, p.Terminus("q"), p.Terminus("q")))
    w.wait_for(p.LinkOpened, link=link)
    inbound = w.wait_for(p.LinkOpened, name=f"link-{link}", inbound=True)
    return port, int(inbound.link)


def take_messages(w: Driven, link: int, count: int, timeout: float = 30.0,
                  settle: bool = True) -> list[bytes]:
    """Wait until `count` whole messages arrived on `link` (parts joined); settle them."""
    messages: list[bytes] = []
    parts: list[bytes] = []
    seen = 0
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(messages)} of {count} messages")
        w.poll()
        ids: list[int] = []
        for event in w.events[seen:]:
            if getattr(event, "link", None) != link:
                continue
            if type(event) is p.Deliveries:
                messages += event.payloads
                ids += [event.first_id + i for i in range(len(event.payloads))]
            elif type(event) is p.DeliveryPart:
                parts.append(event.chunk)
                if event.last:
                    messages.append(b"".join(parts))
                    ids.append(event.id)
                    parts = []
        seen = len(w.events)
        if ids and settle:
            w.send(p.Settle(link, ids))
    return messages
