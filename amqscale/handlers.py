"""Event handlers in AMQ Python's (Qpid Proton Python's) style: Handler, MessagingHandler.

The event-driven Container (``amqscale.reactor.Container``) calls ``on_<event>`` on a
handler, then on each of its children (``handler.handlers``), as proton does; a handler
without a method for the event gets ``on_unhandled(name, event)``. A callback that
MessagingHandler does not define (``on_fetch`` for an ``ApplicationEvent("fetch")``,
``on_session_opened``) is called by name when the user defines it.

    from amqscale.handlers import MessagingHandler
    from amqscale.reactor import Container

    class HelloWorld(MessagingHandler):
        def on_start(self, event):
            conn = event.container.connect("amqp://127.0.0.1:5672")
            event.container.create_receiver(conn, "examples")
            event.container.create_sender(conn, "examples")

        def on_sendable(self, event):
            event.sender.send(Message(body="Hello World!"))
            event.sender.close()

        def on_message(self, event):
            print(event.message.body)
            event.connection.close()

    Container(HelloWorld()).run()

What the options do, and where amqscale differs from proton, is in
``docs/migrating-from-proton.md``.

This module imports nothing of amqscale's: handlers run in the user's process (the
event-driven Container) and inside the workers (``open_receiver(..., handler=...)``,
``amqscale.workers.inworker``), and both apply the rules here.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("amqscale.handlers")


class Reject(Exception):  # noqa: N818 (proton's name)
    """Raise from ``on_message`` to reject the message (auto_accept or not)."""


class Release(Exception):  # noqa: N818 (proton's name)
    """Raise from ``on_message`` to release the message: it goes back to the source for
    any receiver, with no delivery attempt counted (RELEASED; proton 0.40 sends MODIFIED)."""


class Handler:
    """The base of every handler: `handlers` are children, called after this handler.

    A handler has no method for an event? Its ``on_unhandled(name, event)`` is called.
    """

    handlers: list[Any]

    def __init__(self, *handlers: Any) -> None:
        self.handlers = list(handlers)

    def add(self, handler: Any) -> None:
        """Add a child handler (called after this one, in the order added)."""
        self.handlers.append(handler)

    def on_unhandled(self, name: str, event: Any) -> None:
        """An event this handler has no ``on_<name>`` for; nothing by default."""


def dispatch(handler: Any, name: str, event: Any) -> None:
    """Call ``handler.on_<name>(event)`` (or ``on_unhandled``), then its children's."""
    method = getattr(handler, "on_" + name, None)
    if method is not None:
        method(event)
    else:
        unhandled = getattr(handler, "on_unhandled", None)
        if unhandled is not None:
            unhandled(name, event)
    for child in getattr(handler, "handlers", None) or ():
        dispatch(child, name, event)


class Task:
    """A timer: ``on_timer_task`` on `handler` at `deadline` (time.monotonic()), unless
    cancel()led; `fired` once it ran. The faces' schedule() make them."""

    def __init__(self, deadline: float, handler: Any) -> None:
        self.deadline = deadline
        self.handler = handler
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Task) -> bool:  # a heap of them is in deadline order
        return self.deadline < other.deadline


def messaging_handler(handlers: Any) -> MessagingHandler | None:
    """The first MessagingHandler among `handlers` and their children: its options
    (prefetch, auto_accept, peer_close_is_error) apply to the links it handles."""
    for handler in handlers:
        if isinstance(handler, MessagingHandler):
            return handler
        found = messaging_handler(getattr(handler, "handlers", None) or ())
        if found is not None:
            return found
    return None


class Acking:
    """Settling received messages, mixed into MessagingHandler (proton's ``Acking``)."""

    def accept(self, delivery: Any) -> None:
        """Accept a received message (and settle it)."""
        delivery.accept()

    def reject(self, delivery: Any) -> None:
        """Reject a received message: the peer should not send it again."""
        delivery.reject()

    def release(self, delivery: Any, delivered: bool = True) -> None:
        """Give a received message back to the source for any (other) receiver.

        `delivered`: count this as a delivery attempt: MODIFIED with delivery-failed set
        (the peer raises its delivery count); otherwise RELEASED."""
        if delivered:
            delivery.modify(delivery_failed=True)
        else:
            delivery.release()

    def settle(self, delivery: Any, state: int | None = None) -> None:
        """Settle a delivery, with `state` (Delivery.ACCEPTED ...) if given."""
        if state is not None:
            delivery.update(state)
        delivery.settle()


class MessagingHandler(Handler, Acking):
    """Callbacks for messaging, with proton's options and defaults.

    - `prefetch`: credit each receiver created with this handler keeps granted; 0 (or
      None): none, the application grants it with ``receiver.flow(n)``.
    - `auto_accept`: accept each message once ``on_message`` returns (raise ``Reject`` or
      ``Release`` there to settle otherwise). Off: settle with ``self.accept(...)`` etc.
    - `auto_settle`: settle sent messages once the peer settled them. amqscale's workers
      settle them then anyway; off, ``Delivery.settle()`` is allowed and does nothing more.
    - `peer_close_is_error`: a peer closing a connection or link without an error condition
      calls ``on_connection_error`` / ``on_link_error`` instead of ``..._closing``.

    The error callbacks log; ``on_connection_error`` and ``on_link_error`` also close the
    connection, as proton's do.
    """

    def __init__(self, prefetch: int | None = 10, auto_accept: bool = True,
                 auto_settle: bool = True, peer_close_is_error: bool = False) -> None:
        super().__init__()
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 0):
            raise ValueError(f"prefetch must be a non-negative int or None, not {prefetch!r}")
        self.prefetch = prefetch or 0
        self.auto_accept = auto_accept
        self.auto_settle = auto_settle
        self.peer_close_is_error = peer_close_is_error
        self.fatal_conditions = ["amqp:unauthorized-access"]

    # The callbacks below are the defaults; the others MessagingHandler leaves undefined
    # (on_start, on_sendable, on_message, on_*_opened ...) reach on_unhandled when the
    # user does not define them.

    def on_accepted(self, event: Any) -> None:
        """The peer accepted a sent message (``event.delivery``)."""

    def on_rejected(self, event: Any) -> None:
        """The peer rejected a sent message; ``event.delivery.remote_condition`` says why."""

    def on_released(self, event: Any) -> None:
        """The peer released a sent message. As proton's docs say, this is also called for
        MODIFIED, through the default ``on_modified``."""

    def on_modified(self, event: Any) -> None:
        """The peer settled a sent message as MODIFIED; by default ``on_released``."""
        self.on_released(event)

    def on_settled(self, event: Any) -> None:
        """The peer settled a delivery (after its outcome callback)."""

    def on_connection_closing(self, event: Any) -> None:
        """The peer closed the connection cleanly (ours is closed with it)."""

    def on_connection_closed(self, event: Any) -> None:
        """The connection is closed at both ends."""

    def on_link_closing(self, event: Any) -> None:
        """The peer closed a link cleanly (ours is closed with it)."""

    def on_link_closed(self, event: Any) -> None:
        """The link is closed at both ends."""

    def on_disconnected(self, event: Any) -> None:
        """The connection's transport ended (after ``on_transport_error`` if it failed)."""

    def on_connection_error(self, event: Any) -> None:
        """The peer closed the connection with an error: logged, the connection closed."""
        _log_error(event.connection, "connection")
        event.connection.close()

    def on_session_error(self, event: Any) -> None:
        """The peer ended the session with an error: logged, the connection closed."""
        _log_error(event.session, "session")
        event.connection.close()

    def on_link_error(self, event: Any) -> None:
        """The peer closed a link with an error: logged, the connection closed."""
        _log_error(event.link, "link")
        if event.connection is not None:
            event.connection.close()

    def on_transport_error(self, event: Any) -> None:
        """The connection failed (refused, lost, authentication ...): logged; a fatal
        condition (``fatal_conditions``) closes the connection."""
        condition = getattr(event.transport, "condition", None)
        if condition is not None:
            log.warning("transport error: %s: %s", condition.name, condition.description)
            if condition.name in self.fatal_conditions and event.connection is not None:
                event.connection.close()
        else:
            log.warning("unspecified transport error")


def _log_error(endpoint: Any, kind: str) -> None:
    condition = getattr(endpoint, "remote_condition", None)
    if condition is not None:
        log.warning("%s error: %s: %s", kind, condition.name, condition.description)
    else:
        log.warning("%s closed by the peer", kind)


class TransactionHandler:
    """The callbacks of a local transaction (``Container.declare_transaction``), as
    proton's: mix it into a MessagingHandler, override what is needed. `event.transaction`
    is the Transaction; its ``failure`` says why in the ``*_failed`` callbacks."""

    def on_transaction_declared(self, event: Any) -> None:
        pass

    def on_transaction_committed(self, event: Any) -> None:
        pass

    def on_transaction_aborted(self, event: Any) -> None:
        pass

    def on_transaction_declare_failed(self, event: Any) -> None:
        """The peer refused the declare: logged."""
        log.warning("transaction declare failed: %s", event.transaction.failure)

    def on_transaction_commit_failed(self, event: Any) -> None:
        """The peer refused the commit (or rolled it back): logged."""
        log.warning("transaction commit failed: %s", event.transaction.failure)


class TransactionalClientHandler(MessagingHandler, TransactionHandler):
    """A MessagingHandler with the transaction callbacks (proton's name)."""
