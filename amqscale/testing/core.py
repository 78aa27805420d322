"""Scripted workers for unit tests of the client core (``amqscale.core``), in memory.

The core is sans-IO: it queues commands per worker and takes events. `ScriptedWorkers`
plays the workers' part without processes or rings: it takes what the core queued and
answers with the events a real worker would send, one call per step, so a test can script
any interleaving (an outcome before an attach, a worker that dies mid-batch) and check
the core's state after each step. The answers it builds follow ``workers/protocol.py``.

    core = ClientCore(workers=2, container_id="test", fragment=1024)
    workers = ScriptedWorkers(core)
    connection = core.open_connection(URL("amqp", "127.0.0.1", 5672), shards=2)
    workers.open_all()                      # every OpenConnection / OpenLink answered
    sender = core.open_sender(connection, "q", 10, False, None, 0)
    workers.open_all()
    batch = sender.links[0].send_chunk([b"a", b"b"])
    workers.settle(sender.links[0].id, 0, 2)  # accepted
"""

from __future__ import annotations

from collections.abc import Iterable

from amqscale.core import ClientCore, Shard, WorkerSlot
from amqscale.workers import protocol as p


class ScriptedWorkers:
    """The workers of one core, played in memory: commands taken, events answered."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.taken: list[list[p.Command]] = [[] for _ in core.slots]  # by worker, in order

    def take(self, index: int | None = None) -> list[p.Command]:
        """The commands queued since the last take (for worker `index`, or all workers),
        as the driver would write them."""
        slots = self.core.slots if index is None else [self.core.slots[index]]
        commands: list[p.Command] = []
        for slot in slots:
            commands += slot.queued
            self.taken[slot.index] += slot.queued
            slot.queued = []
        return commands

    def emit(self, index: int, *events: p.Event) -> None:
        """Worker `index` publishes `events` as one record."""
        self.core.handle_events(self.core.slots[index], list(events))

    def open_all(self) -> None:
        """Answer every OpenConnection and OpenLink queued so far as a peer that agrees."""
        for slot in self.core.slots:
            for command in self.take(slot.index):
                if type(command) is p.OpenConnection:
                    self.emit(slot.index, p.ConnectionOpened(command.conn, "peer"))
                elif type(command) is p.OpenLink:
                    self.emit(slot.index, _link_opened(command))

    def settle(self, link: int, start: int, end: int, state: int = p.ACCEPTED,
               condition: p.Condition | None = None) -> None:
        """The peer settles seqs start..end-1 of `link` with `state`."""
        self.emit(self.slot_of(link).index, p.Outcomes(link, [start, end], state, condition))

    def deliver(self, link: int, first_id: int, payloads: Iterable[bytes],
                settled: list[int] | None = None) -> None:
        self.emit(self.slot_of(link).index,
                  p.Deliveries(link, first_id, list(payloads), settled))

    def close_link(self, link: int, condition: p.Condition | None = None) -> None:
        self.emit(self.slot_of(link).index, p.LinkClosed(link, condition))

    def lose(self, shard: Shard, condition: p.Condition | None = None,
             by_peer: bool = False, failed_in: str | None = None) -> None:
        """The shard's transport ends (a network failure by default; `by_peer`: the
        peer closed it with `condition`): its links first, then the connection, as a
        worker reports it."""
        cond = condition or p.Condition("amqp:connection:failed", "connection lost")
        events: list[p.Event] = [p.LinkClosed(link.id, cond, True) for link in shard.links
                                 if link.attached and not link.closed]
        events.append(p.ConnectionClosed(shard.id, cond, failed_in, by_peer=by_peer))
        self.emit(shard.slot.index, *events)

    def die(self, index: int, code: int = -9) -> None:
        """Worker `index` dies (what the driver reports when its pidfd fires)."""
        self.core.worker_died(self.core.slots[index], code)

    def slot_of(self, link_or_conn: int) -> WorkerSlot:
        slot: WorkerSlot = self.core.routes[link_or_conn].slot
        return slot


def _link_opened(command: p.OpenLink, max_message_size: int = 0) -> p.LinkOpened:
    return p.LinkOpened(command.link, command.conn, command.name, command.is_sender,
                        remote_source=command.source, remote_target=command.target,
                        remote_max_message_size=max_message_size)
