"""The exceptions amqscale raises, each at the call that caused it."""

from __future__ import annotations

from typing import Any


class AMQPError(Exception):
    """An error the peer or the engine reported, with its AMQP condition when there is one."""

    def __init__(self, message: str, condition: str | None = None, description: str = ""):
        super().__init__(message)
        self.condition = condition
        self.description = description


class ConnectionFailed(AMQPError, ConnectionError):
    """A connection could not be opened, or it closed with an error."""


class TLSError(ConnectionFailed):
    """TLS could not be set up or its handshake failed: the server's certificate was not
    trusted (an unknown CA, a name mismatch, an expired certificate), a client certificate
    was missing or refused, the peer does not speak TLS, or ours could not be loaded.
    Nothing was sent in cleartext."""


class AuthenticationError(ConnectionFailed):
    """SASL authentication failed: wrong credentials, or no mechanism both sides allow.
    `mechanism` is the one tried (None if none was agreed), `outcome` Cyrus's verdict
    ("auth": the credentials were refused; "sys", "perm", "temp": the peer failed)."""

    def __init__(self, message: str, condition: str | None = None, description: str = "",
                 mechanism: str | None = None, outcome: str | None = None) -> None:
        super().__init__(message, condition, description)
        self.mechanism = mechanism
        self.outcome = outcome


class LinkDetached(AMQPError):
    """A sender or receiver was refused by the peer, or detached with an error."""


class HandlerFailed(LinkDetached):
    """An in-worker handler failed: it could not be imported or made (the open raises
    it), or one of its callbacks raised, which ended that link only (``receiver.wait()``
    raises it, ``receiver.failures`` lists it). `traceback` is the handler's traceback
    text, from the worker (empty for a name that cannot be imported); `worker` is the
    index of the worker it ran in."""

    def __init__(self, message: str, condition: str | None = None, description: str = "",
                 worker: int | None = None) -> None:
        super().__init__(message, condition, description)
        self.worker = worker
        _, _, self.traceback = description.partition("\n")


class DeliveryLost(LinkDetached):
    """A received message cannot be settled: the connection that brought it was lost
    (and may have been opened again) before it was settled. The peer still holds it as
    unsettled (a broker delivers it again, to this receiver once it is back or to
    another); nothing was settled in its name."""


class WorkerDied(AMQPError):
    """The worker process that carried a connection died; its unsettled messages are kept."""


class MessageTooLarge(ValueError):
    """A message is larger than what can cross to a worker in one piece."""


class URLError(ValueError):
    """A connection or listen URL is malformed."""


class ContainerClosed(RuntimeError):
    """A call on a Container, or on anything opened on it, after the Container closed."""


class WindowFull(Exception):
    """A send that does not wait found every link's window full; nothing was sent."""


class SendFailed(AMQPError):
    """The peer settled a message with an outcome other than accepted (asked for with
    ``check=True``); `tracker` has the outcome and the peer's condition."""

    def __init__(self, tracker: Any) -> None:
        condition = tracker.condition
        super().__init__(
            f"message {tracker.seq} was {tracker.outcome}"
            + (f": {condition.name}: {condition.description}" if condition else ""),
            condition.name if condition else None,
            condition.description if condition else "")
        self.tracker = tracker
        self.outcome: str | None = tracker.outcome
