"""The event-driven face: AMQ Python's (Qpid Proton Python's) Container, in your thread.

``Container(handler).run()`` runs a loop in the calling thread that sleeps on the worker
processes' event rings (the driver's park), on the earliest timer and on the injectors'
pipes, and turns what the client core applied into callbacks on the handlers
(``amqscale.handlers``): ``on_start``, ``on_connection_opened``, ``on_sendable``,
``on_message``, ``on_accepted`` ... It never spins: with nothing to do it sleeps until a
worker publishes, a worker dies, a timer is due or an injector is triggered.

Per pass of the loop: the driver applies every record the workers published to the core
(whose observer queues what changed), the callbacks run in the order the events came,
then ``on_sendable`` for each sender that has room, due timers, injected events; and what
the callbacks did (messages sent, settlements, credit) goes to the workers as one batch
per link, as the blocking face batches it.

A connection opened with ``shards=K`` is K AMQP connections; its handler sees one
Connection: ``on_connection_opened`` once every shard is open, ``on_sendable`` while any
shard's link has room. ``docs/migrating-from-proton.md`` lists what differs from proton.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import heapq
import itertools
import logging
import os
import select
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from . import _ops, codec
from . import links as _links
from ._driver import Driver
from .container import (
    OPEN_TIMEOUT,
    check_windows,
    check_worker_handler,
    connect_options,
    default_worker_count,
)
from .core import (
    SEND_BATCH,
    Arrival,
    ConnectionState,
    InboundConnection,
    LinkSettings,
    ListenerState,
    ReceiverLink,
    ReceiverState,
    SenderLink,
    SenderState,
    SessionState,
    Shard,
    WorkerSlot,
)
from .errors import LinkDetached, MessageTooLarge
from .handlers import Reject, Release, dispatch, messaging_handler
from .handlers import Task as _Task
from .message import Message
from .security import TLS, TLS_VERSIONS, ServerSASL, listener_options, load_connect_config
from .terminus import Source, Target, decode_properties, one_link, selector_filter
from .transactions import Transaction as TransactionState
from .transactions import Transactions
from .types import symbol
from .url import URL, parse_url
from .workers import protocol as p

log = logging.getLogger("amqscale.reactor")

__all__ = [
    "Acceptor", "ApplicationEvent", "AtLeastOnce", "AtMostOnce", "Condition", "Connection",
    "Container", "Copy", "Delivery", "DurableSubscription", "DynamicNodeProperties", "Event",
    "EventInjector", "Filter", "LinkOption", "Move", "ReceiverOption", "Receiver",
    "Selector", "Sender", "SenderOption", "Session", "Task", "Tracker", "Transaction",
    "Transport",
]

# Endpoint states, with proton's bit values (Endpoint.LOCAL_ACTIVE ...).
LOCAL_UNINIT, LOCAL_ACTIVE, LOCAL_CLOSED = 1, 2, 4
REMOTE_UNINIT, REMOTE_ACTIVE, REMOTE_CLOSED = 8, 16, 32

DEFAULT_WINDOW = 1000  # messages in flight per link (shard) of a Sender: its `credit`
SHUTDOWN_TIMEOUT = 2.0  # seconds run() waits for the peers to confirm its closes
# Condition names that mean the transport failed rather than the peer closing.
_TRANSPORT_CONDITIONS = {"amqp:connection:failed", "amqp:connection:framing-error",
                         "amqp:resource-limit-exceeded", "amqscale:worker-died",
                         "amqscale:internal-error", "proton:io"}
_OUTCOME_CALLBACKS = {p.ACCEPTED: "accepted", p.REJECTED: "rejected",
                      p.RELEASED: "released", p.MODIFIED: "modified"}
_AMQP_ISSUE = "issue #12 (AMQP completeness)"

Condition = p.Condition  # name, description: what a peer or the transport gave as the reason


def _not_yet(feature: str, issue: str = _AMQP_ISSUE) -> NotImplementedError:
    return NotImplementedError(f"{feature} is not supported by amqscale yet ({issue})")


def _symbol_list(value: Any, what: str) -> list[str] | None:
    """Capabilities as proton takes them: None, a symbol, or a list or tuple of them."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what} is a symbol or a list of symbols, not {value!r}")
    return [str(n) for n in names]


def _properties(value: Any, what: str) -> dict[Any, Any] | None:
    """Connection properties: None or a dict that encodes (symbol keys for str ones)."""
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"connection {what} are a dict, not {value!r}")
    if value:
        codec.encode(_symbol_keys(value))  # what cannot be sent fails here
    return value


def _symbol_keys(properties: dict[Any, Any]) -> dict[Any, Any]:
    return {symbol(k) if isinstance(k, str) else k: v for k, v in properties.items()}


class _OpenSetting:
    """A Connection attribute that goes in our answer to an inbound peer's open: checked
    (and normalised) by `check(value, name)` as it is set, in on_connection_opening."""

    def __init__(self, check: Any) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, connection: Any, owner: type | None = None) -> Any:
        if connection is None:
            return self
        return connection._open_settings.get(self.name)

    def __set__(self, connection: Any, value: Any) -> None:
        connection._set_open(self.name, self.check(value, self.name))


def _normalise_url(url: str) -> str:
    """proton takes `host:port/path`; amqscale's parser wants a scheme."""
    if not isinstance(url, str):
        raise TypeError(f"a URL must be a str, not {type(url).__name__}")
    return url if "://" in url else "amqp://" + url


def _address_of(url: URL) -> str | None:
    return url.path.lstrip("/") or None


# ---- TLS, as proton's SSLDomain and SSLConfig -------------------------------------------------


class SSLDomain:
    """proton's SSLDomain: TLS settings built by calls (``amqscale.security.TLS`` is the
    same as one value). A client domain verifies the server's certificate and name by
    default. `allow_unsecured_client()` is refused: a TLS listener never takes cleartext."""

    MODE_CLIENT = 1
    MODE_SERVER = 2
    VERIFY_PEER = 1
    ANONYMOUS_PEER = 2
    VERIFY_PEER_NAME = 3
    _VERIFY = {VERIFY_PEER: "peer", ANONYMOUS_PEER: "none", VERIFY_PEER_NAME: "peer-name"}

    def __init__(self, mode: int) -> None:
        if mode not in (self.MODE_CLIENT, self.MODE_SERVER):
            raise ValueError(f"SSLDomain mode must be MODE_CLIENT or MODE_SERVER, not {mode!r}")
        self.mode = mode
        self._settings: dict[str, Any] = {}

    def set_credentials(self, cert_file: str, key_file: str | None,
                        password: str | None) -> int:
        self._settings.update(cert=cert_file, key=key_file, key_password=password)
        self.tls()  # the files are checked now, at the call that names them
        return 0

    def set_trusted_ca_db(self, certificate_db: str) -> int:
        self._settings["ca"] = certificate_db
        self.tls()
        return 0

    def set_peer_authentication(self, verify_mode: int, trusted_CAs: str | None = None) -> int:
        if verify_mode not in self._VERIFY:
            raise ValueError(f"unknown verify mode {verify_mode!r}")
        self._settings["verify"] = self._VERIFY[verify_mode]
        if trusted_CAs is not None:
            self._settings["ca"] = trusted_CAs
        return 0

    def set_ciphers(self, ciphers: str) -> int:
        self._settings["ciphers"] = ciphers
        return 0

    def set_protocols(self, protocols: str) -> int:
        """proton's list ("TLSv1.2 TLSv1.3"): the range from its lowest to its highest."""
        names = [x for x in protocols.replace(",", " ").replace(";", " ").split() if x]
        order = [TLS_VERSIONS.index(x) for x in names if x in TLS_VERSIONS]
        if not names or len(order) != len(names):
            raise ValueError(f"protocols must name some of {', '.join(TLS_VERSIONS)}, "
                             f"not {protocols!r}")
        self._settings.update(min_version=TLS_VERSIONS[min(order)],
                              max_version=TLS_VERSIONS[max(order)])
        return 0

    def allow_unsecured_client(self) -> int:
        raise ValueError("amqscale's TLS listeners never accept cleartext connections: "
                         "listen on an amqp:// URL as well for plain clients")

    def tls(self) -> TLS:
        """The settings as an amqscale.security.TLS."""
        settings = dict(self._settings)
        if settings.get("verify") == "none" and self.mode == self.MODE_SERVER:
            settings.pop("verify")
        return TLS(**settings)


class SSLConfig:
    """proton's ``container.ssl``: a client and a server SSLDomain, with the two
    setters applying to both."""

    def __init__(self) -> None:
        self.client = SSLDomain(SSLDomain.MODE_CLIENT)
        self.server = SSLDomain(SSLDomain.MODE_SERVER)

    def set_credentials(self, cert_file: str, key_file: str | None,
                        password: str | None) -> None:
        self.client.set_credentials(cert_file, key_file, password)
        self.server.set_credentials(cert_file, key_file, password)

    def set_trusted_ca_db(self, certificate_db: str) -> None:
        self.client.set_trusted_ca_db(certificate_db)
        self.server.set_trusted_ca_db(certificate_db)


def _tls_of(domain: Any, default: SSLDomain, url: URL) -> TLS | None:
    """The TLS settings of an `ssl_domain=` argument (default: the container's)."""
    if not url.tls:
        return None  # proton uses a domain for amqps only
    if domain is None:
        domain = default
    if isinstance(domain, TLS):
        return domain
    if not isinstance(domain, SSLDomain):
        raise TypeError("ssl_domain must be an amqscale.reactor.SSLDomain or an "
                        f"amqscale.security.TLS, not {type(domain).__module__}."
                        f"{type(domain).__name__} (proton's SSLDomain cannot be read back)")
    return domain.tls()


# ---- events ---------------------------------------------------------------------------------


class Transport:
    """What ``event.transport`` gives: why the connection's transport ended, if it did
    (`condition`, and `error`: the TLSError, AuthenticationError or ConnectionFailed
    that the blocking face's connect() would raise)."""

    def __init__(self, connection: Connection | None,
                 condition: p.Condition | None = None,
                 error: Exception | None = None) -> None:
        self.connection = connection
        self.condition = condition
        self.error = error


class Event:
    """What a callback gets: the event's `type` and the objects it concerns.

    `connection`, `session`, `link` (`sender` / `receiver`), `delivery`, `message` (in
    ``on_message``), `transport` (with `.condition` in ``on_transport_error``), `task`
    (in ``on_timer_task``), and `container` on every event. Attributes may be added.
    """

    def __init__(self, type: str, container: Container | None = None,  # noqa: A002
                 connection: Connection | None = None, link: Any = None,
                 delivery: Any = None, message: Message | None = None,
                 transport: Transport | None = None, task: Task | None = None,
                 session: Session | None = None, subject: Any = None) -> None:
        self.type = type
        self.container = container
        if link is None:  # as proton: a delivery's link, a link's connection
            link = getattr(delivery, "link", None)
        self.connection = connection if connection is not None else getattr(
            link, "connection", None)
        self.link = link
        self.delivery = delivery
        self.message = message
        self.transport = transport
        self.task = task
        self._session = session
        self.subject = subject

    @property
    def session(self) -> Session | None:
        if self._session is not None:
            return self._session
        if self.link is not None:
            return self.link.session
        return self.connection._session if self.connection is not None else None

    @property
    def sender(self) -> Sender | None:
        return self.link if isinstance(self.link, Sender) else None

    @property
    def receiver(self) -> Receiver | None:
        return self.link if isinstance(self.link, Receiver) else None

    def __repr__(self) -> str:
        return f"<Event {self.type}>"


class ApplicationEvent(Event):
    """An event of the application's own, for ``EventInjector.trigger``: the container
    handlers' ``on_<typename>`` is called with it (``event.container`` is set)."""

    def __init__(self, typename: str, connection: Connection | None = None,
                 session: Session | None = None, link: Any = None, delivery: Any = None,
                 subject: Any = None) -> None:
        super().__init__(typename, None, connection, link, delivery, session=session,
                         subject=subject)


class EventInjector:
    """Hands events to a running Container from any thread; register it with
    ``container.selectable(injector)``. ``trigger`` and ``close`` are thread-safe; a
    Container's run() goes on while an injector is registered and not closed."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.closed = False
        self._fds_closed = False

    def trigger(self, event: Event) -> None:
        """Queue `event` for the container's handlers (its ``on_<event.type>``)."""
        if self.closed:
            raise RuntimeError("the EventInjector is closed")
        self._events.append(event)
        self._wake()

    def close(self) -> None:
        """No more events: once those queued are dispatched, run() no longer waits for it."""
        self.closed = True
        self._wake()

    def fileno(self) -> int:
        return self._read

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")  # a full pipe already wakes the loop

    def _take(self) -> list[Event]:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass
        taken = []
        while self._events:
            taken.append(self._events.popleft())
        return taken

    def _close_fds(self) -> None:
        if not self._fds_closed:
            self._fds_closed = True
            os.close(self._read)
            os.close(self._write)


class Task(_Task):
    """A timer from ``container.schedule``: ``on_timer_task`` at its deadline, unless
    cancelled."""

    def __init__(self, container: Container, deadline: float, handler: Any) -> None:
        super().__init__(deadline, handler)
        self.container = container


class _CloseAnyway:
    """The timer of a closing connection that waited for its pre-settled messages to be
    written: at CLOSE_TIMEOUT it closes with what the peer never gave credit for."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def on_timer_task(self, event: Any) -> None:
        self.connection._close_now()


# ---- link options ---------------------------------------------------------------------------


class LinkOption:
    """A link option for ``create_sender``/``create_receiver`` (``options=``)."""

    def test(self, link: Any) -> bool:
        return True


class SenderOption(LinkOption):
    def test(self, link: Any) -> bool:
        return bool(link.is_sender)


class ReceiverOption(LinkOption):
    def test(self, link: Any) -> bool:
        return not link.is_sender


class AtMostOnce(LinkOption):
    """Messages are sent pre-settled: no outcomes, no redelivery."""


class AtLeastOnce(LinkOption):
    """Messages are settled by the peer's outcome (the default)."""


class _TerminusOption(LinkOption):
    """A proton link option that sets fields of the link's terminus (amqscale.terminus):
    `fields(is_sender)` gives them, as the Source or Target keyword arguments."""

    def fields(self, is_sender: bool) -> dict[str, Any]:
        raise NotImplementedError


class Selector(_TerminusOption, ReceiverOption):
    """A JMS selector on the source (the filter `apache.org:selector-filter:string`),
    under the filter-set key `name`."""

    def __init__(self, value: str, name: str = "selector") -> None:
        self.filter = {name: selector_filter(value)}

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"filters": self.filter}


class Filter(_TerminusOption, ReceiverOption):
    """A source filter set: {name: value}, a Described value for typed filters."""

    def __init__(self, filter_set: dict[Any, Any] | None = None) -> None:
        if not isinstance(filter_set, dict | None):
            raise TypeError(f"a filter set is a dict, not {filter_set!r}")
        self.filter_set = dict(filter_set or {})

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"filters": {str(k): v for k, v in self.filter_set.items()}}


class Copy(_TerminusOption, ReceiverOption):
    """Distribution mode copy: browse (the messages stay for others)."""

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"distribution_mode": "copy"}


class Move(_TerminusOption, ReceiverOption):
    """Distribution mode move: consume."""

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"distribution_mode": "move"}


class DurableSubscription(_TerminusOption, ReceiverOption):
    """A durable source that never expires: with a stable link name and container id, a
    subscription that outlives the link (detach it with ``receiver.detach()``)."""

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"durable": "unsettled-state", "expiry_policy": "never"}


class DynamicNodeProperties(_TerminusOption, LinkOption):
    """Properties of the node a dynamic source (receiver) or target (sender) asks for."""

    def __init__(self, props: dict[Any, Any] | None = None) -> None:
        if not isinstance(props, dict | None):
            raise TypeError(f"dynamic node properties are a dict, not {props!r}")
        self.properties = dict(props or {})

    def fields(self, is_sender: bool) -> dict[str, Any]:
        return {"dynamic_node_properties": {str(k): v for k, v in self.properties.items()}}


def _check_options(options: Any, is_sender: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the link is pre-settled, and the terminus fields the options set (a
    Source's for a receiver, a Target's for a sender)."""
    presettled = False
    fields: dict[str, Any] = {}
    if options is None:
        return presettled, fields
    for option in options if isinstance(options, (list, tuple)) else [options]:
        if not isinstance(option, LinkOption):
            raise TypeError(f"options must be LinkOptions, not {type(option).__name__}")
        kind = "sender" if is_sender else "receiver"
        if isinstance(option, AtMostOnce):
            presettled = True
        elif isinstance(option, AtLeastOnce):
            presettled = False
        elif isinstance(option, _TerminusOption):
            if not option.test(_Kind(is_sender)):
                raise ValueError(f"{type(option).__name__} is an option for a "
                                 f"{'receiver' if is_sender else 'sender'}, not a {kind}")
            for key, value in option.fields(is_sender).items():
                if key == "filters":
                    value = {**fields.get("filters", {}), **value}
                fields[key] = value
        else:
            raise _not_yet(f"the custom link option {type(option).__name__} (link options "
                           "that set terminus fields through proton's objects)")
    return presettled, fields


class _Kind:
    """What LinkOption.test() is asked about before the link exists."""

    def __init__(self, is_sender: bool) -> None:
        self.is_sender = is_sender
        self.is_receiver = not is_sender


# ---- deliveries -----------------------------------------------------------------------------


class _DeliveryStates:
    __slots__ = ()
    RECEIVED = p.RECEIVED
    ACCEPTED = p.ACCEPTED
    REJECTED = p.REJECTED
    RELEASED = p.RELEASED
    MODIFIED = p.MODIFIED


class Tracker(_links.Tracker, _DeliveryStates):
    """A sent message (proton's sender-side Delivery): `tag`, `remote_state` (None until
    the peer's outcome; Tracker.ACCEPTED ...), `settled` (the peer settled it), `link`.
    Attributes may be added (kept with it until its callbacks ran)."""

    __slots__ = ("link", "tag", "local_state", "__dict__")

    link: Sender
    tag: Any
    local_state: int | None

    @property
    def remote_state(self) -> int | None:
        state = self.state
        return state or None  # SENT_SETTLED (pre-settled, written) is no outcome

    @property
    def remote_condition(self) -> p.Condition | None:
        return self.condition

    @property
    def connection(self) -> Connection:
        return self.link.connection

    def update(self, state: int) -> None:
        self.local_state = state

    def settle(self) -> None:
        """Nothing more to do: the worker settled it as soon as the peer's outcome came."""

    def __repr__(self) -> str:
        return f"<Tracker tag={self.tag!r} settled={self.settled} outcome={self.outcome}>"


class Delivery(_links.Delivery, _DeliveryStates):
    """A received message: settle it with accept() / reject() / release() / modify(),
    or update(state) then settle(); `settled` (by us or pre-settled by the sender),
    `link` (its Receiver), `tag`. Attributes may be added."""

    __slots__ = ("link", "local_state", "__dict__")

    link: Receiver
    local_state: int | None

    @property
    def tag(self) -> bytes:
        """The delivery's number on its link, as bytes (the wire tag stays in the worker)."""
        return str(self.id).encode()

    @property
    def remote_state(self) -> None:
        return None

    @property
    def connection(self) -> Connection | None:
        return self.link.connection

    def reject(self, condition: str | None = None, description: str = "") -> None:
        if condition is None:
            self._dispose(p.REJECTED, None)
        else:
            super().reject(condition, description)

    def update(self, state: int) -> None:
        self.local_state = state

    def settle(self) -> None:
        """Settle with the state given to update() (ACCEPTED if none)."""
        state = self.local_state or p.ACCEPTED
        if state == p.MODIFIED:
            self.modify()
        elif state in (p.ACCEPTED, p.REJECTED, p.RELEASED):
            self._dispose(state, None)
        else:
            raise ValueError(f"cannot settle a received message with state {state!r}")

    def __repr__(self) -> str:
        return f"<Delivery id={self.id} settled={self.settled}>"


# ---- endpoints ------------------------------------------------------------------------------


class Session:
    """A session of a connection: its default one (``link.session``), or one of its own
    from ``connection.session()`` (proton's call), begun on each shard when it is opened
    or its first link is created (``create_sender(session, ...)``), with its
    `incoming_capacity` (bytes the peer may send ahead) and `outgoing_window` (transfers)
    as set before. `connection`, `state`, close()."""

    def __init__(self, connection: Connection, explicit: bool = False) -> None:
        self.connection = connection
        self.explicit = explicit
        self.incoming_capacity = 0  # 0: proton's default
        self.outgoing_window = 0
        self._state: SessionState | None = None
        self._links: list[Any] = []

    @property
    def state(self) -> int:
        if self.explicit and self._state is not None and self._state.ended:
            return LOCAL_CLOSED | REMOTE_CLOSED
        return self.connection.state

    def open(self) -> None:
        """Begin it on the connection's shards (the first link does, if not yet)."""
        self._begun()

    def _begun(self) -> SessionState | None:
        """Its core state, begun now if it was not (None for the default session)."""
        if not self.explicit:
            return None
        if self._state is None:
            connection = self.connection
            driver = connection.container._ensure_driver()
            if connection._state is None:
                raise _not_yet("sessions of an inbound connection (a listener's peer)")
            check_windows(self.incoming_capacity, self.outgoing_window)
            with driver.lock:
                self._state = driver.core.begin_session(
                    connection._state, self.incoming_capacity, self.outgoing_window)
        return self._state

    def close(self) -> None:
        """Close its links (the default session's: every link of the connection), and
        end it."""
        for link in list(self._links if self.explicit else self.connection._links):
            link.close()
        driver = self.connection.container._driver
        if self.explicit and self._state is not None and driver is not None:
            with driver.lock:
                driver.core.end_session(self._state)


class Connection:
    """A connection of the event-driven face (K AMQP connections with ``shards=K``).

    `container`, `url`, `hostname`, `remote_container` (once open), `remote_condition`
    (once the peer closed it with an error), `state` (proton's Endpoint bits), `shards`;
    ``close()``. A connection a peer opened to one of our listeners is one too (its
    `inbound`): its links share it, and closing it closes that AMQP connection. On such a
    connection ``on_connection_opening`` may set `offered_capabilities`,
    `desired_capabilities` (a symbol, or a list of them) and `properties` (a dict): our
    answer to the peer's open carries them.
    """

    def __init__(self, container: Container, state: ConnectionState | None,
                 url: URL | None, handler: Any) -> None:
        self.container = container
        self.handler = handler
        self._state = state
        self.url = str(url) if url is not None else None
        self.hostname = url.host if url is not None else None
        self.remote_container: str | None = None
        self.remote_condition: p.Condition | None = None
        self._links: list[Sender | Receiver] = []
        self._session = Session(self)
        self._closing = False  # closed locally
        self._opened_fired = False
        self._closing_fired = False
        self._ended = False  # every shard closed or failed; callbacks done
        self._transport_failed: set[Shard | None] = set()  # None: an inbound connection
        self._inbound: InboundConnection | None = None  # a peer's, to our listener
        self._open_settings: dict[str, Any] = {}  # what our open to an inbound peer carries
        self._open_answered = False
        # Closing, it waits (until this timer) for pre-settled messages not yet written.
        self._close_timer: Task | None = None

    offered_capabilities = _OpenSetting(_symbol_list)
    desired_capabilities = _OpenSetting(_symbol_list)
    properties = _OpenSetting(_properties)

    def _set_open(self, name: str, value: Any) -> None:
        if self._inbound is None:
            raise _not_yet(f"{name} on a connection we open (set it on an inbound "
                           "connection in on_connection_opening)")
        if self._open_answered:
            raise ValueError(f"{name} is set in on_connection_opening: the peer's open "
                             "was answered already")
        self._open_settings[name] = value

    def _open_answer(self) -> tuple[list[str] | None, list[str] | None, bytes | None]:
        """What our open answers an inbound peer's with (AcceptConnection's fields)."""
        self._open_answered = True
        properties = self.properties
        return (self.offered_capabilities, self.desired_capabilities,
                codec.encode(_symbol_keys(properties)) if properties else None)

    @property
    def shards(self) -> int:
        return len(self._state.shards) if self._state is not None else 1

    @property
    def state(self) -> int:
        local = LOCAL_CLOSED if self._closing else LOCAL_ACTIVE
        if self._ended or (self._state is not None and any(
                s.closed for s in self._state.shards)) or (
                self._inbound is not None and self._inbound.closed):
            return local | REMOTE_CLOSED
        return local | (REMOTE_ACTIVE if self._opened_fired else REMOTE_UNINIT)

    def session(self) -> Session:
        """A new session of this connection (proton's): its links go on it, apart from
        the default session's (which ``link.session`` of other links is)."""
        return Session(self, explicit=True)

    def _remote(self) -> p.ConnectionOpened | None:
        if self._inbound is not None:
            return self._inbound.remote
        for shard in self._state.shards if self._state is not None else ():
            if shard.remote is not None:
                return shard.remote
        return None

    @property
    def remote_offered_capabilities(self) -> list[str] | None:
        """The capabilities the peer's open offers (e.g. ANONYMOUS-RELAY), as proton."""
        remote = self._remote()
        return remote.remote_offered_capabilities if remote is not None else None

    @property
    def remote_desired_capabilities(self) -> list[str] | None:
        remote = self._remote()
        return remote.remote_desired_capabilities if remote is not None else None

    @property
    def remote_properties(self) -> dict[str, Any] | None:
        remote = self._remote()
        if remote is None or remote.remote_properties is None:
            return None
        return decode_properties(remote.remote_properties)

    @property
    def remote_hostname(self) -> str | None:
        """The hostname (virtual host) of the peer's open."""
        remote = self._remote()
        return remote.remote_hostname if remote is not None else None

    @property
    def security(self) -> p.Security:
        """What the connection negotiated (TLS protocol, cipher, peer certificate
        subject, SASL mechanism, user): on an inbound connection, the user the peer
        authenticated as."""
        if self._inbound is not None:
            return self._inbound.security or p.Security()
        for shard in self._state.shards if self._state is not None else ():
            if shard.security is not None:
                return shard.security
        return p.Security()

    def close(self) -> None:
        """Close the connection (every shard); ``on_connection_closed`` follows once the
        peer confirms. Inside on_message it takes effect once that message is settled."""
        if self._closing:
            return
        self._closing = True
        self.container._soon(self._close_now)

    def _close_now(self) -> None:
        state = self._state
        driver = self.container._driver
        inbound = self._inbound
        if state is None and inbound is None:  # an inbound link's stand-in: detach it
            for link in list(self._links):
                link._closing = True
                link._close_now()
            return
        if driver is None or driver.closed:
            return
        with driver.lock:
            driver.core.hand_over_dirty()
            if self._unwritten_presettled() and not (
                    self._close_timer is not None and self._close_timer.fired):
                # A proton handler that sends while `credit` lasts and then closes has its
                # messages written first; here `credit` is the window, which may run ahead
                # of the peer's credit: wait for the worker to write them, boundedly.
                if self._close_timer is None:
                    self._close_timer = self.container.schedule(
                        _links.CLOSE_TIMEOUT, _CloseAnyway(self))
                return
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None  # closed: later outcomes close nothing again
            if inbound is not None:
                driver.core.close_inbound(inbound)
            elif state is not None:
                driver.core.close_connection(state)

    def _unwritten_presettled(self) -> bool:
        """Has a pre-settled sender of this connection messages its worker has not yet
        written (they wait for the peer's credit)?"""
        return any(type(link) is Sender and link._state.presettled
                   and not link._state.all_settled() for link in self._links)

    def _written(self) -> None:
        """Outcomes came for a sender of this connection: close it if it waits for them."""
        if self._close_timer is not None and not self._unwritten_presettled():
            self._close_now()

    def _finished(self) -> bool:
        state = self._state
        if self._inbound is not None:
            return self._inbound.closed or self._inbound.slot.failure is not None
        if state is None:
            return all(link._ended for link in self._links)
        return all(s.closed or s.slot.failure is not None for s in state.shards)

    def __repr__(self) -> str:
        return f"<Connection {self.url} shards={self.shards}>"


class _Link:
    is_sender = False
    is_receiver = False

    def __init__(self, connection: Connection, handler: Any, name: str | None) -> None:
        self.connection = connection
        self.container = connection.container
        self.handler = handler
        self.name = name
        self.remote_condition: p.Condition | None = None
        self._closing = False
        self._opened_fired = False
        self._closing_fired = False
        self._ended = False
        self._shard_of: dict[Any, Shard | None] = {}
        self._on_session: Session | None = None

    @property
    def session(self) -> Session:
        """The session it is on: the connection's default one, or the one it was
        created on (``create_sender(session, ...)``)."""
        return self._on_session or self.connection._session

    @property
    def _core_links(self) -> list[Any]:
        raise NotImplementedError

    @property
    def state(self) -> int:
        local = LOCAL_CLOSED if self._closing else LOCAL_ACTIVE
        links = self._core_links
        if self._ended or any(x.closed for x in links):
            return local | REMOTE_CLOSED
        return local | (REMOTE_ACTIVE if self._opened_fired else REMOTE_UNINIT)

    def close(self) -> None:
        """Detach the link (every shard's); ``on_link_closed`` follows once the peer
        confirms. Inside on_message it takes effect once that message is settled."""
        if self._closing:
            return
        self._closing = True
        self.container._soon(self._close_now)

    def _close_now(self) -> None:
        raise NotImplementedError

    def _finished(self) -> bool:
        return all(x.closed or x.slot.failure is not None for x in self._core_links)


class Sender(_Link):
    """Sends messages; ``send()`` returns a Tracker. `credit`: how many more messages the
    window takes now (`window` per shard's link, less those in flight)."""

    is_sender = True

    def __init__(self, connection: Connection, state: SenderState, handler: Any,
                 name: str | None, tags: Iterator[Any] | None) -> None:
        super().__init__(connection, handler, name)
        self._state = state
        self.target = p.Terminus(address=state.address)
        self.source = p.Terminus()
        self._tags = tags
        self._count = itertools.count(1)
        self._trackers: dict[SenderLink, dict[int, Tracker]] = {}
        self._detach_when_settled = False

    @property
    def _core_links(self) -> list[Any]:
        return self._state.links

    @property
    def address(self) -> str | None:
        return self._state.address

    @property
    def remote_target(self) -> p.Terminus | None:
        return next((x.remote_target for x in self._state.links if x.opened), None)

    @property
    def remote_source(self) -> p.Terminus | None:
        """The peer's source (an inbound link's: the node its receiver reads from)."""
        return next((x.remote_source for x in self._state.links if x.opened), None)

    window = _links.SenderView.window  # messages each link keeps in flight; may be changed

    @property
    def credit(self) -> int:
        if self._closing:
            return 0
        window = self._state.window
        return sum(max(0, window - x.unsettled) for x in self._state.links
                   if x.opened and x.failure is None and not x.parts_busy)

    @property
    def unsettled(self) -> list[Tracker]:
        """Messages sent and not settled yet (with a failed shard's, kept)."""
        return [t for by_seq in self._trackers.values() for t in by_seq.values()]

    def _send_in(self, txn: TransactionState, message: Message | bytes, tag: Any) -> Tracker:
        """send() in a transaction (Transaction.send): on the link of the transaction's
        shard, alone in its Send."""
        driver = self.container._driver
        if self._closing or driver is None:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        payload = (message.encode() if isinstance(message, Message)
                   else _links.encode_body(message))
        if len(payload) > driver.core.fragment:
            raise MessageTooLarge("a message in a transaction must fit one ring record "
                                  f"({driver.core.fragment} bytes encoded)")
        with driver.lock:
            transactions = Transactions(driver.core)
            link = transactions.link_on(txn, self._state.links)
            batch = transactions.send(txn, link, payload)
        return self._track(link, batch, 0, tag)

    def _track(self, link: SenderLink, batch: Any, index: int, tag: Any) -> Tracker:
        tracker = Tracker(batch, index)
        tracker.link = self
        tracker.local_state = None
        if tag is None:
            tag = next(self._tags) if self._tags is not None else str(next(self._count))
        tracker.tag = tag
        if not self._state.presettled:
            self._trackers.setdefault(link, {})[batch.first + index] = tracker
        self.container._sent.add(self)
        return tracker

    def send(self, message: Message | bytes, tag: Any = None) -> Tracker:
        """Send `message` (a Message, or bytes as the body); returns its Tracker.

        It goes with the other messages sent in the same pass of the loop. A sender whose
        window is full still takes it (as proton buffers beyond credit)."""
        if self._closing:
            raise LinkDetached(f"sender to {self.address!r} is closed")
        container = self.container
        driver = container._driver
        assert driver is not None
        state = self._state
        if isinstance(message, Message):
            payload = message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = _links.encode_body(message)
        else:
            raise TypeError(f"send() takes a Message or bytes, not {type(message).__name__}")
        large = len(payload) > driver.core.fragment
        with driver.lock:
            link = state.pick()
            if link is None:  # every window full: a live link takes it anyway
                link = next((x for x in state.links[state.current:] + state.links
                             if x.failure is None and not (large and x.parts_busy)), None)
            if link is None:
                raise (LinkDetached(f"sender to {self.address!r} has no live link")
                       if all(x.failure for x in state.links) else
                       RuntimeError("every link of this sender is handing a large message "
                                    "over: send the next one from on_sendable"))
            state.check_size(payload, link)
            if large:
                batch, parts = link.parts(payload, driver.core.fragment)
                index = 0
            else:
                batch, index = link.add(payload)
                if index + 1 >= SEND_BATCH:
                    link.hand_over()
                    state.rotate()
                else:
                    driver.core.mark_dirty(link)
        if large:  # its parts go as the worker takes them, from the loop's passes
            container._start(_ops.hand_over_parts(driver, link, batch, parts))
        return self._track(link, batch, index, tag)

    def _close_now(self) -> None:
        """Detach once every message sent is settled (as the blocking Sender.close()
        flushes first): their outcomes still reach on_accepted ..., which a detach would
        cut off (an amqscale listener cannot settle a message whose link is gone)."""
        driver = self.container._driver
        state = self._state
        state.closed = True
        if driver is None or driver.closed:
            return
        with driver.lock:
            if not state.all_settled():
                for link in state.links:
                    link.hand_over()
                self._detach_when_settled = True
                return
            self._detach_when_settled = False
            driver.core.close_links(state.links)

    def __repr__(self) -> str:
        return f"<Sender to {self.address!r} credit={self.credit}>"


class Receiver(_Link):
    """Receives messages (``on_message``). With ``prefetch=0`` grant credit with
    ``flow(n)``; otherwise the container keeps `prefetch` granted."""

    is_receiver = True

    def __init__(self, connection: Connection, state: ReceiverState, handler: Any,
                 name: str | None, prefetch: int, auto_accept: bool,
                 links: list[ReceiverLink] | None = None) -> None:
        super().__init__(connection, handler, name)
        self._state = state
        # An inbound link's Receiver has that one link of the listener's shared state.
        self._links = links
        self.prefetch = prefetch
        self.auto_accept = auto_accept
        self.source = p.Terminus(address=state.address)
        self.target = p.Terminus()
        self._in_workers: _links.HandlerReceiverView | None = None

    @property
    def worker_handler(self) -> str | None:
        """The import path of the handler that takes its messages inside the workers
        (``create_receiver(worker_handler=...)``), or None."""
        return self._state.handler

    def counts(self) -> dict[int, dict[str, int]]:
        """What the workers' handlers did, by worker index (handled, accepted, rejected,
        released, modified); only for a receiver with a worker_handler."""
        return self._worker_view().counts()

    @property
    def failures(self) -> list[Any]:
        """A `HandlerFailed` (with the worker's traceback) for each link whose worker
        handler raised; only for a receiver with a worker_handler."""
        return self._worker_view().failures

    def _worker_view(self) -> _links.HandlerReceiverView:
        if self._in_workers is None:
            raise TypeError("this receiver's messages come to on_message: counts() and "
                            "failures are for create_receiver(worker_handler=...)")
        return self._in_workers

    @property
    def _core_links(self) -> list[Any]:
        return self._links if self._links is not None else list(self._state.links.values())

    @property
    def address(self) -> str | None:
        """The source address (an inbound link's: the address its peer sends to; a
        dynamic source's: the one the peer gave it, once attached)."""
        if self._links is not None:
            return self.target.address
        if self.source.dynamic:
            remote = self.remote_source
            return remote.address if remote is not None else None
        return self.source.address

    @property
    def remote_source(self) -> p.Terminus | None:
        return next((x.remote_source for x in self._core_links if x.opened), None)

    @property
    def remote_target(self) -> p.Terminus | None:
        """The peer's target (an inbound link's: the address its sender sends to)."""
        return next((x.remote_target for x in self._core_links if x.opened), None)

    @property
    def queued(self) -> int:
        """Messages received and not dispatched yet."""
        links = set(self._core_links)
        return sum(len(a.payloads) for a in self._state.buffer if a.link in links)

    def flow(self, n: int) -> None:
        """Grant `n` more credit (shared among the shards' links)."""
        self._grant(n, False)

    def drain(self, n: int) -> None:
        """Grant `n` more credit in drain mode: the peer sends what it has, then gives the
        rest of the credit back. (The container's prefetch keeps topping up after it.)"""
        self._grant(n, True)

    def _grant(self, n: int, drain: bool) -> None:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"credit must be a non-negative int, not {n!r}")
        driver = self.container._driver
        if self._closing or driver is None or driver.closed:
            raise LinkDetached(f"the receiver from {self.address!r} is closed")
        with driver.lock:
            if self._links is None:
                driver.core.flow(self._state, n, drain)
            else:
                for link in self._links:
                    if link.failure is None:
                        link.hand_over()
                        link.slot.queue(p.Flow(link.id, n, drain))

    def _close_now(self) -> None:
        driver = self.container._driver
        if driver is None or driver.closed:
            return
        links = self._core_links
        with driver.lock:
            if self._links is None:
                self._state.closed = True
                driver.core.release_untaken(self._state)
            else:  # one inbound link of a listener: release what it has buffered
                self._release_buffered(links)
            driver.core.close_links(links)

    def _release_buffered(self, links: list[ReceiverLink]) -> None:
        state = self._state
        kept: deque[Arrival] = deque()
        position = state.position
        for i, arrival in enumerate(state.buffer):
            start = position if i == 0 else 0
            if arrival.link in links:
                ids = arrival.take_unsettled(start, len(arrival.payloads))
                if ids and arrival.link.failure is None:
                    arrival.link.settle_now(p.Settle(arrival.link.id, ids, p.RELEASED))
                if i == 0:
                    state.position = 0
            else:
                kept.append(arrival)
        state.buffer = kept

    def __repr__(self) -> str:
        return f"<Receiver from {self.address!r}>"


class Transaction:
    """A local transaction (``Container.declare_transaction``), as proton's: ``send``,
    ``accept`` / ``update`` take part, ``commit()`` / ``abort()`` end it; the handler
    hears ``on_transaction_declared``, ``on_transaction_committed``,
    ``on_transaction_aborted``, ``on_transaction_declare_failed``,
    ``on_transaction_commit_failed``."""

    def __init__(self, container: Container, connection: Connection,
                 state: TransactionState, handler: Any) -> None:
        self.container = container
        self.connection = connection
        self.handler = handler
        self._state = state
        self._told: set[str] = set()
        self._done = False

    @property
    def id(self) -> bytes | None:
        return self._state.id

    @property
    def failure(self) -> Exception | None:
        """Why it failed (TransactionError), in the ``*_failed`` callbacks."""
        return self._state.failure

    def _handlers(self) -> list[Any]:
        if self.handler is not None:
            return [self.handler]
        return self.container._handlers_of(self.connection)

    def _news(self) -> list[str]:
        """The callbacks its state now calls for, each once."""
        state = self._state
        names: list[str] = []
        if state.declared and "declared" not in self._told:
            self._told.add("declared")
            if state.failure is not None:
                self._done = True
                return ["transaction_declare_failed"]
            names.append("transaction_declared")
        if state.discharge is not None and state.discharged and not self._done:
            self._done = True
            if state.failure is not None:
                names.append("transaction_commit_failed")
            else:
                names.append("transaction_aborted" if state.fail else
                             "transaction_committed")
        return names

    def send(self, sender: Sender, message: Message | bytes, tag: Any = None) -> Tracker:
        """Send `message` on `sender` in the transaction; its Tracker as send()'s."""
        return sender._send_in(self._state, message, tag)

    def accept(self, delivery: Delivery) -> None:
        """Accept `delivery` in the transaction (settled now; in effect at the commit)."""
        self.update(delivery, Delivery.ACCEPTED)

    def update(self, delivery: Delivery, state: int) -> None:
        """Settle `delivery` with `state` in the transaction."""
        driver = self.container._driver
        assert driver is not None
        arrival = delivery._arrival
        arrival.check_live()
        if delivery.settled:
            raise ValueError("the delivery is settled already")
        with driver.lock:
            Transactions(driver.core).settle(self._state, arrival.link, [delivery.id], state)
            arrival.settled[delivery._index] = 1

    def commit(self) -> None:
        self._discharge(False)

    def abort(self) -> None:
        self._discharge(True)

    def _discharge(self, fail: bool) -> None:
        driver = self.container._driver
        assert driver is not None
        with driver.lock:
            Transactions(driver.core).discharge(self._state, fail)

    def __repr__(self) -> str:
        return f"<Transaction {self._state.state} id={self.id!r}>"


class Acceptor:
    """What ``container.listen`` returns: `url`, `port`, ``close()``."""

    def __init__(self, container: Container, state: ListenerState) -> None:
        self.container = container
        self._state = state
        self.host = state.host
        self.closed = False

    @property
    def port(self) -> int | None:
        return self._state.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"amqp://{host}:{self.port}"

    def close(self) -> None:
        """Stop accepting; inbound links are detached (what they delivered and was not
        dispatched is released)."""
        if self.closed:
            return
        self.closed = True
        # Inside on_message, after the message is settled (auto-accept goes first, as
        # with proton), not before: a detached link could only release it.
        self.container._soon(self._close_now)

    def _close_now(self) -> None:
        container = self.container
        driver = container._driver
        if driver is None or driver.closed:
            return
        # Its remote receivers' links detach once what was sent on them is settled (as
        # Sender.close()): their outcomes still reach on_accepted ...
        senders = [container._senders.get(x.links[0]) for x in self._state.senders]
        for sender in senders:
            if sender is not None and not sender._closing:
                sender._closing = True
                sender._close_now()
        with driver.lock:
            driver.core.close_listener(self._state, senders=False)


# ---- the container --------------------------------------------------------------------------


class Container:
    """The event-driven Container: ``Container(handler).run()`` (proton.reactor's role).

    `workers`: worker processes (default: one per core), started on the first connect()
    or listen(); `restart_workers` as for amqscale.Container. ``run()`` returns when
    ``stop()`` is called or nothing is left to do (no
    open connection or listener, no timer, no open injector); it then closes what is still
    open (waiting up to SHUTDOWN_TIMEOUT for the peers) and stops the workers. An
    exception raised in a callback ends run() the same way, then propagates.
    """

    def __init__(self, *handlers: Any, workers: int | None = None,
                 container_id: str | None = None, restart_workers: bool = True) -> None:
        for handler in handlers:
            if isinstance(handler, str):
                raise TypeError("Container(*handlers): pass the id as container_id=..., "
                                f"not as a handler ({handler!r})")
        self.handlers = list(handlers)
        self.container_id = container_id or str(uuid.uuid4())
        self.ssl = SSLConfig()  # proton's container.ssl: the amqps:// defaults
        self._workers = workers
        self._restart_workers = bool(restart_workers)
        self._driver: Driver | None = None
        self._observed: deque[tuple[Any, p.Event | None]] = deque()
        self._loop_thread: int | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._timers: list[tuple[float, int, Task]] = []
        self._timer_seq = itertools.count()
        self._injectors: list[EventInjector] = []
        self._connections: list[Connection] = []
        self._acceptors: list[Acceptor] = []
        self._by_shard: dict[Shard, Connection] = {}
        self._senders: dict[SenderLink, Sender] = {}
        # Transactions waiting for news from their coordinator link.
        self._transactions: dict[SenderLink, list[Transaction]] = {}
        self._receivers: dict[ReceiverLink, Receiver] = {}
        self._inbound: list[Receiver | Sender] = []  # a listener's links
        # Connections peers opened to our listeners, by the worker's id of each.
        self._inbound_conns: dict[int, Connection] = {}
        self._sendable: dict[Sender, None] = {}  # senders to look at for on_sendable
        self._sent: set[Sender] = set()  # senders that sent in this pass
        self._steps: list[tuple[_ops.Steps[Any], _ops.Wait]] = []  # waiting for the workers
        self._stopping = False
        self._dispatching_message = 0
        self._deferred: list[Any] = []

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Dispatch events until stop() or nothing is left to do (see the class)."""
        self._stopping = False
        self._loop_thread = threading.get_ident()
        try:
            self._dispatch(self.handlers, "start", Event("start", self))
            while not self._stopping:
                self._pass()
                if self._stopping or self._done():
                    break
                self._flush()
                self._sleep()
        finally:
            self._loop_thread = None
            self._shutdown()

    def stop(self) -> None:
        """End run() (from a callback, or any thread): what is open is then closed and
        the workers stop, once the current callback returns."""
        self._stopping = True
        self._wake()

    def _pass(self) -> None:
        """One pass: callbacks for what the core applied, sendables, timers, injectors."""
        observed = self._observed
        while observed and not self._stopping:
            target, event = observed.popleft()
            self._apply(target, event)
        if self._steps:
            self._advance_steps()
        for sender in list(self._sendable):
            if self._stopping:
                return
            del self._sendable[sender]
            if sender._opened_fired and not sender._closing and sender.credit > 0:
                self._dispatch(self._handlers_of(sender), "sendable",
                               Event("sendable", self, link=sender))
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now and not self._stopping:
            task = heapq.heappop(timers)[2]
            if not task.cancelled:
                task.fired = True
                handlers = [task.handler] if task.handler is not None else self.handlers
                self._dispatch(handlers, "timer_task", Event("timer_task", self, task=task))
        for injector in list(self._injectors):
            for injected in injector._take():
                if self._stopping:
                    return
                injected.container = self
                self._dispatch(self.handlers, injected.type, injected)
            if injector.closed and not injector._events:
                self._injectors.remove(injector)
                injector._close_fds()

    def _start(self, steps: _ops.Steps[Any]) -> None:
        """Run `steps` (``amqscale._ops``) from the loop's passes: each goes on once what
        it waits for is ready; the loop does not wait for it otherwise."""
        with contextlib.suppress(StopIteration):
            self._steps.append((steps, next(steps)))

    def _advance_steps(self) -> None:
        waiting = []
        for steps, wait in self._steps:
            try:
                while wait.ready():
                    wait = steps.send(None)
            except StopIteration:
                continue
            waiting.append((steps, wait))
        self._steps = waiting

    def _done(self) -> bool:
        if self._observed or self._sendable or self._injectors or self._steps:
            return False
        if any(not task.cancelled for _, _, task in self._timers):
            return False
        if any(not a.closed and a._state.failure is None for a in self._acceptors):
            return False
        if any(not r._ended for r in self._inbound):
            return False
        return all(c._ended for c in self._connections)

    def _flush(self) -> None:
        """What the callbacks did goes to the workers: one batch per link."""
        driver = self._driver
        if driver is None or driver.closed:
            return
        for sender in self._sent:
            if sender._state.links:
                sender._state.rotate()  # the next pass's messages start on the next shard
        self._sent.clear()
        driver.flush()

    def _sleep(self) -> None:
        """Until a worker publishes or dies, the next timer, an injector or a wake-up."""
        if self._observed or self._sendable or any(i._events or i.closed
                                                   for i in self._injectors):
            timeout: float | None = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        else:
            timeout = None
        fds = [self._wake_read] + [i.fileno() for i in self._injectors]
        driver = self._driver
        if driver is not None and not driver.closed:
            driver.pump(timeout, fds)
        elif timeout != 0:
            select.select(fds, [], [], timeout)
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 4096):
                pass

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"!")

    def _shutdown(self) -> None:
        """Close what is still open, wait (bounded) for the peers, stop the workers."""
        driver = self._driver
        try:
            if driver is not None and not driver.closed:
                with driver.lock:
                    driver.core.hand_over_dirty()
                    for acceptor in self._acceptors:
                        if not acceptor.closed:
                            acceptor.closed = True
                            driver.core.close_listener(acceptor._state)
                    for connection in self._connections:
                        if connection._state is not None and not connection._finished():
                            connection._closing = True
                            driver.core.close_connection(connection._state)
                with contextlib.suppress(Exception):
                    driver.write_all(timeout=1.0)
                deadline = time.monotonic() + SHUTDOWN_TIMEOUT
                while time.monotonic() < deadline and not all(
                        c._finished() for c in self._connections):
                    try:
                        driver.pump(min(0.1, max(0.0, deadline - time.monotonic())))
                    except Exception:  # stopping: what failed to apply no longer matters
                        log.debug("while stopping", exc_info=True)
        finally:
            self._driver = None
            if driver is not None:
                driver.close()
            self._observed.clear()
            self._connections.clear()
            self._acceptors.clear()
            self._by_shard.clear()
            self._senders.clear()
            self._receivers.clear()
            self._inbound.clear()
            self._inbound_conns.clear()
            self._sendable.clear()
            self._sent.clear()
            self._deferred.clear()

    def __del__(self) -> None:
        driver = getattr(self, "_driver", None)
        if driver is not None and not driver.closed:
            with contextlib.suppress(Exception):
                driver.close()
        for fd in (getattr(self, "_wake_read", None), getattr(self, "_wake_write", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # ---- dispatch -------------------------------------------------------------------------

    def _dispatch(self, handlers: Iterable[Any], name: str, event: Event) -> None:
        for handler in handlers:
            dispatch(handler, name, event)

    def _handlers_of(self, endpoint: Any) -> list[Any]:
        """A link's handler, else its connection's, else the container's (as proton)."""
        handler = getattr(endpoint, "handler", None)
        if handler is None and isinstance(endpoint, _Link):
            handler = endpoint.connection.handler
        return [handler] if handler is not None else self.handlers

    def _soon(self, action: Any) -> None:
        """Run `action` now, or after the message being dispatched is settled."""
        if self._dispatching_message:
            self._deferred.append(action)
        else:
            action()

    def _observe(self, target: Any, event: p.Event | None) -> None:
        """The core's observer (under the driver's lock; maybe in the watcher thread)."""
        self._observed.append((target, event))
        if threading.get_ident() != self._loop_thread:
            self._wake()

    def _apply(self, target: Any, event: p.Event | None) -> None:
        kind = type(target)
        if kind is Shard:
            connection = self._by_shard.get(target)
            if connection is not None:
                self._on_shard(connection, target, event)
        elif kind is SenderLink and target in self._transactions:
            self._on_coordinator(target)
        elif kind is SenderLink:
            sender = self._senders.get(target)
            if sender is None and type(event) is p.LinkOpened and event.inbound:
                sender = self._on_inbound_sender(target, event)
            if sender is not None:
                self._on_sender(sender, target, event)
        elif kind is ReceiverLink:
            receiver = self._receivers.get(target)
            if receiver is None and type(event) is p.LinkOpened and event.inbound:
                receiver = self._on_inbound(target, event)
            if receiver is not None:
                self._on_receiver(receiver, target, event)
        elif kind is InboundConnection:
            self._on_inbound_connection(target, event)
        elif kind is WorkerSlot:
            self._on_worker_died(target)

    # ---- connections ----------------------------------------------------------------------

    def _on_shard(self, connection: Connection, shard: Shard, event: p.Event | None) -> None:
        handlers = self._handlers_of(connection)
        if type(event) is p.ConnectionOpened:
            connection.remote_container = event.remote_container
            state = connection._state
            assert state is not None
            if not connection._opened_fired and all(
                    s.opened or s.failure is not None for s in state.shards):
                connection._opened_fired = True
                self._dispatch(handlers, "connection_opened",
                               Event("connection_opened", self, connection))
                self._dispatch(handlers, "session_opened",
                               Event("session_opened", self, connection))
        elif type(event) is p.ConnectionClosed and (
                shard.failure is None and not shard.closed and not connection._closing):
            self._on_lost(connection, shard, event.condition)
        elif type(event) is p.ConnectionClosed:
            condition = event.condition
            if not connection._closing and (
                    not shard.opened
                    or (condition is not None and condition.name in _TRANSPORT_CONDITIONS)):
                self._transport_failed(connection, shard, condition or p.Condition(
                    "amqp:connection:failed", "the connection failed"))
            elif not connection._closing and not connection._closing_fired:
                connection._closing_fired = True
                settings = messaging_handler(handlers)
                as_error = condition is not None or (
                    settings is not None and settings.peer_close_is_error)
                connection.remote_condition = condition
                name = "connection_error" if as_error else "connection_closing"
                self._dispatch(handlers, name, Event(name, self, connection))
            self._maybe_ended(connection)

    def _on_lost(self, connection: Connection, shard: Shard,
                 condition: p.Condition | None) -> None:
        """A shard was lost and is being opened again (proton's order: on_disconnected,
        then on_connection_opened, on_link_opened and on_sendable once it is back)."""
        connection._opened_fired = False
        for link in connection._links:
            if shard in link._shard_of.values():
                link._opened_fired = False
        transport = Transport(connection, condition or p.Condition(
            "amqp:connection:failed", "the connection was lost"), None)
        self._dispatch(self._handlers_of(connection), "disconnected",
                       Event("disconnected", self, connection, transport=transport))

    def _on_inbound_connection(self, state: InboundConnection, event: p.Event | None
                               ) -> None:
        """A peer opened a connection to one of our listeners (on_connection_opening,
        then our open answers the peer's with what it set, then on_connection_opened),
        or it ended."""
        if type(event) is p.ConnectionOpened:
            connection = Connection(self, None, None, None)
            connection._inbound = state
            connection.remote_container = state.remote_container
            self._inbound_conns[state.id] = connection
            handlers = self.handlers
            self._dispatch(handlers, "connection_opening",
                           Event("connection_opening", self, connection))
            driver = self._driver
            assert driver is not None
            with driver.lock:
                driver.core.accept_connection(state, *connection._open_answer())
            connection._opened_fired = True
            self._dispatch(handlers, "connection_opened",
                           Event("connection_opened", self, connection))
            self._dispatch(handlers, "session_opened",
                           Event("session_opened", self, connection))
        elif type(event) is p.ConnectionClosed:
            connection = self._inbound_conns.get(state.id)  # type: ignore[assignment]
            if connection is not None:
                self._inbound_connection_ended(connection, event.condition)

    def _inbound_connection_ended(self, connection: Connection,
                                  condition: p.Condition | None) -> None:
        """An inbound connection closed (by either side) or its transport failed: its
        links end with it (on_connection_closing, or on_disconnected when it dropped)."""
        state = connection._inbound
        assert state is not None
        self._inbound_conns.pop(state.id, None)
        if connection._ended:
            return
        for link in list(connection._links):
            self._link_ended(link)
        handlers = self._handlers_of(connection)
        failed = condition is not None and condition.name in _TRANSPORT_CONDITIONS
        if condition is not None and failed:
            self._transport_failed(connection, None, condition)
        elif not connection._closing:
            settings = messaging_handler(handlers)
            as_error = condition is not None or (
                settings is not None and settings.peer_close_is_error)
            connection.remote_condition = condition
            connection._closing_fired = True
            name = "connection_error" if as_error else "connection_closing"
            self._dispatch(handlers, name, Event(name, self, connection))
        connection._ended = True
        if not failed:
            self._dispatch(handlers, "connection_closed",
                           Event("connection_closed", self, connection))

    def _transport_failed(self, connection: Connection, shard: Shard | None,
                          condition: p.Condition) -> None:
        if shard in connection._transport_failed:
            return
        connection._transport_failed.add(shard)
        handlers = self._handlers_of(connection)
        error = shard.failure if shard is not None else None  # None: an inbound one
        transport = Transport(connection, condition, error)
        self._dispatch(handlers, "transport_error",
                       Event("transport_error", self, connection, transport=transport))
        self._dispatch(handlers, "disconnected",
                       Event("disconnected", self, connection, transport=transport))

    def _maybe_ended(self, connection: Connection) -> None:
        state = connection._state
        if connection._ended or state is None or not connection._finished():
            return
        connection._ended = True
        for link in connection._links:
            self._link_ended(link)
        if len(connection._transport_failed) < len(state.shards):
            handlers = self._handlers_of(connection)
            self._dispatch(handlers, "connection_closed",
                           Event("connection_closed", self, connection))
        driver = self._driver
        if driver is not None:
            with driver.lock:
                driver.core.forget_connection(state)
        for shard in state.shards:
            self._by_shard.pop(shard, None)

    def _on_worker_died(self, slot: WorkerSlot) -> None:
        condition = p.Condition("amqscale:worker-died",
                                str(slot.failure) if slot.failure else "a worker died")
        for connection in list(self._connections):
            state = connection._state
            if state is None or connection._ended:
                continue
            for shard in state.shards:
                if shard.slot is slot and not shard.closed:
                    self._transport_failed(connection, shard, condition)
            self._maybe_ended(connection)
        for connection in list(self._inbound_conns.values()):
            if connection._inbound is not None and connection._inbound.slot is slot:
                self._inbound_connection_ended(connection, condition)
        for receiver in list(self._inbound):
            if not receiver._ended and any(x.slot is slot for x in receiver._core_links):
                self._transport_failed(receiver.connection, None,
                                       condition)
                self._link_ended(receiver)
        for acceptor in self._acceptors:
            if acceptor._state.failure is not None and not acceptor.closed:
                log.warning("listener %s: %s", acceptor.url, acceptor._state.failure)

    # ---- links ----------------------------------------------------------------------------

    def _link_opened(self, link: _Link) -> None:
        if link._opened_fired or link._closing:
            return
        links = link._core_links
        if all(x.opened or x.failure is not None for x in links) and any(
                x.opened for x in links):
            link._opened_fired = True
            self._dispatch(self._handlers_of(link), "link_opened",
                           Event("link_opened", self, link=link))

    def _link_closed(self, link: _Link, core_link: Any, event: p.LinkClosed) -> None:
        if event.with_connection and not core_link.closed:
            return  # lost with its connection, to be attached again (or failed with it)
        shard = link._shard_of.get(core_link)
        inbound = link.connection._inbound
        connection_gone = link.connection._closing or (shard is not None and shard.closed) or (
            inbound is not None and inbound.closed)
        if not link._closing and not link._closing_fired and not connection_gone:
            link._closing_fired = True
            condition = event.condition
            handlers = self._handlers_of(link)
            settings = messaging_handler(handlers)
            as_error = condition is not None or (
                settings is not None and settings.peer_close_is_error)
            link.remote_condition = condition
            name = "link_error" if as_error else "link_closing"
            self._dispatch(handlers, name, Event(name, self, link=link))
        if not link._ended and link._finished():
            if not connection_gone:
                self._dispatch(self._handlers_of(link), "link_closed",
                               Event("link_closed", self, link=link))
            self._link_ended(link)
            if link.connection._state is None and link.connection._inbound is None:
                link.connection._ended = True  # an inbound link's stand-in

    def _link_ended(self, link: _Link) -> None:
        if link._ended:
            return
        link._ended = True
        core_links = link._core_links
        for core_link in core_links:
            self._senders.pop(core_link, None)
            self._receivers.pop(core_link, None)
        driver = self._driver
        if driver is not None and link.connection._state is not None:
            driver.core.forget_links(core_links)
        if link in self._inbound:
            self._inbound.remove(link)
            if link.connection._inbound is not None and link in link.connection._links:
                link.connection._links.remove(link)  # the connection may live on

    def _on_sender(self, sender: Sender, link: SenderLink, event: p.Event | None) -> None:
        kind = type(event)
        if kind is p.Outcomes:
            by_seq = sender._trackers.get(link)
            if by_seq:
                name = _OUTCOME_CALLBACKS.get(event.state)  # type: ignore[union-attr]
                handlers = self._handlers_of(sender)
                runs = event.runs  # type: ignore[union-attr]
                for i in range(0, len(runs), 2):
                    for seq in range(runs[i], runs[i + 1]):
                        tracker = by_seq.pop(seq, None)
                        if tracker is None:
                            continue
                        if name is not None:
                            self._dispatch(handlers, name, Event(
                                name, self, link=sender, delivery=tracker))
                        self._dispatch(handlers, "settled", Event(
                            "settled", self, link=sender, delivery=tracker))
            if sender._detach_when_settled and sender._state.all_settled():
                sender._close_now()
            sender.connection._written()
            self._sendable[sender] = None
        elif kind is p.LinkOpened:
            self._link_opened(sender)
            self._sendable[sender] = None
        elif kind is p.PartsWritten:  # a large message's last parts free the link
            self._sendable[sender] = None
        elif kind is p.LinkClosed:
            self._link_closed(sender, link, event)  # type: ignore[arg-type]

    def _on_inbound(self, link: ReceiverLink, event: p.LinkOpened) -> Receiver:
        """A remote sender attached to one of our listeners: a Receiver for it, on its
        peer's Connection, handled by the container's handlers."""
        state = link.receiver
        connection = self._inbound_connection(event)
        settings = messaging_handler(self.handlers)
        receiver = Receiver(connection, state, None, None,
                            settings.prefetch if settings else 0,
                            settings.auto_accept if settings else False, links=[link])
        # Our end mirrors the peer's (its target is the address it sends to), with what
        # on_link_opening sets on top.
        receiver.source = copy.copy(event.remote_source) or p.Terminus()
        receiver.target = copy.copy(event.remote_target) or p.Terminus()
        connection._links.append(receiver)
        self._receivers[link] = receiver
        self._inbound.append(receiver)
        link.receiver.waiter = self._driver
        self._dispatch(self.handlers, "link_opening", Event("link_opening", self, link=receiver))
        self._accept(receiver, link)
        return receiver

    def _on_inbound_sender(self, link: SenderLink, event: p.LinkOpened) -> Sender:
        """A remote receiver attached to one of our listeners: a Sender for it, on its
        peer's Connection, handled by the container's handlers; on_link_opened and
        on_sendable follow (``_on_sender``)."""
        connection = self._inbound_connection(event)
        sender = Sender(connection, link.sender, None, None, None)
        # Our end mirrors the peer's (its source is the address it receives from), with
        # what on_link_opening sets on top (a dynamic source's address).
        sender.source = copy.copy(event.remote_source) or p.Terminus()
        sender.target = copy.copy(event.remote_target) or p.Terminus()
        connection._links.append(sender)
        self._senders[link] = sender
        self._inbound.append(sender)
        link.sender.waiter = self._driver
        self._dispatch(self.handlers, "link_opening", Event("link_opening", self, link=sender))
        self._accept(sender, link)
        return sender

    def _accept(self, link: Sender | Receiver, core_link: SenderLink | ReceiverLink) -> None:
        """Our attach of an inbound link, with the termini on_link_opening left (the
        worker waits for it: our listeners defer it)."""
        driver = self._driver
        if link._closing or driver is None or driver.closed:
            return
        with driver.lock:
            driver.core.accept_link(core_link, link.source, link.target)

    def _inbound_connection(self, event: p.LinkOpened) -> Connection:
        """The Connection of an inbound link: its peer's (a stand-in of its own if the
        worker did not say which)."""
        connection = self._inbound_conns.get(event.inbound_conn)
        if connection is None:
            connection = Connection(self, None, None, None)
            connection._opened_fired = True
        return connection

    def _on_receiver(self, receiver: Receiver, link: ReceiverLink,
                     event: p.Event | None) -> None:
        kind = type(event)
        if kind is p.Deliveries:
            self._deliver(receiver, len(event.payloads))  # type: ignore[union-attr]
        elif kind is p.DeliveryPart:
            if event.last and not event.aborted:  # type: ignore[union-attr]
                self._deliver(receiver, 1)
        elif kind is p.LinkOpened:
            self._link_opened(receiver)
        elif kind is p.LinkClosed:
            self._link_closed(receiver, link, event)  # type: ignore[arg-type]

    def _deliver(self, receiver: Receiver, count: int) -> None:
        """Dispatch the next `count` messages of the receiver's buffer (one event's)."""
        state = receiver._state
        while count and state.buffer and not self._stopping:
            count -= 1
            arrival, index = state.take()
            owner = self._receivers.get(arrival.link, receiver)
            self._message(owner, arrival, index)

    def _message(self, receiver: Receiver, arrival: Arrival, index: int) -> None:
        delivery = Delivery(arrival, index)
        delivery.link = receiver
        delivery.local_state = None
        link = arrival.link
        if receiver._closing:  # closed by the user: proton calls no on_message then
            if receiver.auto_accept and not delivery.settled and link.failure is None:
                delivery.release()
            return
        handlers = self._handlers_of(receiver)
        self._dispatching_message += 1
        try:
            try:
                message = delivery.message
            except Exception as exc:
                log.warning("rejected a message that does not decode: %s", exc)
                delivery.reject("amqp:decode-error", str(exc))
                return
            try:
                self._dispatch(handlers, "message",
                               Event("message", self, link=receiver, delivery=delivery,
                                     message=message))
                if receiver.auto_accept and not delivery.settled and link.failure is None:
                    delivery.accept()
            except Reject:
                if not delivery.settled and link.failure is None:
                    delivery.reject()
            except Release:
                if not delivery.settled and link.failure is None:
                    delivery.release()
        finally:
            self._dispatching_message -= 1
            if not self._dispatching_message:
                self._taken(receiver, link)
                deferred, self._deferred = self._deferred, []
                for action in deferred:
                    action()

    def _taken(self, receiver: Receiver, link: ReceiverLink) -> None:
        """Keep the prefetch granted: top up in batches of half the link's share."""
        if not receiver.prefetch or link.failure is not None:
            return
        link.consumed += 1
        if link.consumed * 2 >= link.credit:
            driver = self._driver
            assert driver is not None
            with driver.lock:
                link.grant()

    # ---- opening --------------------------------------------------------------------------

    def _ensure_driver(self) -> Driver:
        driver = self._driver
        if driver is None:
            workers = default_worker_count() if self._workers is None else self._workers
            driver = self._driver = Driver(workers, self.container_id,
                                           restart_workers=self._restart_workers)
            driver.core.observer = self._observe
        return driver

    def worker_pids(self) -> list[int]:
        """The worker processes' pids (none before the first connect or listen)."""
        driver = self._driver
        return [h.process.pid for h in driver.handles] if driver is not None else []

    @property
    def worker_restarts(self) -> int:
        """How many dead workers were replaced."""
        return self._driver.restarts if self._driver is not None else 0

    def connect(self, url: str | None = None, urls: list[str] | None = None,
                handler: Any = None, user: str | None = None, password: str | None = None,
                sasl_mechanisms: str | None = None, virtual_host: str | None = None,
                idle_timeout: float = 0, shards: int = 1, **kw: Any) -> Connection:
        """Open a connection (`shards` AMQP connections) to `url`; returns at once.

        ``on_connection_opened`` follows once every shard is open; a refused address or
        a failed authentication reaches ``on_transport_error`` then ``on_disconnected``.
        `handler` replaces the container's handlers for this connection's events.
        ``heartbeat=`` is taken as idle_timeout, ``allowed_mechs=`` as sasl_mechanisms,
        ``allow_insecure_mechs=`` as allow_insecure_mechanisms (False by default, unlike
        proton: PLAIN needs TLS), ``ssl_domain=`` (an SSLDomain or a security.TLS; default
        ``container.ssl.client``) and ``sni=`` as TLS settings; ``offered_capabilities=``,
        ``desired_capabilities=``, ``properties=``, ``max_frame_size=`` and
        ``channel_max=`` go in our open, as proton's do. `urls` is the failover
        list; ``reconnect`` (None or True: the default Backoff; False; an
        amqscale.Backoff; a list of delays) works as for amqscale.Container.connect: a
        lost shard reaches ``on_disconnected``, then ``on_connection_opened``,
        ``on_link_opened`` and ``on_sendable`` once it is back, with what was unsettled
        sent again (proton leaves that to the handler). A TLS or authentication failure
        reaches ``on_transport_error``: ``event.transport.error`` is the TLSError or
        AuthenticationError. With neither `url` nor `urls`, proton's connection
        configuration file gives them (security.load_connect_config)."""
        if url is None and not urls:
            from_file = load_connect_config()
            url = from_file.pop("url")
            user = user or from_file.get("user")
            password = password if password is not None else from_file.get("password")
            sasl_mechanisms = sasl_mechanisms or from_file.get("sasl_mechanisms")
            if "tls" not in kw:  # explicit arguments (either spelling) win over the file
                kw.setdefault("ssl_domain", from_file.get("tls"))
            if "allow_insecure_mechanisms" not in kw:
                kw.setdefault("allow_insecure_mechs",
                              from_file.get("allow_insecure_mechanisms", False))
        if url is None:
            assert urls
            url, *others = urls
            urls = others
        if "heartbeat" in kw:
            idle_timeout = kw.pop("heartbeat") or 0
        if "allowed_mechs" in kw:
            sasl_mechanisms = kw.pop("allowed_mechs")
        insecure = bool(kw.pop("allow_insecure_mechs", kw.pop("allow_insecure_mechanisms",
                                                                False)))
        if kw.pop("sasl_enabled", True) is not True:
            raise _not_yet("sasl_enabled=False (amqscale always speaks SASL)")
        domain, sni, authzid = kw.pop("ssl_domain", kw.pop("tls", None)), kw.pop("sni", None), \
            kw.pop("authzid", None)
        reconnect = kw.pop("reconnect", None)
        open_fields = {key: kw.pop(key) for key in (
            "offered_capabilities", "desired_capabilities", "properties", "max_frame_size",
            "channel_max") if key in kw}
        if kw:
            raise _not_yet(f"connect() option(s) {', '.join(sorted(kw))}")
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise ValueError(f"shards must be a positive int, not {shards!r}")
        parsed = parse_url(_normalise_url(url))
        tls = _tls_of(domain, self.ssl.client, parsed)
        if sni is not None and tls is not None:
            tls = dataclasses.replace(tls, peer_name=sni)
        parsed, options = connect_options(
            _normalise_url(url), shards, tls=tls, user=user, password=password,
            sasl_mechanisms=sasl_mechanisms, allow_insecure_mechanisms=insecure,
            authzid=authzid, virtual_host=virtual_host, idle_timeout=float(idle_timeout),
            urls=urls, reconnect=True if reconnect is None else reconnect, **open_fields)
        driver = self._ensure_driver()
        driver.refresh()
        with driver.lock:
            state = driver.core.open_connection(parsed, shards, **options)
        connection = Connection(self, state, parsed, handler)
        self._connections.append(connection)
        for shard in state.shards:
            self._by_shard[shard] = connection
        return connection

    def _context(self, context: Any, handler: Any) -> tuple[Connection, str | None]:
        """A Connection (or Session) as given, or a URL: a new connection to it, whose
        path is the address."""
        if isinstance(context, Session):
            context = context.connection
        if isinstance(context, Connection):
            if context._state is None:
                raise _not_yet("links opened on an inbound connection (a listener's peer)")
            if context._closing or context._ended:
                raise LinkDetached(f"the connection to {context.url} is closed")
            return context, None
        if isinstance(context, str):
            parsed = parse_url(_normalise_url(context))
            return self.connect(context), _address_of(parsed)
        raise TypeError(f"a context must be a Connection or a URL, not {type(context).__name__}")

    def create_sender(self, context: Any, target: str | None = None,
                      source: str | None = None, name: str | None = None,
                      handler: Any = None, tags: Any = None, options: Any = None) -> Sender:
        """A Sender to `target` on `context` (a Connection, or a URL whose path is the
        target); ``on_link_opened`` and ``on_sendable`` follow. `tags`: an iterator of
        tags for the Trackers. No target (None on a Connection): the anonymous relay,
        each Message goes to its own address. Options: AtMostOnce, AtLeastOnce,
        DynamicNodeProperties."""
        presettled, fields = _check_options(options, True)  # before anything is opened
        connection, path_address = self._context(context, handler)
        address = target if target is not None else path_address
        terminus = Target(address, **fields)
        session = context if isinstance(context, Session) else None
        settings = LinkSettings(source=p.Terminus(address=source) if source else None,
                                one_link=one_link(terminus),
                                session=session._begun() if session else None)
        driver = self._ensure_driver()
        state_conn = connection._state
        assert state_conn is not None
        shards = [s for s in state_conn.shards if s.failure is None]
        with driver.lock:
            state = driver.core.open_sender(state_conn, address, DEFAULT_WINDOW, presettled,
                                            name, 0, terminus.wire(), settings)
        state.waiter = driver
        sender = Sender(connection, state, handler, name, iter(tags) if tags else None)
        sender.target = terminus.wire()
        if source:
            sender.source = p.Terminus(address=source)
        if session is not None:
            sender._on_session = session
            session._links.append(sender)
        sender._shard_of = dict(zip(state.links, shards, strict=False))
        connection._links.append(sender)
        for link in state.links:
            self._senders[link] = sender
        return sender

    def create_receiver(self, context: Any, source: str | None = None,
                        target: str | None = None, name: str | None = None,
                        dynamic: bool = False, handler: Any = None,
                        options: Any = None, *, worker_handler: Any = None,
                        worker_handler_args: dict[str, Any] | None = None) -> Receiver:
        """A Receiver from `source` on `context` (a Connection, or a URL whose path is the
        source); its handler's `prefetch` is kept granted (0: ``receiver.flow(n)``).

        `worker_handler` ("package.module:Name", or an importable class): the messages go
        to that handler inside the workers instead (see the blocking face's
        ``open_receiver(handler=...)``), made once per worker with `worker_handler_args`;
        `handler`'s prefetch (at least 1 a shard) is the credit the workers keep granted.
        This process gets the link's events (``on_link_opened``; ``on_link_error`` with
        the traceback in ``link.remote_condition`` when a worker's handler raised) and
        ``receiver.counts()``, never the messages."""
        _, fields = _check_options(options, False)  # before anything is opened
        path = check_worker_handler(worker_handler, worker_handler_args, False)
        connection, path_address = self._context(context, handler)
        address = source if source is not None else path_address
        if dynamic:
            address = None  # the peer names the node (proton sends no address either)
        terminus = Source(address, dynamic=bool(dynamic), **fields)
        session = context if isinstance(context, Session) else None
        link_settings = LinkSettings(one_link=one_link(terminus),
                                     session=session._begun() if session else None)
        handlers = [handler] if handler is not None else self._handlers_of(connection)
        settings = messaging_handler(handlers)
        prefetch = settings.prefetch if settings is not None else 0
        auto_accept = settings.auto_accept if settings is not None else False
        driver = self._ensure_driver()
        state_conn = connection._state
        assert state_conn is not None
        shards = [s for s in state_conn.shards if s.failure is None]
        credit = max(prefetch, len(shards)) if prefetch else 0
        with driver.lock:
            if path is not None:
                state = driver.core.open_receiver(
                    state_conn, address, max(credit, len(shards)), name, False, 0,
                    terminus.wire(), handler=path, handler_args=worker_handler_args,
                    settings=link_settings)
                prefetch = 0  # the workers keep it granted
            else:
                state = driver.core.open_receiver_exact(state_conn, address, credit, name, 0,
                                                        terminus.wire(), link_settings)
        state.waiter = driver
        receiver = Receiver(connection, state, handler, name, prefetch, auto_accept)
        receiver.source = terminus.wire()
        if target is not None:
            receiver.target = p.Terminus(address=target)
        if session is not None:
            receiver._on_session = session
            session._links.append(receiver)
        if path is not None:
            receiver._in_workers = _links.HandlerReceiverView(driver, state, connection)
        receiver._shard_of = dict(zip(state.links.values(), shards, strict=False))
        connection._links.append(receiver)
        for link in state.links.values():
            self._receivers[link] = receiver
        return receiver

    def listen(self, url: str, ssl_domain: Any = None, *,
               sasl: ServerSASL | None = None) -> Acceptor:
        """Accept inbound connections on `url` (port 0: any free port; see
        ``Acceptor.url``). Remote senders' messages reach the container's handlers'
        ``on_message``, with the prefetch of its MessagingHandler; a remote receiver is
        offered to them as a Sender (``on_link_opening``, ``on_link_opened``,
        ``on_sendable`` ...). Blocks until the port is bound; raises ConnectionFailed if
        it cannot be. ``amqps://`` serves TLS with `ssl_domain` (default
        ``container.ssl.server``); `sasl` authenticates the peers (security.ServerSASL)."""
        parsed = parse_url(_normalise_url(url))
        security = listener_options(parsed, tls=_tls_of(ssl_domain, self.ssl.server, parsed),
                                    sasl=sasl)
        settings = messaging_handler(self.handlers)
        credit = settings.prefetch if settings is not None else 0
        driver = self._ensure_driver()
        driver.refresh()
        core = driver.core
        if core.slots[0].failure is not None:
            raise core.slots[0].failure
        with driver.lock:
            state = core.listen(parsed.host, parsed.port, credit, 0, DEFAULT_WINDOW,
                                defer_attach=True, defer_open=True, **security)
            driver.write_all()
        acceptor = Acceptor(self, state)
        try:
            driver.wait(lambda: state.port is not None or state.failure is not None,
                        OPEN_TIMEOUT, f"listening on {parsed}")
            if state.failure is None:
                with driver.lock:
                    core.adopt(state)
                    driver.write_all()
                driver.wait(lambda: state.pending <= 0 or state.failure is not None,
                            OPEN_TIMEOUT, f"listening on {parsed}")
        except BaseException:
            acceptor.close()
            raise
        if state.failure is not None:
            acceptor.close()
            raise state.failure
        state.receiver.waiter = driver
        self._acceptors.append(acceptor)
        return acceptor

    def declare_transaction(self, context: Any, handler: Any = None,
                            settle_before_discharge: bool = False) -> Transaction:
        """Declare a local transaction on `context` (a Connection, or a URL); `handler`
        (default: the connection's handlers) gets ``on_transaction_declared`` with
        ``event.transaction``, then ``on_transaction_committed`` or
        ``on_transaction_aborted`` (``on_transaction_declare_failed`` and
        ``on_transaction_commit_failed`` when the peer refuses). A transaction is one
        AMQP connection: a sharded connection's first shard."""
        connection, _ = self._context(context, handler)
        driver = self._ensure_driver()
        state_conn = connection._state
        assert state_conn is not None
        with driver.lock:
            state = Transactions(driver.core).declare(state_conn)
        txn = Transaction(self, connection, state, handler)
        self._transactions.setdefault(state.coordinator, []).append(txn)
        return txn

    def _on_coordinator(self, link: SenderLink) -> None:
        """An outcome (or the end) of a coordinator link: tell each of its transactions'
        handlers what changed."""
        pending = self._transactions.get(link, [])
        for txn in list(pending):
            for name in txn._news():
                event = Event(name, self, connection=txn.connection)
                event.transaction = txn  # type: ignore[attr-defined]
                self._dispatch(txn._handlers(), name, event)
            if txn._done:
                pending.remove(txn)
        if not pending:
            self._transactions.pop(link, None)

    # ---- timers and injectors -------------------------------------------------------------

    def schedule(self, delay: float, handler: Any = None) -> Task:
        """``on_timer_task`` on `handler` (default: the container's) after `delay` s."""
        task = Task(self, time.monotonic() + max(0.0, float(delay)), handler)
        heapq.heappush(self._timers, (task.deadline, next(self._timer_seq), task))
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            self._wake()
        return task

    def selectable(self, injector: EventInjector) -> EventInjector:
        """Register an EventInjector: its events reach the container's handlers."""
        if not isinstance(injector, EventInjector):
            raise _not_yet(f"selectable({type(injector).__name__}): only EventInjectors")
        if injector not in self._injectors:
            self._injectors.append(injector)
        self._wake()
        return injector
