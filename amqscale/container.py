"""Container, Connection and Listener: the entry points of the blocking API.

Thin handles: the Container owns a driver (``amqscale._driver``: the worker processes and
their rings) and the client core (``amqscale.core``: every connection's and link's state).
All event handling happens inside API calls: a call that waits pumps the event rings while
it waits, and a send takes what has come as it hands a batch over. Beside the user's
thread the driver runs two that sleep unless there is work: the linger thread hands
partial batches over, the watcher notices a worker's exit. Every handle keeps its
Container alive. See docs/design.md for the thread and error models.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, overload

from . import _ops, security
from ._driver import Driver
from ._supervisor import DEFAULT_RING_CAPACITY
from .core import ConnectionState, LinkRequest, LinkSettings, ListenerState, SessionState
from .errors import TLSError
from .links import (
    CLOSE_TIMEOUT,
    AnonymousSender,
    HandlerReceiver,
    Receiver,
    Sender,
    Transaction,
)
from .reconnect import Backoff, failover_urls, reconnect_policy
from .terminus import (
    Source,
    Target,
    as_source,
    as_target,
    decode_properties,
    encode_properties,
    one_link,
)
from .url import URL, parse_url
from .workers import protocol as p

OPEN_TIMEOUT = 30.0


def default_worker_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_positive(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int, not {value!r}")


def check_credit(credit: object, handler: object) -> None:
    """A receiver's credit: positive, or 0 for credit the user grants (Receiver.flow),
    which an in-worker handler cannot do."""
    if handler is not None or credit != 0:
        check_positive(credit, "credit")
    elif not isinstance(credit, int) or isinstance(credit, bool):
        raise ValueError(f"credit must be an int, not {credit!r}")


def check_limit(value: object) -> int:
    """A max_message_size argument as the protocol takes it (0: no limit)."""
    if value is None:
        return 0
    check_positive(value, "max_message_size")
    return value  # type: ignore[return-value]


def connect_options(url: str | None, shards: int, *, virtual_host: str | None,
                    idle_timeout: float, urls: Sequence[str] | None = None,
                    reconnect: Any = True, properties: Mapping[str, Any] | None = None,
                    offered_capabilities: Sequence[str] | str | None = None,
                    desired_capabilities: Sequence[str] | str | None = None,
                    max_frame_size: int = 0, channel_max: int = 0, **credentials: Any
                    ) -> tuple[URL, dict[str, Any]]:
    """`connect()`'s arguments checked, as the URL and the options of
    ClientCore.open_connection (the failover list `urls` and the reconnect `policy`, then
    the OpenConnection fields).

    `credentials` are security.client_options' (tls, user, password, sasl_mechanisms,
    allow_insecure_mechanisms, authzid). With no URL, proton's connection configuration
    file (security.load_connect_config) gives the URL and what the arguments leave out."""
    if url is None and urls:
        if isinstance(urls, str):
            raise TypeError("urls must be a list of URLs, not one string")
        url, *rest = urls
        urls = rest
    if url is None:
        from_file = security.load_connect_config()
        url = from_file.pop("url")
        for key, value in from_file.items():
            if credentials.get(key) in (None, False):
                credentials[key] = value
    parsed = parse_url(url)
    if parsed.port == 0:
        raise ValueError(f"cannot connect to port 0 in {url!r}")
    check_positive(shards, "shards")
    if (not isinstance(idle_timeout, int | float) or isinstance(idle_timeout, bool)
            or not 0 <= idle_timeout < 1e6):
        raise ValueError(f"idle_timeout must be seconds >= 0, not {idle_timeout!r}")
    options = security.client_options(parsed, **credentials)
    options.update(virtual_host=virtual_host, idle_timeout=float(idle_timeout),
                   urls=failover_urls(parsed, urls), policy=reconnect_policy(reconnect))
    options.update(open_fields(properties, offered_capabilities, desired_capabilities,
                               max_frame_size, channel_max))
    return parsed, options


def open_fields(properties: Mapping[str, Any] | None,
                offered_capabilities: Sequence[str] | str | None,
                desired_capabilities: Sequence[str] | str | None,
                max_frame_size: int, channel_max: int) -> dict[str, Any]:
    """The OpenConnection fields of our open frame, checked."""
    for value, what, top in ((max_frame_size, "max_frame_size", 2**32 - 1),
                             (channel_max, "channel_max", 2**16 - 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise ValueError(f"{what} must be an int in 0..{top} (0: proton's default), "
                             f"not {value!r}")
    if max_frame_size and max_frame_size < 512:
        raise ValueError(f"max_frame_size must be at least 512 (AMQP's minimum), not "
                         f"{max_frame_size}")
    return {
        "properties": encode_properties(properties, "properties"),
        "offered_capabilities": _symbols(offered_capabilities, "offered_capabilities"),
        "desired_capabilities": _symbols(desired_capabilities, "desired_capabilities"),
        "max_frame_size": max_frame_size, "channel_max": channel_max,
    }


def _symbols(value: Sequence[str] | str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} must be non-empty strs, not {name!r}")
    return names or None


def natives(datetimes: bool, decimals: bool) -> tuple[bool, bool] | None:
    """A receiver's decoding opt-ins (ReceiverState.natives), checked."""
    if not isinstance(datetimes, bool) or not isinstance(decimals, bool):
        raise TypeError("datetimes and decimals are bools")
    return (datetimes, decimals) if datetimes or decimals else None


def settle_mode(rcv_settle_mode: str) -> int:
    """A receiver settle mode's AMQP number: "first" (settle at once) or "second"
    (settle after the sender has settled the outcome)."""
    modes = {"first": p.RCV_FIRST, "second": p.RCV_SECOND}
    if rcv_settle_mode not in modes:
        raise ValueError(f"rcv_settle_mode must be 'first' or 'second', not "
                         f"{rcv_settle_mode!r}")
    return modes[rcv_settle_mode]


def check_windows(incoming_window: int, outgoing_window: int) -> None:
    """A session's window arguments."""
    for value, what in ((incoming_window, "incoming_window"),
                        (outgoing_window, "outgoing_window")):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            raise ValueError(f"{what} must be an int in 0..2**32-1, not {value!r}")


class InboundLink(NamedTuple):
    """An inbound link a listener's `accept_link` decides on: its `name`, the peer's
    `role` ("sender": it sends to us; "receiver": it takes messages from us), the peer's
    `source` and `target`, its link `properties`, the peer's `container_id`, and what its
    connection negotiated (`security`: the user it authenticated as, ...)."""

    name: str
    role: str
    source: Source | None
    target: Target | None
    properties: dict[str, Any]
    container_id: str | None
    security: security.Security


def link_policy(accept_link: Callable[[InboundLink], Any] | None
                ) -> Callable[[LinkRequest], p.Condition | None] | None:
    """The core's form of a listener's `accept_link` (see Container.listen)."""
    if accept_link is None:
        return None
    if not callable(accept_link):
        raise TypeError(f"accept_link must be callable, not {accept_link!r}")

    def decide(request: LinkRequest) -> p.Condition | None:
        answer = accept_link(InboundLink(
            request.name, request.role, Source.from_wire(request.source),
            Target.from_wire(request.target), decode_properties(request.properties),
            request.container_id, request.security or security.Security()))
        if answer is None:
            return None
        if isinstance(answer, str):
            return p.Condition(answer, "refused by the listener")
        if (isinstance(answer, tuple) and len(answer) == 2
                and all(isinstance(x, str) for x in answer)):
            return p.Condition(*answer)
        raise TypeError(f"accept_link returns None, a condition name or (name, "
                        f"description), not {answer!r}")

    return decide


class SenderOptions(NamedTuple):
    address: str | None
    target: p.Terminus
    settings: LinkSettings
    anonymous: bool  # no target address: each message's own address decides


def sender_options(address: str | Target | None, name: str | None,
                   properties: Mapping[str, Any] | None,
                   session: SessionState | None,
                   rcv_settle_mode: str = "first") -> SenderOptions:
    """open_sender's arguments as the core takes them, checked."""
    target = as_target(address)
    single = one_link(target)
    if single and target.durable_subscription and not name:
        raise ValueError("a durable target needs name= (the link name it is known by)")
    settings = LinkSettings(properties=encode_properties(properties, "properties"),
                            session=session, one_link=single,
                            rcv_settle_mode=settle_mode(rcv_settle_mode))
    return SenderOptions(target.address, target.wire(), settings,
                         target.address is None and not target.dynamic)


class ReceiverOptions(NamedTuple):
    address: str | None
    source: p.Terminus
    settings: LinkSettings


def receiver_options(address: str | Source | None, name: str | None, *, dynamic: bool,
                     selector: str | None, properties: Mapping[str, Any] | None,
                     session: SessionState | None, rcv_settle_mode: str = "first"
                     ) -> ReceiverOptions:
    """open_receiver's arguments as the core takes them, checked. A dynamic source or a
    durable subscription is one link, on the first shard (docs/amqp.md)."""
    source = as_source(address, dynamic=dynamic, selector=selector)
    if source.address is None and not source.dynamic:
        raise ValueError("a receiver needs an address, or dynamic=True")
    if source.durable_subscription and not name:
        raise ValueError("a durable subscription needs name= (the subscription's name) and "
                         "a Container(container_id=...) that stays the same")
    settings = LinkSettings(properties=encode_properties(properties, "properties"),
                            session=session, one_link=one_link(source),
                            exact_name="shared" in source.capabilities,
                            rcv_settle_mode=settle_mode(rcv_settle_mode))
    return ReceiverOptions(source.address, source.wire(), settings)


def tls_in_use(tls: security.TLS | None, url: str | None,
               urls: Sequence[str] | None) -> security.TLS | None:
    """The TLS settings connect() used: the argument, or with no URL at all, the
    connection configuration file's (read again: only to explain a failure)."""
    if tls is not None or url is not None or urls:
        return tls
    try:
        found = security.load_connect_config().get("tls")
    except (OSError, ValueError):
        return None
    return found if isinstance(found, security.TLS) else None


def explain_tls_failure(error: TLSError, url: URL, tls: security.TLS | None) -> TLSError:
    """A refused server certificate, explained (see security.explain_verify_failure)."""
    if "certificate verify failed" not in error.description:
        return error
    reason = security.explain_verify_failure(url.host, url.port, tls)
    if reason is None:
        return error
    explained = TLSError(f"{error}: the server's certificate was refused: {reason}",
                         error.condition, error.description)
    explained.__cause__ = error
    return explained


class Container:
    """Runs the worker processes and opens connections and listeners on them.

    >>> with Container(workers=2) as c:
    ...     conn = c.connect("amqp://127.0.0.1:5672", shards=4)

    A Container dropped without close() is collected and stops its workers.
    """

    def __init__(self, workers: int | None = None, container_id: str | None = None,
                 ring_capacity: int = DEFAULT_RING_CAPACITY,
                 restart_workers: bool = True) -> None:
        """`restart_workers`: a worker that dies is replaced and its connections opened
        again on the new one (docs/reliability.md); False: they fail with WorkerDied."""
        self.container_id = container_id or f"amqscale-{uuid.uuid4()}"
        self._driver = Driver(default_worker_count() if workers is None else workers,
                              self.container_id, ring_capacity,
                              restart_workers=bool(restart_workers))
        self._core = self._driver.core

    @property
    def workers(self) -> int:
        return len(self._driver.handles)

    @property
    def closed(self) -> bool:
        return self._driver.closed

    def worker_pids(self) -> list[int]:
        return [h.process.pid for h in self._driver.handles]

    @property
    def worker_restarts(self) -> int:
        """How many dead workers were replaced."""
        return self._driver.restarts

    def worker_stats(self, timeout: float | None = 10.0) -> list[dict[str, int]]:
        """Each live worker's counters: index, pid, connections, messages sent and received.

        How evenly the work is spread over the cores shows here.
        """
        return _ops.run(self._driver, _ops.worker_stats(self._driver), timeout)

    # ---- opening ------------------------------------------------------------------------

    def connect(self, url: str | None = None, shards: int = 1, *,
                tls: security.TLS | None = None, user: str | None = None,
                password: str | None = None,
                sasl_mechanisms: str | Sequence[str] | None = None,
                allow_insecure_mechanisms: bool = False, authzid: str | None = None,
                virtual_host: str | None = None, idle_timeout: float = 0.0,
                urls: Sequence[str] | None = None,
                reconnect: bool | Backoff | Sequence[float] = True,
                properties: Mapping[str, Any] | None = None,
                offered_capabilities: Sequence[str] | str | None = None,
                desired_capabilities: Sequence[str] | str | None = None,
                max_frame_size: int = 0, channel_max: int = 0,
                timeout: float | None = OPEN_TIMEOUT) -> Connection:
        """Open `shards` AMQP connections to `url`, placed over the live workers.

        Blocks until every shard is open; raises ConnectionFailed (naming the reason)
        if any cannot be opened, and then closes the others: TLSError when TLS failed
        (for a refused certificate, saying why), AuthenticationError when SASL did.

        `amqps://` speaks TLS, with `tls` (amqscale.security.TLS) or the default: the
        system's CAs, the server's certificate and name checked. SASL: `user` and
        `password` (or those of the URL) with SCRAM-SHA-512/256/1 or PLAIN, PLAIN only
        over TLS unless `allow_insecure_mechanisms`; ANONYMOUS without a user;
        `sasl_mechanisms` restricts the choice (EXTERNAL: the TLS client certificate;
        GSSAPI: Kerberos). With no `url`, proton's connection configuration file gives
        it (amqscale.security.load_connect_config).

        Failover and reconnect (docs/reliability.md): `urls` are tried after `url`, in
        order (`url` may be left out: the first of `urls` is then the first). The open
        tries each URL once. Once open, a shard whose transport fails (the network, the
        peer gone, no heartbeat for `idle_timeout` seconds, the peer's
        amqp:connection:forced) is opened again, by default at once and then after 0.1,
        0.2, ... 10 s with jitter (`reconnect`: a Backoff, a list of delays, or False),
        its links attached again under the same names and their unsettled messages sent
        again. Never after an authentication failure, a refused certificate, or a
        close the peer or the user meant.

        Our open frame: the Container's `container_id`, `virtual_host` (the hostname
        field; default: the URL's host), `properties` (str keys sent as symbols),
        `offered_capabilities` and `desired_capabilities` (symbols), `max_frame_size`
        and `channel_max` (0: proton's defaults). The peer's: ``remote_*``.
        """
        driver = self._driver
        driver.check_open()
        parsed, options = connect_options(
            url, shards, tls=tls, user=user, password=password,
            sasl_mechanisms=sasl_mechanisms,
            allow_insecure_mechanisms=allow_insecure_mechanisms, authzid=authzid,
            virtual_host=virtual_host, idle_timeout=idle_timeout, urls=urls,
            reconnect=reconnect, properties=properties,
            offered_capabilities=offered_capabilities,
            desired_capabilities=desired_capabilities, max_frame_size=max_frame_size,
            channel_max=channel_max)
        try:
            state = _ops.run(driver, _ops.connect(driver, parsed, shards, **options), timeout)
        except TLSError as exc:
            raise explain_tls_failure(exc, parsed, tls_in_use(tls, url, urls)) from None
        return Connection(self, state)

    def listen(self, url: str, *, credit: int = 1000, max_message_size: int | None = None,
               tls: security.TLS | None = None, sasl: security.ServerSASL | None = None,
               accept_link: Callable[[InboundLink], Any] | None = None,
               timeout: float | None = OPEN_TIMEOUT) -> Listener:
        """Accept inbound AMQP connections on `url`, spread over every worker.

        Port 0 picks a free port (see `Listener.port`). Remote senders' messages arrive
        on `Listener.receiver`; each inbound link is granted `credit` and told our
        `max_message_size` (a larger message ends its link). A remote receiver's link is
        a Sender of its own: ``Listener.accept_sender()`` gives them in order (the address
        it asked for is ``sender.address``; a dynamic source gets a unique one); they are
        detached when the listener closes. The listener offers ANONYMOUS-RELAY: its
        receiver takes a message whatever its address (``message.address`` says).

        `accept_link(link)`, if given, decides each inbound link (an InboundLink: name,
        role, source, target, properties, container_id, security) as it attaches: it
        returns None to attach it, or a condition to refuse it with (a str such as
        "amqp:unauthorized-access", or a (name, description) pair); an exception in it
        refuses the link with amqp:internal-error. It runs inside this face's calls (as
        every event here), in the thread making them.

        `amqps://` with `tls` (a TLS with cert= and key=; verify="peer" requires client
        certificates) serves TLS only: a plain connection is refused. `sasl`
        (amqscale.security.ServerSASL) authenticates peers; without it any peer gets in
        (SASL ANONYMOUS).
        """
        parsed = parse_url(url)
        check_positive(credit, "credit")
        limit = check_limit(max_message_size)
        options = security.listener_options(parsed, tls=tls, sasl=sasl)
        policy = link_policy(accept_link)
        state = _ops.run(self._driver, _ops.listen(self._driver, parsed, credit, limit,
                                                   policy=policy, **options), timeout)
        return Listener(self, state)

    # ---- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection and listener, stop the workers; leaves nothing behind."""
        self._driver.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        driver = getattr(self, "_driver", None)
        if driver is not None and not driver.closed:
            with contextlib.suppress(Exception):
                driver.close()


def handler_path(handler: Any) -> str:
    """The import path a worker imports for `handler` (a path, a class or a function)."""
    if isinstance(handler, str):
        mod, sep, name = handler.partition(":")
        if not sep:
            mod, _, name = handler.rpartition(".")
        if not mod or not name or not all(
                part.isidentifier() for part in (*mod.split("."), *name.split("."))):
            raise ValueError(f"a handler is 'package.module:Name', not {handler!r}")
        return handler
    module: str | None = getattr(handler, "__module__", None)
    qualname: str | None = getattr(handler, "__qualname__", None)
    if not callable(handler) or not module or not qualname or "<" in qualname:
        raise TypeError("a handler is an import path ('package.module:Name') or an "
                        f"importable class or function, not {handler!r}")
    if module == "__main__":
        raise ValueError(f"the handler {qualname} is defined in __main__, which the "
                         "workers cannot import: move it to a module, or name it by path")
    return f"{module}:{qualname}"


def check_worker_handler(handler: Any, handler_args: Any, auto_accept: bool) -> str | None:
    """open_receiver's in-worker handler options, checked: the handler's import path
    (None: no handler)."""
    if handler is None:
        if handler_args is not None:
            raise ValueError("handler_args without a handler")
        return None
    path = handler_path(handler)
    if auto_accept:
        raise ValueError("auto_accept is the in-worker handler's own "
                         "(MessagingHandler(auto_accept=...)), not open_receiver's")
    if handler_args is not None and not isinstance(handler_args, dict):
        raise TypeError(f"handler_args must be a dict, not {handler_args!r}")
    return path


class ConnectionView:
    """What every face's Connection tells of its state (the core's ConnectionState)."""

    def __init__(self, state: ConnectionState) -> None:
        self._state = state
        self.url: URL = state.url

    @property
    def shards(self) -> int:
        return len(self._state.shards)

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def state(self) -> str:
        """"open"; "reconnecting" while a shard is lost and being opened again;
        "failed" once every shard failed; "closed"."""
        return self._state.state

    @property
    def reconnects(self) -> int:
        """How many times a shard was opened again after it was lost."""
        return self._state.reconnects

    @property
    def last_error(self) -> Exception | None:
        """Why a shard was lost last (None if none was): the error that would have been
        raised without reconnect."""
        errors = [s.last_error for s in self._state.shards if s.last_error is not None]
        return errors[-1] if errors else None

    @property
    def url_in_use(self) -> list[URL]:
        """The URL each shard is connected (or connecting) to, from the failover list."""
        urls = self._state.urls
        return [urls[s.url_index] for s in self._state.shards]

    def _remote(self) -> p.ConnectionOpened | None:
        for shard in self._state.shards:
            if shard.remote is not None:
                return shard.remote
        return None

    @property
    def remote_container(self) -> str | None:
        """The peer's container id (its open frame's; the first shard's)."""
        remote = self._remote()
        return remote.remote_container if remote is not None else None

    @property
    def remote_offered_capabilities(self) -> list[str]:
        """What the peer's open offers, e.g. "ANONYMOUS-RELAY"."""
        remote = self._remote()
        return list(remote.remote_offered_capabilities or ()) if remote else []

    @property
    def remote_desired_capabilities(self) -> list[str]:
        remote = self._remote()
        return list(remote.remote_desired_capabilities or ()) if remote else []

    @property
    def remote_properties(self) -> dict[str, Any]:
        """The peer's connection properties (RabbitMQ's "product", "version" ...)."""
        remote = self._remote()
        return decode_properties(remote.remote_properties) if remote else {}

    @property
    def remote_max_frame_size(self) -> int:
        remote = self._remote()
        return remote.remote_max_frame_size if remote else 0

    @property
    def remote_idle_timeout(self) -> float:
        """The peer's idle timeout in seconds (0: none): we send at least twice as often."""
        remote = self._remote()
        return remote.remote_idle_timeout if remote else 0.0

    @property
    def security(self) -> security.Security:
        """What the connection negotiated (its first shard; every shard uses the same
        settings): `tls_protocol`, `tls_cipher`, `peer_subject` (the server
        certificate's subject), `sasl_mechanism` and `user` (None where unused)."""
        for shard in self._state.shards:
            if shard.security is not None:
                return shard.security
        return security.Security()


class Connection(ConnectionView):
    """A connection to one peer: `shards` AMQP connections placed over the workers.

    `state`, `reconnects`, `last_error` and `url_in_use` take what the workers reported
    before answering (this face handles events only inside its calls); read from a
    thread other than the one using the Container, they tell what that one last took."""

    def __init__(self, container: Container, state: ConnectionState) -> None:
        super().__init__(state)
        self._container = container  # it lives as long as this connection does
        self._driver = container._driver

    @property
    def state(self) -> str:
        self._driver.refresh_state()
        return super().state

    @property
    def reconnects(self) -> int:
        self._driver.refresh_state()
        return super().reconnects

    @property
    def last_error(self) -> Exception | None:
        self._driver.refresh_state()
        return super().last_error

    @property
    def url_in_use(self) -> list[URL]:
        self._driver.refresh_state()
        return super().url_in_use

    def open_sender(self, address: str | Target | None, *, window: int = 1000,
                    presettled: bool = False, name: str | None = None,
                    max_message_size: int | None = None,
                    properties: Mapping[str, Any] | None = None,
                    timeout: float | None = OPEN_TIMEOUT,
                    session: Session | None = None,
                    rcv_settle_mode: str = "first") -> Sender:
        """A Sender to `address`: one link per shard, each with up to `window` in flight.

        At-least-once by default; `presettled=True` is at-most-once (no outcomes). A
        message larger than `max_message_size`, or than the peer accepts, raises
        MessageTooLarge at send(). Shards that failed get no link.

        `address` may be a Target (durability, capabilities, a dynamic node); None is the
        anonymous relay: each message goes to its own ``Message.address`` (the peer must
        offer ANONYMOUS-RELAY: see ``remote_offered_capabilities``). `name`: the link
        name, as given when there is one link (else with a per-link suffix).
        `properties`: the link's, in its attach. `session`: a Session of this
        connection's (``Connection.session()``) instead of the default one.
        `rcv_settle_mode="second"` asks the peer to settle only after we settled its
        outcome (which amqscale does as the outcome comes).
        """
        check_positive(window, "window")
        limit = check_limit(max_message_size)
        options = sender_options(address, name, properties, session_state_of(self, session),
                                 rcv_settle_mode)
        driver = self._driver
        state = _ops.run(driver, _ops.open_sender(
            driver, self._state, options.address, window, presettled, name, limit,
            options.target, options.settings), timeout)
        kind = AnonymousSender if options.anonymous else Sender
        return kind(driver, state, owner=self)

    def transaction(self, timeout: float | None = OPEN_TIMEOUT) -> Transaction:
        """Declare a local transaction (AMQP 1.0, part 4) on the connection (its first
        shard, for a sharded one); TransactionError if the peer has no coordinator or
        refuses. ``with conn.transaction() as txn:`` commits at the end, aborts on an
        exception."""
        driver = self._driver
        state = _ops.run(driver, _ops.declare(driver, self._state), timeout)
        return Transaction(driver, state)

    def session(self, incoming_window: int = 0, outgoing_window: int = 0) -> Session:
        """A session of its own on each shard, beside the default one: its links
        (``session.open_sender`` / ``open_receiver``) share its windows. `incoming_window`:
        the bytes the peer may send ahead on it (proton's session capacity; 0: its
        default); `outgoing_window`: the transfers we send ahead (0: proton's default)."""
        check_windows(incoming_window, outgoing_window)
        driver = self._driver
        with driver.lock:
            state = driver.core.begin_session(self._state, incoming_window, outgoing_window)
            driver.write_all()
        return Session(self, state)

    @overload
    def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                      auto_accept: bool = False, name: str | None = None,
                      max_message_size: int | None = None,
                      timeout: float | None = OPEN_TIMEOUT,
                      handler: None = None, handler_args: None = None,
                      dynamic: bool = False, selector: str | None = None,
                      properties: Mapping[str, Any] | None = None,
                      session: Session | None = None, datetimes: bool = False,
                      decimals: bool = False, rcv_settle_mode: str = "first"
                      ) -> Receiver: ...

    @overload
    def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                      auto_accept: bool = False, name: str | None = None,
                      max_message_size: int | None = None,
                      timeout: float | None = OPEN_TIMEOUT,
                      handler: str | Any,
                      handler_args: dict[str, Any] | None = None,
                      dynamic: bool = False, selector: str | None = None,
                      properties: Mapping[str, Any] | None = None,
                      session: Session | None = None, datetimes: bool = False,
                      decimals: bool = False, rcv_settle_mode: str = "first"
                      ) -> HandlerReceiver: ...

    def open_receiver(self, address: str | Source | None, *, credit: int = 1000,
                      auto_accept: bool = False, name: str | None = None,
                      max_message_size: int | None = None,
                      timeout: float | None = OPEN_TIMEOUT,
                      handler: Any = None, handler_args: dict[str, Any] | None = None,
                      dynamic: bool = False, selector: str | None = None,
                      properties: Mapping[str, Any] | None = None,
                      session: Session | None = None, datetimes: bool = False,
                      decimals: bool = False, rcv_settle_mode: str = "first"
                      ) -> Receiver | HandlerReceiver:
        """A Receiver from `address`: one link per shard, `credit` shared among them and
        granted again as deliveries are taken; `credit=0`: none is granted but what
        ``Receiver.flow(n)`` grants (with ``drain()``: a pull consumer).

        `max_message_size` is announced to the peer (a larger message ends the link).

        `address` may be a Source (durability and expiry for a durable subscription,
        distribution mode "copy" to browse, filters, capabilities such as "topic").
        `selector`: a JMS selector (``Source(selector=)``); whether the peer applies it
        is in ``remote_source.selector``. `dynamic=True`: the peer creates a node for
        this receiver (a temporary reply queue), named in ``Receiver.address``. A dynamic
        source or a durable subscription is one link, on the first shard; a topic is
        subscribed once per shard (each shard's link gets every message) unless the
        Source has the "shared" capability (its links share one subscription, by name).
        `name`: the link name, as given when there is one link or the source is shared
        (a durable subscription's name).
        `rcv_settle_mode="second"`: a delivery is settled here only after the sender
        settled our outcome (AMQP 1.0, 2.6.12; the peer may refuse the mode). `properties`
        and `session` as for open_sender. `datetimes` / `decimals`: AMQP
        timestamps and decimals in received messages come back as aware datetimes and
        Decimals (off by default: proton's types re-encode losslessly; docs/types.md).

        `handler`: run the consumer inside the workers instead. An import path
        ("package.module:Name") or an importable class or function (not one of
        ``__main__``): each worker that carries a shard calls it once, with
        `handler_args` (msgpack-able keyword arguments), and gives the result's
        ``on_message(event)`` the messages of its shards (a MessagingHandler: its
        `auto_accept` applies, and ``Reject`` / ``Release`` raised there). Each link keeps
        its share of `credit` granted as its handler finishes with messages, so the broker
        gives a slower handler fewer. Returns a `HandlerReceiver` (counts, failures,
        wait); a handler that cannot be imported raises `HandlerFailed` here. Open at
        least as many shards as there are workers to use every core.
        """
        check_credit(credit, handler)
        limit = check_limit(max_message_size)
        path = check_worker_handler(handler, handler_args, auto_accept)
        options = receiver_options(address, name, dynamic=dynamic, selector=selector,
                                   properties=properties,
                                   session=session_state_of(self, session),
                                   rcv_settle_mode=rcv_settle_mode)
        driver = self._driver
        decoding = natives(datetimes, decimals)
        state = _ops.run(driver, _ops.open_receiver(
            driver, self._state, options.address, credit, auto_accept, name, limit, path,
            handler_args, options.source, options.settings), timeout)
        state.natives = decoding
        if path is not None:
            return HandlerReceiver(driver, state, owner=self)
        return Receiver(driver, state, owner=self)

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close every shard and wait (up to `timeout`) for the peer to confirm."""
        _ops.run(self._driver, _ops.close_connection(self._driver, self._state), timeout)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A session the user began on a Connection (one AMQP session on each shard): its
    links share its flow-control windows, apart from the connection's default session."""

    def __init__(self, connection: Connection, state: SessionState) -> None:
        self.connection = connection
        self._state = state

    @property
    def ended(self) -> bool:
        return self._state.ended

    def open_sender(self, address: str | Target | None, **options: Any) -> Sender:
        """``Connection.open_sender`` on this session."""
        return self.connection.open_sender(address, session=self, **options)

    def open_receiver(self, address: str | Source | None,
                      **options: Any) -> Receiver | HandlerReceiver:
        """``Connection.open_receiver`` on this session."""
        return self.connection.open_receiver(address, session=self, **options)

    def close(self) -> None:
        """End the session on every shard; its links end with it."""
        driver = self.connection._driver
        with driver.lock:
            driver.core.end_session(self._state)
            driver.write_all()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def session_state_of(connection: Any, session: Any) -> SessionState | None:
    """The core state of a Session of `connection` (any face's), checked."""
    if session is None:
        return None
    if getattr(session, "connection", None) is not connection:
        raise ValueError("the session belongs to another connection")
    state: SessionState = session._state
    state.check_usable()
    return state


class Peer(NamedTuple):
    """A connection a peer opened to a listener."""

    container_id: str | None
    security: security.Security


class ListenerView:
    """What every face's Listener tells of its state (the core's ListenerState), and
    close()."""

    def __init__(self, driver: Driver, state: ListenerState) -> None:
        self._driver = driver
        self._state = state
        self.id = state.id
        self.host = state.host

    @property
    def port(self) -> int | None:
        return self._state.port

    @property
    def failure(self) -> Exception | None:
        return self._state.failure

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "amqps" if self._state.tls is not None else "amqp"
        return f"{scheme}://{host}:{self.port}"

    @property
    def links(self) -> int:
        """How many inbound links (remote senders) are attached now."""
        return len(self._state.receiver.links)

    @property
    def peers(self) -> list[Peer]:
        """The peers connected now: each one's container id and what its connection
        negotiated (the user it authenticated as, its certificate's subject, ...)."""
        return [Peer(c.remote_container, c.security or security.Security())
                for c in list(self._state.connections.values()) if not c.closed]

    def close(self) -> None:
        """Stop accepting and close the receiver: what was delivered and not taken is
        released, the inbound links are detached; accepted connections stay open until
        their peers close them."""
        _ops.close_listener(self._driver, self._state)


class Listener(ListenerView):
    """Inbound connections on one port, spread over the workers."""

    def __init__(self, container: Container, state: ListenerState) -> None:
        super().__init__(container._driver, state)
        self._container = container  # it lives as long as this listener does
        # Its owner is the Container, not this Listener: no cycle, so a dropped Container
        # goes as soon as nothing refers to it, without waiting for the cycle collector.
        self.receiver = Receiver(self._driver, state.receiver, owner=container)

    @property
    def peers(self) -> list[Peer]:
        self._driver.refresh_state()  # this face takes events only inside its calls
        return super().peers

    def accept_sender(self, timeout: float | None = None) -> Sender:
        """The Sender of the next remote receiver that attached (waiting up to `timeout`
        seconds for one: TimeoutError): what it sends goes to that peer's link. Its
        `address` is the source the peer asked for; `remote_source` the whole of it."""
        state = _ops.run(self._driver, _ops.offered_sender(self._state), timeout)
        return Sender(self._driver, state, owner=self._container)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

