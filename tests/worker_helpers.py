"""Driving the worker's proton adapter (`amqscale.workers.engine.Engine`) with bytes, in
memory: two engines, a client connection on one and a listener's on the other, joined by
copying what each transport writes into the other's input. No sockets, no processes."""

from __future__ import annotations

from typing import Any

from amqscale.workers import protocol as p
from amqscale.workers.engine import Connection, Engine

LISTENER = 7


class Side:
    """One engine and the events it emitted."""

    def __init__(self, index: int, fragment: int) -> None:
        self.events: list[Any] = []
        self.engine = Engine(index, self.events.append, fragment=fragment)

    def take(self) -> list[Any]:
        events = self.events[:]
        self.events.clear()
        return events

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if type(e) is kind]


def move(src: Engine, src_conn: Connection, dst: Engine, dst_conn: Connection,
         limit: int | None = None) -> int:
    """Copy what `src_conn` has to send into `dst_conn` (at most `limit` bytes)."""
    moved = 0
    while src_conn.id in src.connections and dst_conn.id in dst.connections:
        n = src.peek(src_conn)
        if n <= 0:
            if n < 0:
                src.output_closed(src_conn)
                if dst_conn.id in dst.connections:
                    dst.close_input(dst_conn)
            break
        capacity = dst.capacity(dst_conn)
        if capacity <= 0:
            break
        n = min(n, capacity, limit - moved if limit is not None else n)
        if n <= 0:
            break
        dst.input_buffer[:n] = src.output[:n]
        src.pop(src_conn, n)
        dst.push(dst_conn, n)
        moved += n
    return moved


def hang_up(a: Engine, a_conn: Connection, b: Engine, b_conn: Connection) -> None:
    """What a closed socket does: once `a` dropped its end, `b` reads EOF."""
    if a_conn.id not in a.connections and b_conn.id in b.connections:
        if b.capacity(b_conn) >= 0:
            b.close_input(b_conn)
        while b_conn.id in b.connections:  # what it still writes goes nowhere
            n = b.peek(b_conn)
            if n < 0:
                b.output_closed(b_conn)
                break
            b.pop(b_conn, n)
        b.flush_events()


class Pair:
    """A client engine connected to a server engine's listener, in memory."""

    def __init__(self, fragment: int = p.MAX_FRAGMENT, server_fragment: int | None = None,
                 listen: p.Listen | None = None) -> None:
        self.client = Side(0, fragment)
        self.server = Side(1, server_fragment or fragment)
        self.server.engine.handle(listen or p.Listen(LISTENER, "", 0, "server",
                                                     adopt_only=True))
        self.next_conn = 1
        self.conns: list[tuple[Connection, Connection]] = []

    def connect(self) -> int:
        """A new client connection (id returned) to the server's listener."""
        conn_id = self.next_conn
        self.next_conn += 1
        self.client.engine.handle(p.OpenConnection(conn_id, "memory", 1, "client"))
        client_conn, _ = self.client.engine.connect_requests.pop()
        server_conn = self.server.engine.adopt(LISTENER, f"memory:{conn_id}")
        assert server_conn is not None
        self.conns.append((client_conn, server_conn))
        return conn_id

    def pump(self, rounds: int = 1000, limit: int | None = None) -> None:
        """Move bytes both ways until neither side has any (or `rounds` passes)."""
        c, s = self.client.engine, self.server.engine
        for _ in range(rounds):
            moved = 0
            for cc, sc in self.conns:
                c.process()
                s.process()
                moved += move(c, cc, s, sc, limit) + move(s, sc, c, cc, limit)
                hang_up(c, cc, s, sc)
                hang_up(s, sc, c, cc)
            c.flush_events()
            s.flush_events()
            if not moved:
                return

    def open_sender(self, link: int, conn: int, **kw: Any) -> int:
        """A sending link from the client; returns the server's id of its inbound link."""
        self.client.engine.handle(p.OpenLink(link, conn, f"link-{link}", True,
                                             p.Terminus("q"), p.Terminus("q"), **kw))
        self.pump()
        opened = [e for e in self.server.events if type(e) is p.LinkOpened
                  and e.name == f"link-{link}"]
        assert opened, self.server.events
        return int(opened[-1].link)
