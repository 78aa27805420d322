"""Local transactions (AMQP 1.0, part 4), as client state: sans-IO, like the core.

A transaction is declared on a coordinator: a sending link whose target is the peer's
transaction coordinator, one per connection shard, kept for the next transaction. The
declare and the discharge are messages on it (their bodies the described lists
amqp:declare:list and amqp:discharge:list); the peer's outcome of a declare is
`declared` with the transaction's id. Messages sent in the transaction carry
transactional-state with that id, as do the dispositions of deliveries accepted in it;
the peer applies them when the transaction commits and drops them when it is aborted.

A transaction lives on one AMQP connection: on a sharded connection the first usable
shard's, and only the links on that shard can take part (the faces say so when a link
has no such link). A transaction whose connection is lost is rolled back by the peer:
its messages are not sent again (they end as rejected, amqp:transaction:rollback).
"""

from __future__ import annotations

from .core import (
    Batch,
    ClientCore,
    ConnectionState,
    LinkSettings,
    ReceiverLink,
    SenderLink,
    SenderState,
    Shard,
)
from .errors import AMQPError, LinkDetached
from .message import Message
from .types import Described, ulong
from .workers import protocol as p

DECLARE = ulong(0x31)  # amqp:declare:list
DISCHARGE = ulong(0x32)  # amqp:discharge:list
COORDINATOR_CAPABILITIES = ["amqp:local-transactions"]
COORDINATOR_WINDOW = 16  # declares and discharges in flight on one coordinator


class TransactionError(AMQPError):
    """A transaction could not be declared, or its commit failed: `condition` names the
    peer's reason (amqp:transaction:rollback when the peer rolled it back)."""


class Transaction:
    """One local transaction: declared, then open, then committed, aborted or failed."""

    __slots__ = ("shard", "coordinator", "declare", "discharge", "id", "failure", "fail",
                 "generation")

    def __init__(self, shard: Shard, coordinator: SenderLink, declare: Batch) -> None:
        self.shard = shard
        self.coordinator = coordinator
        # The coordinator's connection when declared: a transaction dies with it (the
        # link may be attached again on a new connection, which knows nothing of it).
        self.generation = coordinator.generation
        self.declare = declare
        self.discharge: Batch | None = None
        self.id: bytes | None = None  # the peer's txn-id, once declared
        self.failure: Exception | None = None
        self.fail = False  # the discharge asked: abort

    # ---- where it stands (read by the faces' waits) --------------------------------------

    @property
    def declared(self) -> bool:
        """The peer answered the declare (or it failed: see `failure`)."""
        if self.id is not None or self.failure is not None:
            return True
        result = self.declare.result(0)
        if result is None:
            link = self.coordinator
            if link.failure is not None:
                self.failure = TransactionError(
                    f"the transaction coordinator refused the link: {link.failure}",
                    getattr(link.failure, "condition", None))
                return True
            return False
        if result.state == p.DECLARED and result.data and isinstance(result.data[0], bytes):
            self.id = bytes(result.data[0])
        else:
            self.failure = _failure("declare", result)
        return True

    @property
    def discharged(self) -> bool:
        """The peer answered the commit or abort (see `failure`)."""
        batch = self.discharge
        if batch is None:
            return False
        result = batch.result(0)
        if result is None:
            if self.coordinator.failure is not None and self.failure is None:
                self.failure = TransactionError(
                    f"the transaction's coordinator link failed: {self.coordinator.failure}",
                    getattr(self.coordinator.failure, "condition", None))
            return self.failure is not None
        if result.state != p.ACCEPTED and self.failure is None:
            self.failure = _failure("abort" if self.fail else "commit", result)
        return True

    @property
    def state(self) -> str:
        """"declaring", "open", "committing", "aborting", "committed", "aborted" or
        "failed"."""
        if not self.declared:
            return "declaring"
        if self.failure is not None:
            return "failed"
        if self.discharge is None:
            return "open"
        if not self.discharged:
            return "aborting" if self.fail else "committing"
        if self.failure is not None:
            return "failed"
        return "aborted" if self.fail else "committed"

    def check_open(self) -> bytes:
        """The txn-id, if work may still be added to it; else why not."""
        if self.id is None or self.discharge is not None or self.failure is not None:
            raise TransactionError(f"the transaction is {self.state}, not open")
        if self.shard.failure is not None or not self.coordinator.attached or (
                self.coordinator.generation != self.generation):
            raise TransactionError("the transaction's connection was lost: the peer "
                                   "rolled it back", "amqp:transaction:rollback")
        return self.id


def _failure(what: str, result: object) -> TransactionError:
    condition = getattr(result, "condition", None)
    state = p.OUTCOME_NAMES.get(getattr(result, "state", None) or 0, "settled")
    reason = f": {condition.name}: {condition.description}" if condition else ""
    return TransactionError(f"the peer answered the {what} with {state}{reason}",
                            condition.name if condition else None,
                            condition.description if condition else "")


# ---- the operations (the core's state changes; the faces wait) ----------------------------


class Transactions:
    """Declares and discharges on one client core, with one coordinator per shard."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.coordinators: dict[Shard, SenderState] = core.coordinators

    def declare(self, connection: ConnectionState) -> Transaction:
        """Declare a transaction on the connection's first usable shard."""
        connection.check_usable()
        shard = next(s for s in connection.shards if s.failure is None)
        link = self._coordinator(connection, shard)
        payload = Message(body=Described(DECLARE, [])).encode()
        return Transaction(shard, link, link.send_chunk([payload]))

    def _coordinator(self, connection: ConnectionState, shard: Shard) -> SenderLink:
        state = self.coordinators.get(shard)
        if state is None or state.closed or any(x.failure for x in state.links):
            target = p.Terminus(coordinator=True, capabilities=COORDINATOR_CAPABILITIES)
            state = self.core.open_sender(
                connection, None, COORDINATOR_WINDOW, False, f"txn-coordinator-{shard.id}",
                0, target, LinkSettings(one_link=True, shards=[shard]))
            state.coordinator = True
            self.coordinators[shard] = state
        return state.links[0]

    def discharge(self, txn: Transaction, fail: bool) -> None:
        """Commit (or with `fail`, abort) the transaction."""
        txn_id = txn.check_open()
        txn.fail = fail
        payload = Message(body=Described(DISCHARGE, [txn_id, fail])).encode()
        txn.discharge = txn.coordinator.send_chunk([payload])

    @staticmethod
    def link_on(txn: Transaction, links: list[SenderLink]) -> SenderLink:
        """The sender's link on the transaction's connection."""
        for link in links:
            if link.attach is not None and link.attach.conn == txn.shard.id:
                if link.failure is not None:
                    raise link.failure
                return link
        raise ValueError("the sender has no link on the transaction's connection: a "
                         "transaction is one AMQP connection (a sharded connection's first "
                         "shard); open the sender on that connection, with shards=1")

    def send(self, txn: Transaction, link: SenderLink, payload: bytes) -> Batch:
        """Send `payload` on `link` in the transaction."""
        return link.send_chunk([payload], txn.check_open())

    def settle(self, txn: Transaction, link: ReceiverLink, delivery_ids: list[int],
               state: int) -> None:
        """Settle deliveries of `link` with `state` in the transaction."""
        txn_id = txn.check_open()
        if link.attach is None or link.attach.conn != txn.shard.id:
            raise ValueError("the delivery came on another connection than the "
                             "transaction's: a transaction is one AMQP connection")
        if link.failure is not None:
            raise LinkDetached(f"the delivery's link failed: {link.failure}")
        link.settle_now(p.Settle(link.id, delivery_ids, state, txn=txn_id))
