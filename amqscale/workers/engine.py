"""The adapter over proton's C engine: every connection of one worker, driven directly.

proton-python's MessagingHandler spends ~350 Python calls per message on event dispatch and
wrapper objects; this module calls the C functions that python-qpid-proton ships
(`cproton_ffi.lib`) with pre-allocated buffers instead: about ten C calls per message. It is
sans-IO: commands come in through `handle()`, events go out through the `emit` callback,
and each connection's bytes go in through `push()` and out through `peek()`/`pop()`. What
needs the network (connect, listen, a dropped connection's socket) it leaves in request
lists that `network.Network` takes; it owns no socket and resolves no name, so a unit test
drives it with bytes.

One collector serves every connection of the worker. cffi pointers hash by address, so the
dicts below map C objects (connections, links, deliveries) to their Python state.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from cproton_ffi import ffi, lib

from . import cyrus, security
from . import protocol as p
from ._binding import DRAINED, RX_BATCH, SLOW_PATH, address, as_delivery, hotpath

IO_CHUNK = 64 * 1024  # feed the engine in slices: large pushes stall the event drain
RECV_BUFFER = p.MAX_FRAGMENT  # a whole small message, or one part of a large one
# An outgoing message in parts is fed to proton only while less than this many parts of
# it are unsent: a huge message then never piles up in the worker, and the transport
# interleaves other links' frames with its frames. (Proton frames a whole delivery into an
# unbounded buffer when the peer's session window allows, so its buffered bytes are not
# visible; the connection counts part bytes fed minus bytes the socket took instead.)
SEND_AHEAD_PARTS = 2
NO_LIMIT = 1 << 64
PN_EOS = -1
PN_ABORTED = -11
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"

# The per-message C functions, bound once (attribute lookups on `lib` cost as much as calls).
_remote_state = lib.pn_delivery_remote_state
_settle = lib.pn_delivery_settle
_pending = lib.pn_delivery_pending
_partial = lib.pn_delivery_partial
_recv = lib.pn_link_recv
_advance = lib.pn_link_advance
_aborted = lib.pn_delivery_aborted
_unpack = ffi.unpack

# Event types we act on, bound once.
E_CONNECTION_REMOTE_OPEN = lib.PN_CONNECTION_REMOTE_OPEN
E_CONNECTION_REMOTE_CLOSE = lib.PN_CONNECTION_REMOTE_CLOSE
E_SESSION_REMOTE_OPEN = lib.PN_SESSION_REMOTE_OPEN
E_SESSION_REMOTE_CLOSE = lib.PN_SESSION_REMOTE_CLOSE
E_LINK_REMOTE_OPEN = lib.PN_LINK_REMOTE_OPEN
E_LINK_REMOTE_CLOSE = lib.PN_LINK_REMOTE_CLOSE
E_LINK_REMOTE_DETACH = lib.PN_LINK_REMOTE_DETACH
E_LINK_FLOW = lib.PN_LINK_FLOW
E_DELIVERY = lib.PN_DELIVERY
E_TRANSPORT_ERROR = lib.PN_TRANSPORT_ERROR
E_TRANSPORT_CLOSED = lib.PN_TRANSPORT_CLOSED

LOCAL_UNINIT = lib.PN_LOCAL_UNINIT
LOCAL_CLOSED = lib.PN_LOCAL_CLOSED
REMOTE_CLOSED = lib.PN_REMOTE_CLOSED

_DURABILITY = {0: lib.PN_NONDURABLE, 1: lib.PN_CONFIGURATION, 2: lib.PN_DELIVERIES}
_EXPIRY = {
    "link-detach": lib.PN_EXPIRE_WITH_LINK,
    "session-end": lib.PN_EXPIRE_WITH_SESSION,
    "connection-close": lib.PN_EXPIRE_WITH_CONNECTION,
    "never": lib.PN_EXPIRE_NEVER,
}
_EXPIRY_NAMES = {code: name for name, code in _EXPIRY.items()}
_DISTRIBUTION = {"move": lib.PN_DIST_MODE_MOVE, "copy": lib.PN_DIST_MODE_COPY}
_DISTRIBUTION_NAMES = {code: name for name, code in _DISTRIBUTION.items()}
# What a listener's open offers: its Receiver takes a message whatever its address.
LISTENER_CAPABILITIES = ["ANONYMOUS-RELAY"]


INTERNAL_ERROR = "amqscale:internal-error"
# A SASL frame's response field in proton's frame trace (a binary: b"...", escapes inside).
_SASL_SECRET = re.compile(r'((?:initial-)?response)=b"(?:[^"\\]|\\.)*"')
_logged: set[tuple[str, str, int]] = set()


def log_internal(exc: BaseException, what: str) -> None:
    """Report a worker-internal error on stderr, with its traceback the first time only:
    a fault hit by every message must not flood the log."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    key = (type(exc).__name__, where.filename if where else "", where.lineno or 0 if where else 0)
    if key in _logged:
        return
    _logged.add(key)
    print(f"amqscale worker {os.getpid()}: {what}: {exc!r} (contained; reported once)",
          file=sys.stderr, flush=True)
    traceback.print_exception(exc, file=sys.stderr)


def _free_connection(ptr: Any) -> None:
    """Free a connection made with pn_connection(): release the endpoint (its sessions
    and links go with it) and drop our reference. Release alone keeps the object: 1.5 KB
    a connection, forever (measured: RSS grew by that per connect/close cycle)."""
    lib.pn_connection_release(ptr)
    lib.pn_decref(ptr)


def describe(conn: Connection) -> str:
    """A connection, for error messages: its id, direction and peer address."""
    if conn.listener is not None:
        return f"inbound connection from {conn.address or '?'} (listener {conn.listener})"
    return f"connection {conn.id} to {conn.address or '?'}"


def _text(c_string: Any) -> str | None:
    return None if c_string == ffi.NULL else ffi.string(c_string).decode("utf-8", "replace")


def _condition(cond: Any) -> p.Condition | None:
    name = _text(lib.pn_condition_get_name(cond))
    if not name:
        return None
    return p.Condition(name, _text(lib.pn_condition_get_description(cond)) or "")


def _set_condition(cond: Any, condition: p.Condition | None) -> None:
    if condition is not None:
        lib.pn_condition_set_name(cond, condition.name.encode())
        lib.pn_condition_set_description(cond, condition.description.encode())


def _read_terminus(term: Any) -> p.Terminus | None:
    """A remote source or target, every field the attach carried (None: a null one)."""
    kind = lib.pn_terminus_get_type(term)
    if kind == lib.PN_UNSPECIFIED:
        return None
    expiry = lib.pn_terminus_get_expiry_policy(term)
    return p.Terminus(
        address=_text(lib.pn_terminus_get_address(term)),
        dynamic=bool(lib.pn_terminus_is_dynamic(term)),
        durable=_DURABILITY_NUMBERS.get(lib.pn_terminus_get_durability(term), 0),
        expiry_policy=_EXPIRY_NAMES.get(expiry) if expiry != lib.PN_EXPIRE_WITH_SESSION
        else None,
        timeout=lib.pn_terminus_get_timeout(term),
        capabilities=_read_symbols(lib.pn_terminus_capabilities(term)),
        filter=encode_data(lib.pn_terminus_filter(term)),
        distribution_mode=_DISTRIBUTION_NAMES.get(
            lib.pn_terminus_get_distribution_mode(term)),
        node_properties=encode_data(lib.pn_terminus_properties(term)),
        coordinator=kind == lib.PN_COORDINATOR,
    )


_DURABILITY_NUMBERS = {code: number for number, code in _DURABILITY.items()}


def encode_data(data: Any) -> bytes | None:
    """A pn_data_t's AMQP encoding, or None when it holds nothing (off the hot path)."""
    if data == ffi.NULL:  # proton makes some (remote properties) only once they come
        return None
    size = lib.pn_data_encoded_size(data)
    if size <= 0:
        return None
    buffer = ffi.new("char[]", size)
    n = lib.pn_data_encode(data, buffer, size)
    return ffi.unpack(buffer, n) if n > 0 else None


def _decode_into(data: Any, encoded: bytes | None) -> None:
    """Fill a pn_data_t from AMQP bytes the user side encoded (and checked)."""
    if encoded and data != ffi.NULL:
        lib.pn_data_clear(data)
        if lib.pn_data_decode(data, encoded, len(encoded)) < 0:
            lib.pn_data_clear(data)


def _read_symbols(data: Any) -> list[str] | None:
    """Capabilities: an array of symbols, or one symbol (both are allowed)."""
    if data == ffi.NULL:
        return None
    lib.pn_data_rewind(data)
    if not lib.pn_data_next(data):
        return None
    kind = lib.pn_data_type(data)
    if kind == lib.PN_SYMBOL:
        return [_bytes_text(lib.pn_data_get_symbol(data))]
    if kind != lib.PN_ARRAY or lib.pn_data_get_array_type(data) != lib.PN_SYMBOL:
        return None
    names = []
    lib.pn_data_enter(data)
    while lib.pn_data_next(data):
        names.append(_bytes_text(lib.pn_data_get_symbol(data)))
    lib.pn_data_exit(data)
    return names


def _bytes_text(value: Any) -> str:
    return ffi.unpack(value.start, value.size).decode("utf-8", "replace")


def _write_terminus(term: Any, spec: p.Terminus) -> None:
    if spec.coordinator:
        lib.pn_terminus_set_type(term, lib.PN_COORDINATOR)
    if spec.address is not None:
        lib.pn_terminus_set_address(term, spec.address.encode())
    if spec.dynamic:
        lib.pn_terminus_set_dynamic(term, True)
    if spec.durable:
        lib.pn_terminus_set_durability(term, _DURABILITY[spec.durable])
    if spec.expiry_policy:
        lib.pn_terminus_set_expiry_policy(term, _EXPIRY[spec.expiry_policy])
    if spec.timeout:
        lib.pn_terminus_set_timeout(term, spec.timeout)
    _decode_into(lib.pn_terminus_filter(term), spec.filter)
    _decode_into(lib.pn_terminus_properties(term), spec.node_properties)
    if spec.distribution_mode:
        lib.pn_terminus_set_distribution_mode(term, _DISTRIBUTION[spec.distribution_mode])
    if spec.capabilities:
        data = lib.pn_terminus_capabilities(term)
        lib.pn_data_clear(data)
        _put_symbols(data, spec.capabilities)


def _set_transactional(delivery: Any, txn: bytes, outcome: int | None) -> None:
    """Our state of `delivery`: transactional-state [txn-id, outcome] (AMQP 1.0, 4.5.8),
    proton's custom disposition (its data is the state's fields)."""
    data = lib.pn_disposition_data(lib.pn_delivery_local(delivery))
    lib.pn_data_clear(data)
    lib.pn_data_put_list(data)
    lib.pn_data_enter(data)
    lib.pn_data_put_binary(data, (len(txn), ffi.from_buffer(txn)))
    if outcome is not None:
        lib.pn_data_put_described(data)
        lib.pn_data_enter(data)
        lib.pn_data_put_ulong(data, outcome)
        lib.pn_data_put_list(data)
        lib.pn_data_exit(data)
    lib.pn_data_exit(data)
    lib.pn_delivery_update(delivery, p.TRANSACTIONAL_STATE)


def _transactional_outcome(disposition: Any) -> int:
    """The outcome inside a peer's transactional-state (0: none yet)."""
    data = lib.pn_disposition_data(disposition)
    if data == ffi.NULL:
        return 0
    lib.pn_data_rewind(data)
    if not lib.pn_data_next(data) or lib.pn_data_type(data) != lib.PN_LIST:
        return 0
    lib.pn_data_enter(data)
    outcome = 0
    if lib.pn_data_next(data) and lib.pn_data_next(data) and (
            lib.pn_data_type(data) == lib.PN_DESCRIBED):
        lib.pn_data_enter(data)
        if lib.pn_data_next(data) and lib.pn_data_type(data) == lib.PN_ULONG:
            outcome = lib.pn_data_get_ulong(data)
        lib.pn_data_exit(data)
    lib.pn_data_exit(data)
    return outcome


def _set_open_fields(ptr: Any, offered: list[str] | None, desired: list[str] | None,
                     properties: bytes | None) -> None:
    """What our open carries besides proton's own fields."""
    if offered:
        _put_symbols(lib.pn_connection_offered_capabilities(ptr), offered)
    if desired:
        _put_symbols(lib.pn_connection_desired_capabilities(ptr), desired)
    _decode_into(lib.pn_connection_properties(ptr), properties)


def _name_dynamic(term: Any) -> None:
    """A peer asked us for a dynamic node and the user named none: a unique address
    (AMQP 1.0, 3.5.3: the node's address goes in our attach)."""
    if lib.pn_terminus_is_dynamic(term) and lib.pn_terminus_get_address(term) == ffi.NULL:
        lib.pn_terminus_set_address(term, f"amqscale.dynamic.{uuid.uuid4()}".encode())


def _put_symbols(data: Any, names: list[str]) -> None:
    """`names` into a pn_data_t as an array of symbols (capabilities' type)."""
    lib.pn_data_put_array(data, False, lib.PN_SYMBOL)
    lib.pn_data_enter(data)
    for name in names:
        raw = name.encode()
        lib.pn_data_put_symbol(data, (len(raw), ffi.from_buffer(raw)))
    lib.pn_data_exit(data)


class Link:
    """A link's state on the worker side."""

    __slots__ = (
        "id", "ptr", "conn", "is_sender", "pending", "unsettled", "deliveries",
        "next_delivery_id", "opened", "closed", "settle_on_send", "may_presettle", "sent_in_head",
        "rx", "rx_first", "rx_settled", "accepted", "sent_settled", "dirty",
        "fast_limit", "max_message_size", "part_id", "part_size", "out", "releasing",
        "deferred", "own_session", "draining", "detached", "awaiting", "ptr_address",
    )

    def __init__(self, link_id: int, ptr: Any, conn: Connection, is_sender: bool) -> None:
        self.id = link_id
        self.ptr = ptr
        self.ptr_address = address(ptr)  # ptr as an int (see _binding)
        self.conn = conn
        self.is_sender = is_sender
        # Sender: Send commands waiting for credit (the head sent up to sent_in_head);
        # unsettled delivery (its address: an int) -> seq.
        self.pending: deque[p.Send | p.SendPart] = deque()
        self.sent_in_head = 0
        self.unsettled: dict[int, int] = {}
        self.settle_on_send = False
        # Receiver: delivery id -> the address of the delivery awaiting the user's
        # disposition (ints both: _hotpath.c reads and writes these dicts too).
        self.deliveries: dict[int, int] = {}
        self.next_delivery_id = 0
        self.may_presettle = True  # False once the peer promised unsettled transfers
        self.opened = False
        self.closed = False
        # What this pump gathered, published by Engine.flush_events().
        self.rx: list[bytes] = []
        self.rx_first = 0
        self.rx_settled: list[int] | None = None
        self.accepted: list[int] = []  # runs of seqs (see p.Outcomes)
        self.sent_settled: list[int] = []  # runs of seqs
        self.dirty = False
        # Receiver: a complete message of at most fast_limit bytes takes the hot path;
        # -1 while a message is being streamed in parts (delivery part_id, part_size
        # bytes so far). max_message_size: ours, 0 for none.
        self.fast_limit = 0
        self.max_message_size = 0
        self.part_id = -1
        self.part_size = 0
        # Sender: the delivery being written in parts (SendPart); it is tracked for its
        # outcome (in `unsettled`) from its last part on.
        self.out: Any = None
        # Receiver: we detached it; what the peer still sends before its detach is
        # released as it comes (fast_limit -1 sends it to the slow path).
        self.releasing = False
        # An inbound link whose attach waits for AcceptLink: nothing is sent on it nor
        # credit granted until then.
        self.deferred = False
        # A session for this link alone (OpenLink.own_session), ended when it ends.
        self.own_session: Any = None
        # Receiver: the user asked for a drain that the peer has not answered yet.
        self.draining = False
        # We detached it without closing it (CloseLink.detach): its terminus stays.
        self.detached = False
        # Receiver settle mode second: deliveries we gave an outcome, to settle once the
        # sender has (AMQP 1.0, 2.6.12); None in mode first.
        self.awaiting: set[Any] | None = None


class Connection:
    """One AMQP connection: its transport, session and links; `io` is the network's."""

    __slots__ = (
        "id", "io", "ptr", "transport", "session", "links", "closed_sent",
        "listener", "opened", "stalled", "address", "dropped", "unsent_parts", "uses_tls",
        "connected",
    )

    def __init__(self, conn_id: int, listener: int | None, address: str = "") -> None:
        self.id = conn_id
        self.io: Any = None
        self.ptr: Any = ffi.NULL
        self.transport: Any = ffi.NULL
        self.session: Any = ffi.NULL
        self.links: dict[Any, Link] = {}
        self.closed_sent = False
        self.listener = listener
        self.opened = False
        # Links whose message in parts waits for the transport to take bytes.
        self.stalled: set[Link] = set()
        self.unsent_parts = 0  # bytes of parts fed to proton, less the bytes written since
        self.address = address  # the peer's host:port, for error messages
        self.dropped = False  # its transport is gone: the byte methods do nothing
        self.uses_tls = False
        # Its socket is connected (the network says so): idle timeouts count from then,
        # not while a reconnect waits for its delay.
        self.connected = False


class Listener:
    """A listener's settings (the network holds its socket, on the worker that accepts)."""

    __slots__ = ("id", "container_id", "credit", "max_message_size", "defer_attach",
                 "defer_open", "tls", "sasl")

    def __init__(self, listener_id: int, container_id: str, credit: int,
                 max_message_size: int = 0, defer_attach: bool = False,
                 defer_open: bool = False, tls: p.TLSConfig | None = None,
                 sasl: p.ServerSASL | None = None):
        self.id = listener_id
        self.container_id = container_id
        self.credit = credit
        self.max_message_size = max_message_size
        self.defer_attach = defer_attach
        self.defer_open = defer_open
        self.tls = tls
        self.sasl = sasl


class Engine:
    """All connections, links and listeners of one worker."""

    def __init__(self, worker_index: int, emit: Callable[[p.Event], None],
                 fragment: int = p.MAX_FRAGMENT) -> None:
        self.worker_index = worker_index
        self.emit = emit
        # Received messages larger than this go to the user in DeliveryParts of this size.
        self.fragment = min(fragment, RECV_BUFFER)
        self.collector = lib.pn_collector()
        self.connections: dict[int, Connection] = {}
        self.by_ptr: dict[Any, Connection] = {}
        self.links: dict[int, Link] = {}
        self.link_by_ptr: dict[Any, Link] = {}
        self.link_by_address: dict[int, Link] = {}  # the same, for _hotpath.drain
        self._collector_address = address(self.collector)
        self.listeners: dict[int, Listener] = {}
        self.tls_domains = security.Domains()
        self.cyrus = cyrus.CyrusServer()  # listeners' authentication (one per process)
        self.next_inbound_link = (
            p.INBOUND_LINK_BASE + (worker_index << p.INBOUND_WORKER_SHIFT)
        )
        # Inbound connections get negative ids, the worker's index in their high bits.
        self.next_inbound_conn = -1 - (worker_index << p.INBOUND_WORKER_SHIFT)
        self.sent = 0  # messages written to the engine, for WorkerStats
        self.received = 0  # messages taken from it
        # For the network: connections to make, listeners to bind or close, dropped
        # connections whose sockets it closes. It takes them after each step.
        self.connect_requests: list[tuple[Connection, p.OpenConnection]] = []
        self.listen_requests: list[p.Listen] = []
        self.closed_listeners: list[int] = []
        self.dropped: list[Connection] = []
        # The network reads sockets into input_buffer and sends from output.
        self.input_buffer = bytearray(IO_CHUNK)
        self._in_c = ffi.from_buffer(self.input_buffer)
        self._out = bytearray(IO_CHUNK)
        self._out_c = ffi.from_buffer(self._out)
        self.output = memoryview(self._out)
        self._recv = bytearray(RECV_BUFFER)
        self._recv_c = ffi.from_buffer(self._recv)
        self._recv_view = memoryview(self._recv)
        self._tag_buf = ffi.new("char[8]")
        self._tag = ffi.new("pn_bytes_t *", (8, self._tag_buf))[0]
        # Links with deliveries or outcomes gathered in this pump (see flush_events).
        self._dirty: list[Link] = []
        # The sessions users began (BeginSession): id -> (connection, pn_session_t).
        self.sessions: dict[int, tuple[Connection, Any]] = {}
        # Frame tracing (proton's PN_TRACE_FRM=1): each transport's lines go to the user
        # process as Trace events, not to this process's stderr.
        self._trace: dict[int, list[str]] = {}
        # Receiving links whose drain is not answered yet (see _check_drained).
        self._draining: set[Link] = set()
        self._tracer = ffi.callback("void(pn_transport_t *, const char *)", self._on_trace) \
            if os.environ.get("PN_TRACE_FRM") not in (None, "", "0") else None
        self._handlers: dict[type, Callable[[Any], None]] = {
            p.Send: self._send, p.SendPart: self._send, p.Settle: self._settle,
            p.Flow: self._flow,
            p.OpenLink: self._open_link, p.OpenConnection: self._open_connection,
            p.AcceptLink: self._accept_deferred,
            p.AcceptConnection: self._accept_connection,
            p.Listen: self._listen, p.CloseLink: self._close_link,
            p.CloseConnection: self._close_connection,
            p.CloseListener: lambda cmd: self._close_listener(cmd.listener),
            p.BeginSession: self._begin_session, p.EndSession: self._end_session,
        }

    # ---- commands ------------------------------------------------------------------------

    def handle(self, cmd: p.Command) -> None:
        """Act on a command. A command that fails ends at most its link or connection."""
        handler = self._handlers.get(type(cmd))
        try:
            if handler is None:
                raise ValueError(f"unexpected command {type(cmd).__name__}")
            handler(cmd)
        except Exception as exc:  # a bug or a bad command must not end the worker
            self._command_failed(cmd, exc)

    def _command_failed(self, cmd: p.Command, exc: Exception) -> None:
        log_internal(exc, f"{type(cmd).__name__} failed")
        reason = f"{type(cmd).__name__} failed in the worker: {type(exc).__name__}: {exc}"
        link_id = getattr(cmd, "link", None)
        conn_id = getattr(cmd, "conn", None)
        if isinstance(cmd, p.Listen):
            self.listeners.pop(cmd.listener, None)
            self.emit(p.ListenFailed(cmd.listener, p.Condition(
                INTERNAL_ERROR, f"listener {cmd.listener} on {cmd.host}:{cmd.port}: {reason}")))
        elif link_id is not None:
            link = self.links.get(link_id)
            conn = link.conn if link is not None else self.connections.get(conn_id or 0)
            where = describe(conn) if conn is not None else "no connection"
            condition = p.Condition(INTERNAL_ERROR, f"link {link_id} on {where}: {reason}")
            if link is not None:
                self._contain(lambda: self._end_link(link, condition))
            else:
                self.emit(p.LinkClosed(link_id, condition))
        elif conn_id is not None:
            conn = self.connections.get(conn_id)
            if conn is not None:
                self.fail(conn, f"{describe(conn)}: {reason}", INTERNAL_ERROR)
            else:
                self.emit(p.ConnectionClosed(conn_id, p.Condition(INTERNAL_ERROR, reason)))

    def _contain(self, action: Callable[[], None]) -> None:
        """Run a clean-up step that must not fail in turn (log it if it does)."""
        try:
            action()
        except Exception as exc:
            log_internal(exc, "clean-up failed")

    def _open_connection(self, cmd: p.OpenConnection) -> None:
        """Set the connection up; the network resolves, connects and then moves bytes
        (proton buffers what it writes meanwhile)."""
        conn = Connection(cmd.conn, None, f"{cmd.host}:{cmd.port}")
        conn.uses_tls = cmd.tls is not None
        try:
            self._start_transport(conn, cmd.container_id, server=False,
                                  configure=lambda: self._configure_client(conn, cmd))
        except security.TLSSetupFailed as exc:
            self._release(conn)
            self.emit(p.ConnectionClosed(cmd.conn, p.Condition(
                p.TLS_SETUP_FAILED, f"{describe(conn)}: {exc}"), failed_in="tls"))
            return
        _set_open_fields(conn.ptr, cmd.offered_capabilities, cmd.desired_capabilities,
                         cmd.properties)
        lib.pn_connection_open(conn.ptr)
        conn.session = lib.pn_session(conn.ptr)
        lib.pn_session_open(conn.session)
        self.connect_requests.append((conn, cmd))

    def _configure_client(self, conn: Connection, cmd: p.OpenConnection) -> None:
        """Settings proton takes from the connection when the transport is bound."""
        lib.pn_connection_set_hostname(conn.ptr, (cmd.virtual_host or cmd.host).encode())
        security.configure_client(self.tls_domains, conn.ptr, conn.transport, cmd)
        if cmd.idle_timeout:
            lib.pn_transport_set_idle_timeout(conn.transport, int(cmd.idle_timeout * 1000))
        if cmd.max_frame_size:
            lib.pn_transport_set_max_frame(conn.transport, cmd.max_frame_size)
        if cmd.channel_max:
            lib.pn_transport_set_channel_max(conn.transport, cmd.channel_max)

    def _start_transport(self, conn: Connection, container_id: str, server: bool,
                         configure: Callable[[], None] | None = None) -> None:
        conn.ptr = lib.pn_connection()
        lib.pn_connection_set_container(conn.ptr, container_id.encode())
        lib.pn_connection_collect(conn.ptr, self.collector)
        conn.transport = lib.pn_transport()
        if self._tracer is not None:
            lib.pn_transport_trace(conn.transport, lib.PN_TRACE_FRM)
            lib.pn_transport_set_tracer(conn.transport, self._tracer)
        if server:
            lib.pn_transport_set_server(conn.transport)
        if configure is not None:
            configure()  # before binding: bind copies the credentials into SASL
        lib.pn_transport_bind(conn.transport, conn.ptr)
        self.connections[conn.id] = conn
        self.by_ptr[conn.ptr] = conn

    @staticmethod
    def _release(conn: Connection) -> None:
        """Free the proton objects of a connection that failed while being set up."""
        if conn.transport != ffi.NULL:
            lib.pn_decref(conn.transport)
            conn.transport = ffi.NULL
        if conn.ptr != ffi.NULL:
            _free_connection(conn.ptr)
            conn.ptr = ffi.NULL

    def _listen(self, cmd: p.Listen) -> None:
        """Keep the listener's settings; the network binds (unless adopt_only) and then
        calls listening() or listen_failed()."""
        try:  # a listener that could not work must fail now, not per connection
            if cmd.tls is not None:
                self.tls_domains.get(cmd.tls)
            self.cyrus.apply(cmd.sasl)
        except security.TLSSetupFailed as exc:
            self.emit(p.ListenFailed(cmd.listener, p.Condition(p.TLS_SETUP_FAILED, str(exc))))
            return
        except cyrus.CyrusConfigError as exc:
            self.emit(p.ListenFailed(cmd.listener, p.Condition(
                "amqscale:sasl-config-failed", str(exc))))
            return
        self.listeners[cmd.listener] = Listener(
            cmd.listener, cmd.container_id, cmd.credit, cmd.max_message_size,
            cmd.defer_attach, cmd.defer_open, cmd.tls, cmd.sasl)
        if cmd.adopt_only:
            self.emit(p.Listening(cmd.listener, cmd.port))
        else:
            self.listen_requests.append(cmd)

    def listening(self, listener_id: int, port: int) -> None:
        self.emit(p.Listening(listener_id, port))

    def listen_failed(self, listener_id: int, description: str) -> None:
        self.listeners.pop(listener_id, None)
        self.emit(p.ListenFailed(listener_id, p.Condition("amqscale:listen-failed",
                                                          description)))

    def adopt(self, listener_id: int, address: str) -> Connection | None:
        """An inbound connection arrived for a listener: a server transport for it (None
        if the listener was closed meanwhile)."""
        listener = self.listeners.get(listener_id)
        if listener is None:
            return None
        conn = Connection(self.next_inbound_conn, listener.id, address)
        self.next_inbound_conn -= 1
        conn.uses_tls = listener.tls is not None
        try:
            self._start_transport(conn, listener.container_id, server=True,
                                  configure=lambda: security.configure_server(
                                      self.tls_domains, conn.transport, listener.tls,
                                      listener.sasl))
        except security.TLSSetupFailed as exc:
            self._release(conn)
            print(f"amqscale worker {os.getpid()}: {describe(conn)} refused: {exc}",
                  file=sys.stderr, flush=True)
            return None
        return conn

    def _open_link(self, cmd: p.OpenLink) -> None:
        conn = self.connections.get(cmd.conn)
        if conn is None or conn.closed_sent:  # it ended before this came: say so
            self.emit(p.LinkClosed(cmd.link, p.Condition(
                "amqp:connection:forced", "the connection is closed"), True))
            return
        make = lib.pn_sender if cmd.is_sender else lib.pn_receiver
        session = conn.session
        if cmd.session:
            owner, session = self.sessions.get(cmd.session, (None, None))
            if owner is not conn or lib.pn_session_state(session) & LOCAL_CLOSED:
                self.emit(p.LinkClosed(cmd.link, p.Condition(
                    "amqp:session:unattached",
                    f"session {cmd.session} is not open on {describe(conn)}")))
                return
        elif cmd.own_session:
            session = lib.pn_session(conn.ptr)
            lib.pn_session_open(session)
        ptr = make(session, cmd.name.encode())
        _write_terminus(lib.pn_link_source(ptr), cmd.source)
        _write_terminus(lib.pn_link_target(ptr), cmd.target)
        _decode_into(lib.pn_link_properties(ptr), cmd.properties)
        lib.pn_link_set_snd_settle_mode(ptr, cmd.snd_settle_mode)
        lib.pn_link_set_rcv_settle_mode(ptr, cmd.rcv_settle_mode)
        link = self._new_link(cmd.link, ptr, conn, cmd.is_sender, cmd.max_message_size)
        link.settle_on_send = cmd.snd_settle_mode == p.SND_SETTLED
        if not cmd.is_sender and cmd.rcv_settle_mode == p.RCV_SECOND:
            link.awaiting = set()
        if cmd.own_session:
            link.own_session = session
        lib.pn_link_open(ptr)
        if not cmd.is_sender and cmd.credit:
            lib.pn_link_flow(ptr, cmd.credit)

    def _send(self, cmd: p.Send | p.SendPart) -> None:
        link = self.links.get(cmd.link)
        if link is None or link.closed or not link.is_sender:
            return  # the user side already knows the link ended (LinkClosed was sent)
        link.pending.append(cmd)
        if type(cmd) is p.Send:
            link.settle_on_send = cmd.settled or link.settle_on_send
        self._pump_sender(link)

    def _pump_sender(self, link: Link) -> None:
        """Send what credit allows from the queued Send commands, oldest first."""
        if link.deferred:
            return  # not attached on our side yet
        ptr = link.ptr
        credit = lib.pn_link_credit(ptr)
        pending = link.pending
        while pending and (credit > 0 or link.out is not None):
            cmd = pending[0]
            if not isinstance(cmd, p.Send):  # a SendPart
                if not self._send_parts(link):
                    return  # proton holds enough of it: more once the socket took some
                credit = lib.pn_link_credit(ptr)
                continue
            if link.out is not None:
                return  # the rest of a message in parts comes first
            start = link.sent_in_head
            end = min(len(cmd.payloads), start + credit)
            self._transfer(link, cmd.payloads, start, end, cmd.first_seq, cmd.txn)
            credit -= end - start
            if end == len(cmd.payloads):
                pending.popleft()
                link.sent_in_head = 0
            else:
                link.sent_in_head = end
        if credit > 0 and not pending:
            # Nothing more to send: a peer that asked for a drain gets its credit back
            # (proton does nothing unless the drain flag is set).
            lib.pn_link_drained(ptr)

    def _transfer(self, link: Link, payloads: list[bytes], start: int, end: int,
                  first_seq: int, txn: bytes | None = None) -> None:
        """One delivery per payload; the tag is the message's seq (unique while unsettled)."""
        if txn is not None:
            self._transfer_in(txn, link, payloads, start, end, first_seq)
            return
        self.sent += end - start
        ptr = link.ptr
        if hotpath is not None:
            hotpath.transfer(link.ptr_address, payloads, start, end, first_seq,
                             None if link.settle_on_send else link.unsettled)
            if link.settle_on_send:
                self._sent_settled(link, first_seq + start, first_seq + end)
            return
        tag_buf = self._tag_buf
        tag = self._tag
        new_delivery = lib.pn_delivery
        link_send = lib.pn_link_send
        memmove = ffi.memmove
        if link.settle_on_send:
            for payload in payloads[start:end]:
                delivery = new_delivery(ptr, tag)
                link_send(ptr, payload, len(payload))
                _advance(ptr)
                _settle(delivery)
            self._sent_settled(link, first_seq + start, first_seq + end)
            return
        unsettled = link.unsettled
        seq = first_seq + start
        for payload in payloads[start:end]:
            memmove(tag_buf, seq.to_bytes(8, "little"), 8)
            unsettled[address(new_delivery(ptr, tag))] = seq
            link_send(ptr, payload, len(payload))
            _advance(ptr)
            seq += 1

    def _sent_settled(self, link: Link, first_seq: int, end_seq: int) -> None:
        p.add_to_runs(link.sent_settled, first_seq, end_seq)
        if not link.dirty:
            self._mark(link)

    def _transfer_in(self, txn: bytes, link: Link, payloads: list[bytes], start: int,
                     end: int, first_seq: int) -> None:
        """Transfers of a transaction: each carries transactional-state (txn-id)."""
        self.sent += end - start
        ptr = link.ptr
        seq = first_seq + start
        for payload in payloads[start:end]:
            ffi.memmove(self._tag_buf, seq.to_bytes(8, "little"), 8)
            delivery = lib.pn_delivery(ptr, self._tag)
            _set_transactional(delivery, txn, None)
            if link.settle_on_send:
                lib.pn_link_send(ptr, payload, len(payload))
                _advance(ptr)
                _settle(delivery)
                p.add_to_runs(link.sent_settled, seq, seq + 1)
                if not link.dirty:
                    self._mark(link)
            else:
                link.unsettled[address(delivery)] = seq
                lib.pn_link_send(ptr, payload, len(payload))
                _advance(ptr)
            seq += 1

    def _send_parts(self, link: Link) -> bool:
        """Write the queued parts of the message at the head of `link.pending`, while
        less than SEND_AHEAD_PARTS parts are unsent on the connection. The first part
        makes the delivery (it needs credit); the last advances it. False: stopped for
        room (pop() resumes it)."""
        ptr = link.ptr
        pending = link.pending
        written = 0
        try:
            while pending and type(pending[0]) is p.SendPart:
                part = pending[0]
                if link.out is None:
                    if lib.pn_link_credit(ptr) <= 0:
                        return True  # no credit: _pump_sender stops
                    ffi.memmove(self._tag_buf, part.seq.to_bytes(8, "little"), 8)
                    link.out = lib.pn_delivery(ptr, self._tag)
                    if part.txn is not None:
                        _set_transactional(link.out, part.txn, None)
                elif link.conn.unsent_parts >= SEND_AHEAD_PARTS * self.fragment:
                    link.conn.stalled.add(link)
                    return False
                pending.popleft()
                if part.chunk:
                    lib.pn_link_send(ptr, part.chunk, len(part.chunk))
                    link.conn.unsent_parts += len(part.chunk)
                written += 1
                if part.last:
                    self.emit(p.PartsWritten(link.id, part.seq, written))
                    written = 0
                    self._end_parts(link, part)
            return True
        finally:
            if written:
                self.emit(p.PartsWritten(link.id, part.seq, written))

    def _end_parts(self, link: Link, part: p.SendPart) -> None:
        delivery = link.out
        link.out = None
        _advance(link.ptr)
        self.sent += 1
        if part.settled or link.settle_on_send:
            _settle(delivery)
            p.add_to_runs(link.sent_settled, part.seq, part.seq + 1)
            if not link.dirty:
                self._mark(link)
            return
        link.unsettled[address(delivery)] = part.seq
        if _remote_state(delivery) or lib.pn_delivery_settled(delivery):
            self._on_outcome(link, delivery)  # the peer decided before the last part

    def resume_stalled(self, conn: Connection) -> None:
        """The transport took bytes: feed the messages in parts that waited for room."""
        if conn.stalled:
            stalled = list(conn.stalled)
            conn.stalled.clear()
            for link in stalled:
                if not link.closed:
                    try:
                        self._pump_sender(link)
                    except Exception as exc:  # called from the network: end the link only
                        log_internal(exc, "sending parts failed")
                        self._contain(partial(self._end_link, link, p.Condition(
                            INTERNAL_ERROR, f"link {link.id} on {describe(conn)}: sending "
                            f"failed: {type(exc).__name__}: {exc}")))

    def _settle(self, cmd: p.Settle) -> None:
        link = self.links.get(cmd.link)
        if link is None:
            return
        deliveries = link.deliveries
        update = lib.pn_delivery_update
        settle = lib.pn_delivery_settle
        state = cmd.state
        if cmd.txn is not None or link.awaiting is not None:
            self._settle_specially(link, cmd)
            return
        plain = state in (p.ACCEPTED, p.RELEASED)
        if plain and hotpath is not None:
            hotpath.settle(deliveries, cmd.ids, state)
            return
        for delivery_id in cmd.ids:
            delivery_address = deliveries.pop(delivery_id, None)
            if delivery_address is None:
                continue  # pre-settled, or its link ended: nothing to tell the peer
            delivery = as_delivery(delivery_address)
            if not plain:
                self._describe_outcome(delivery, cmd)
            update(delivery, state)
            settle(delivery)

    def _settle_specially(self, link: Link, cmd: p.Settle) -> None:
        """Settle in a transaction (transactional-state), or in receiver settle mode
        second (our outcome now, the settle once the sender has settled)."""
        awaiting = link.awaiting
        for delivery_id in cmd.ids:
            delivery_address = link.deliveries.pop(delivery_id, None)
            if delivery_address is None:
                continue
            delivery = as_delivery(delivery_address)
            if cmd.txn is not None:
                _set_transactional(delivery, cmd.txn, cmd.state)
            else:
                if cmd.state not in (p.ACCEPTED, p.RELEASED):
                    self._describe_outcome(delivery, cmd)
                lib.pn_delivery_update(delivery, cmd.state)
            if awaiting is not None and not lib.pn_delivery_settled(delivery):
                awaiting.add(delivery)  # settled once the sender settles it
            else:
                _settle(delivery)

    def _describe_outcome(self, delivery: Any, cmd: p.Settle) -> None:
        local = lib.pn_delivery_local(delivery)
        if cmd.state == p.REJECTED:
            _set_condition(lib.pn_disposition_condition(local), cmd.condition)
        elif cmd.state == p.MODIFIED:
            lib.pn_disposition_set_failed(local, cmd.delivery_failed)
            lib.pn_disposition_set_undeliverable(local, cmd.undeliverable_here)
            if cmd.annotations:
                data = lib.pn_disposition_annotations(local)
                lib.pn_data_decode(data, cmd.annotations, len(cmd.annotations))

    def _flow(self, cmd: p.Flow) -> None:
        link = self.links.get(cmd.link)
        if link is None or link.closed:
            return
        if cmd.drain:
            link.draining = True
            self._draining.add(link)
            lib.pn_link_drain(link.ptr, cmd.credit)
        else:
            lib.pn_link_flow(link.ptr, cmd.credit)

    def _close_link(self, cmd: p.CloseLink) -> None:
        link = self.links.get(cmd.link)
        if link is None or link.detached:
            return
        if lib.pn_link_state(link.ptr) & LOCAL_CLOSED == 0:
            if not link.is_sender:
                self._release_unsettled(link)
                self._abort_stream(link)
                link.releasing = True
                link.fast_limit = -1
            _set_condition(lib.pn_link_condition(link.ptr), cmd.condition)
            if cmd.detach:
                link.detached = True
                lib.pn_link_detach(link.ptr)
            else:
                lib.pn_link_close(link.ptr)

    def _begin_session(self, cmd: p.BeginSession) -> None:
        conn = self.connections.get(cmd.conn)
        if conn is None or conn.closed_sent:
            return  # its links will hear that the connection ended
        session = lib.pn_session(conn.ptr)
        if cmd.incoming_window:
            lib.pn_session_set_incoming_capacity(session, cmd.incoming_window)
        if cmd.outgoing_window:
            lib.pn_session_set_outgoing_window(session, cmd.outgoing_window)
        lib.pn_session_open(session)
        self.sessions[cmd.session] = (conn, session)

    def _end_session(self, cmd: p.EndSession) -> None:
        conn, session = self.sessions.pop(cmd.session, (None, None))
        if conn is None or lib.pn_session_state(session) & LOCAL_CLOSED:
            return
        for link in list(conn.links.values()):
            if lib.pn_link_session(link.ptr) == session and not link.closed:
                self._close_link(p.CloseLink(link.id))
        _set_condition(lib.pn_session_condition(session), cmd.condition)
        lib.pn_session_close(session)

    def _release_unsettled(self, link: Link) -> None:
        """Before a receiving link detaches, give back what the user did not settle (also
        what is still on its way to the user): a broker may keep a detached link's
        unsettled deliveries from every other receiver until the connection ends."""
        link.rx = []
        link.rx_settled = None
        for delivery_address in link.deliveries.values():
            delivery = as_delivery(delivery_address)
            lib.pn_delivery_update(delivery, p.RELEASED)
            _settle(delivery)
        link.deliveries.clear()

    def _close_connection(self, cmd: p.CloseConnection) -> None:
        conn = self.connections.get(cmd.conn)
        if conn is None:
            return
        if lib.pn_connection_state(conn.ptr) & LOCAL_CLOSED == 0:
            _set_condition(lib.pn_connection_condition(conn.ptr), cmd.condition)
            lib.pn_connection_close(conn.ptr)

    def _close_listener(self, listener_id: int) -> None:
        if self.listeners.pop(listener_id, None) is not None:
            self.closed_listeners.append(listener_id)

    def close_all(self) -> None:
        for listener_id in list(self.listeners):
            self._close_listener(listener_id)
        for conn in list(self.connections.values()):
            self._close_connection(p.CloseConnection(conn.id))

    # ---- bytes in and out (the network calls these) ------------------------------------

    # A dropped connection's transport is gone: these then do nothing (what the network
    # does with the socket of a connection that just ended must not reach proton).

    def capacity(self, conn: Connection) -> int:
        """How many bytes the transport takes now; below 0: its input is closed."""
        return -1 if conn.dropped else int(lib.pn_transport_capacity(conn.transport))

    def push(self, conn: Connection, n: int) -> None:
        """Feed the first `n` bytes of `input_buffer` (at most capacity()) and act on them."""
        if not conn.dropped:
            lib.pn_transport_push(conn.transport, self._in_c, n)
            self.process()

    def close_input(self, conn: Connection) -> None:
        """The peer closed its side (EOF)."""
        if not conn.dropped:
            lib.pn_transport_close_tail(conn.transport)
            self.process()

    def peek(self, conn: Connection) -> int:
        """Put up to IO_CHUNK bytes to send in `output`; returns how many (0: nothing to
        send; -1: the output is closed, nothing more will come)."""
        if conn.dropped:
            return -1
        transport = conn.transport
        pending = lib.pn_transport_pending(transport)
        if pending <= 0:
            if pending < 0:
                return -1
            if lib.pn_transport_capacity(transport) < 0:
                return self._stuck(conn)
            return 0
        return int(lib.pn_transport_peek(transport, self._out_c, min(pending, IO_CHUNK)))

    def _stuck(self, conn: Connection) -> int:
        """The input ended and nothing more will be written, yet proton keeps the
        transport open (it does when the input ends inside a frame header): end it."""
        cond = lib.pn_transport_condition(conn.transport)
        if not lib.pn_condition_get_name(cond):
            lib.pn_condition_set_name(cond, b"amqp:connection:framing-error")
            lib.pn_condition_set_description(
                cond, f"{describe(conn)}: the input ended inside a frame".encode())
        lib.pn_transport_close_head(conn.transport)
        self.process()
        if not conn.dropped:
            self._drop(conn)
        return -1

    def pop(self, conn: Connection, n: int) -> None:
        """The socket took `n` bytes of `output`."""
        if conn.dropped:
            return
        lib.pn_transport_pop(conn.transport, n)
        if conn.unsent_parts:
            conn.unsent_parts = max(0, conn.unsent_parts - n)
        if conn.stalled:
            self.resume_stalled(conn)

    def output_closed(self, conn: Connection) -> None:
        """peek() returned -1 and the network shut its socket's write side: once the input
        is closed too, the connection is over."""
        if not conn.dropped and lib.pn_transport_capacity(conn.transport) < 0:
            self._drop(conn)

    def tick(self, now: float) -> float | None:
        """Idle-timeout processing; returns seconds until the next tick is due."""
        soonest: float | None = None
        now_ms = int(now * 1000)
        for conn in self.connections.values():
            if not conn.connected:
                continue
            deadline = lib.pn_transport_tick(conn.transport, now_ms)
            if deadline:
                wait = max(0.0, (deadline - now_ms) / 1000)
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def fail(self, conn: Connection, description: str,
             name: str = "amqp:connection:failed") -> None:
        """End a connection at once (its socket failed, or processing it did)."""
        if conn.id not in self.connections:
            return
        try:
            cond = lib.pn_transport_condition(conn.transport)
            if not lib.pn_condition_get_name(cond):
                lib.pn_condition_set_name(cond, name.encode())
                lib.pn_condition_set_description(cond, description.encode())
            lib.pn_transport_close_tail(conn.transport)
            lib.pn_transport_close_head(conn.transport)
            self.process()
            self._drop(conn)
        except Exception as exc:  # forget it whatever state proton is in
            log_internal(exc, f"ending {describe(conn)} failed")
            self._forget(conn, p.Condition(name, description))

    def _forget(self, conn: Connection, condition: p.Condition) -> None:
        """The last resort: drop a connection's state without asking proton anything."""
        if not conn.closed_sent:
            conn.closed_sent = True
            for link in list(conn.links.values()):
                self._contain(partial(self._link_ended, link, condition, True))
            if conn.listener is None or conn.opened:
                self.emit(p.ConnectionClosed(conn.id, condition))
        self.connections.pop(conn.id, None)
        self.by_ptr.pop(conn.ptr, None)
        self.dropped.append(conn)
        self._forget_sessions(conn)
        conn.dropped = True  # its proton objects are left as they are: they may be broken

    def _forget_sessions(self, conn: Connection) -> None:
        """The user's sessions of a connection that is gone (they go with it)."""
        for session_id in [k for k, (owner, _) in self.sessions.items() if owner is conn]:
            del self.sessions[session_id]

    def _drop(self, conn: Connection) -> None:
        """Forget a connection whose transport is closed at both ends."""
        if conn.id not in self.connections:
            return
        if not conn.closed_sent:
            condition = _condition(lib.pn_transport_condition(conn.transport)) or _condition(
                lib.pn_connection_remote_condition(conn.ptr))
            self._connection_ended(conn, condition)
        del self.connections[conn.id]
        del self.by_ptr[conn.ptr]
        self.dropped.append(conn)
        self._forget_sessions(conn)
        lib.pn_transport_unbind(conn.transport)
        lib.pn_decref(conn.transport)
        _free_connection(conn.ptr)
        conn.transport = ffi.NULL
        conn.dropped = True

    def _connection_ended(self, conn: Connection, condition: p.Condition | None,
                          by_peer: bool = False) -> None:
        conn.closed_sent = True
        for link in conn.links.values():
            self._link_ended(link, condition, True)  # None: it closed cleanly
        if conn.listener is None or conn.opened:  # an inbound one: once announced
            phase = negotiated = None
            if not conn.opened and conn.transport != ffi.NULL:
                phase = security.failed_in(conn.transport, conn.uses_tls, condition)
                negotiated = security.negotiated(conn.transport, conn.uses_tls)
            self.emit(p.ConnectionClosed(conn.id, condition, phase, negotiated, by_peer))

    def _link_ended(self, link: Link, condition: p.Condition | None,
                    with_connection: bool = False) -> None:
        if link.closed:
            return
        self.flush_events()  # what the link received comes before the news it ended
        self._abort_stream(link)
        link.closed = True
        link.out = None
        link.conn.stalled.discard(link)
        link.pending.clear()
        link.deliveries.clear()
        self.links.pop(link.id, None)
        self.link_by_ptr.pop(link.ptr, None)
        self.link_by_address.pop(link.ptr_address, None)
        session = link.own_session
        if session is not None and lib.pn_session_state(session) & LOCAL_CLOSED == 0:
            lib.pn_session_close(session)
        self.emit(p.LinkClosed(link.id, condition, with_connection))

    # ---- the collector -------------------------------------------------------------------

    def process(self) -> None:
        """Drain the collector, acting on each event. An event whose handling fails ends
        its connection, not the worker."""
        while True:
            try:
                self._process()
                return
            except Exception as exc:
                self._event_failed(exc)

    def _event_failed(self, exc: Exception) -> None:
        log_internal(exc, "processing a connection's events failed")
        event = lib.pn_collector_peek(self.collector)
        if not event:
            return
        conn = self.by_ptr.get(lib.pn_event_connection(event))
        kind = _text(lib.pn_event_type_name(lib.pn_event_type(event)))
        lib.pn_collector_pop(self.collector)
        if conn is not None:
            self.fail(conn, f"{describe(conn)}: the worker failed on its {kind}: "
                            f"{type(exc).__name__}: {exc}", INTERNAL_ERROR)

    def _process(self) -> None:
        if hotpath is None:
            self._process_events()
            return
        drain = hotpath.drain
        collector, links, dirty = self._collector_address, self.link_by_address, self._dirty
        flush = self._flush_link
        while True:
            # The C path takes the delivery events it can; the first it leaves (any other
            # event, or a delivery of the slow path) is the Python path's.
            result = drain(collector, links, dirty, flush)
            if result == DRAINED:
                return
            if result == SLOW_PATH:
                self._process_events(one=True)
            else:
                self._recv_failed(result)

    def _recv_failed(self, code: int) -> None:
        """The C path's read of the head event's delivery failed with `code`."""
        delivery = lib.pn_event_delivery(lib.pn_collector_peek(self.collector))
        self._on_recv_error(self.link_by_ptr[lib.pn_delivery_link(delivery)], delivery, code)
        lib.pn_collector_pop(self.collector)

    def _process_events(self, one: bool = False) -> None:
        """Act on the collector's events (with `one`, on the head event only)."""
        collector = self.collector
        peek = lib.pn_collector_peek
        pop = lib.pn_collector_pop
        event_type = lib.pn_event_type
        event_delivery = lib.pn_event_delivery
        delivery_link = lib.pn_delivery_link
        link_by_ptr = self.link_by_ptr
        while True:
            event = peek(collector)
            if not event:
                return
            kind = event_type(event)
            if kind == E_DELIVERY:  # the hot path: one per message each way
                delivery = event_delivery(event)
                link = link_by_ptr.get(delivery_link(delivery))
                if link is None:
                    _settle(delivery)  # its link ended: proton may free it (and its bytes)
                elif link.is_sender:
                    self._on_outcome(link, delivery)
                else:
                    self._on_transfer(link, delivery)
            elif kind == E_LINK_FLOW:
                self._on_flow(lib.pn_event_link(event))
            elif kind == E_LINK_REMOTE_OPEN:
                self._on_link_open(lib.pn_event_link(event))
            elif kind in (E_LINK_REMOTE_CLOSE, E_LINK_REMOTE_DETACH):
                self._on_link_close(lib.pn_event_link(event))
            elif kind == E_CONNECTION_REMOTE_OPEN:
                self._on_connection_open(lib.pn_event_connection(event))
            elif kind == E_CONNECTION_REMOTE_CLOSE:
                self._on_connection_close(lib.pn_event_connection(event))
            elif kind == E_SESSION_REMOTE_OPEN:
                session = lib.pn_event_session(event)
                if lib.pn_session_state(session) & LOCAL_UNINIT and not (
                        lib.pn_connection_state(lib.pn_session_connection(session))
                        & LOCAL_UNINIT):  # else once its open is answered
                    lib.pn_session_open(session)
            elif kind == E_SESSION_REMOTE_CLOSE:
                self._on_session_close(lib.pn_event_session(event))
            elif kind == E_TRANSPORT_CLOSED:
                conn = self.by_ptr.get(lib.pn_transport_connection(lib.pn_event_transport(event)))
                if conn is not None:
                    pop(collector)
                    self._drop_popped(conn)
                    if one:
                        return
                    continue
            pop(collector)
            if one:
                return

    def _drop_popped(self, conn: Connection) -> None:
        """_drop() for an event already popped: a failure must not be blamed on the
        connection of the next event (see _event_failed)."""
        try:
            self._drop(conn)
        except Exception as exc:
            log_internal(exc, f"ending {describe(conn)} failed")
            self._forget(conn, p.Condition(INTERNAL_ERROR, f"{describe(conn)}: {exc}"))

    def _on_connection_open(self, ptr: Any) -> None:
        conn = self.by_ptr.get(ptr)
        if conn is None:
            return
        if lib.pn_connection_state(ptr) & LOCAL_UNINIT:  # an inbound connection
            refusal = security.refused_authorization(conn.transport)
            if refusal is not None:
                self._refuse(conn, refusal)
                return
            listener = self.listeners.get(conn.listener)  # type: ignore[arg-type]
            if listener is None or not listener.defer_open:
                # Answer its open now (else AcceptConnection does).
                _set_open_fields(ptr, LISTENER_CAPABILITIES, None, None)
                lib.pn_connection_open(ptr)
        conn.opened = True
        transport = conn.transport
        self.emit(p.ConnectionOpened(
            conn.id, _text(lib.pn_connection_remote_container(ptr)), conn.listener,
            security.negotiated(transport, conn.uses_tls),
            remote_offered_capabilities=_read_symbols(
                lib.pn_connection_remote_offered_capabilities(ptr)),
            remote_desired_capabilities=_read_symbols(
                lib.pn_connection_remote_desired_capabilities(ptr)),
            remote_properties=encode_data(lib.pn_connection_remote_properties(ptr)),
            remote_hostname=_text(lib.pn_connection_remote_hostname(ptr)),
            remote_max_frame_size=lib.pn_transport_get_remote_max_frame(transport),
            remote_channel_max=lib.pn_transport_remote_channel_max(transport),
            remote_idle_timeout=lib.pn_transport_get_remote_idle_timeout(transport) / 1000,
        ))

    def _refuse(self, conn: Connection, condition: p.Condition) -> None:
        """Close an inbound connection at once, before the user hears of it."""
        lib.pn_connection_open(conn.ptr)
        _set_condition(lib.pn_connection_condition(conn.ptr), condition)
        lib.pn_connection_close(conn.ptr)

    def _accept_connection(self, cmd: p.AcceptConnection) -> None:
        """Answer a deferred inbound open with what AcceptConnection sets in ours."""
        conn = self.connections.get(cmd.conn)
        if conn is None or not lib.pn_connection_state(conn.ptr) & LOCAL_UNINIT:
            return  # gone, or answered already
        ptr = conn.ptr
        _set_open_fields(ptr, cmd.offered_capabilities, cmd.desired_capabilities,
                         cmd.properties)
        lib.pn_connection_open(ptr)
        # The sessions the peer began meanwhile: proton sends nothing of an endpoint
        # opened before the connection's open went out, so they are opened only now.
        waiting = LOCAL_UNINIT | lib.PN_REMOTE_ACTIVE
        session = lib.pn_session_head(ptr, waiting)
        while session != ffi.NULL:
            following = lib.pn_session_next(session, waiting)
            lib.pn_session_open(session)
            session = following

    def _on_connection_close(self, ptr: Any) -> None:
        conn = self.by_ptr.get(ptr)
        if conn is None:
            return
        condition = _condition(lib.pn_connection_remote_condition(ptr))
        if lib.pn_connection_state(ptr) & LOCAL_CLOSED == 0:
            lib.pn_connection_close(ptr)
        if not conn.closed_sent:
            self._connection_ended(conn, condition, by_peer=True)

    def _on_session_close(self, session: Any) -> None:
        """The peer ended a session (RabbitMQ does so to refuse an address): its links end
        with the session's condition, and the connection gets a fresh session."""
        condition = _condition(lib.pn_session_remote_condition(session)) or p.Condition(
            "amqp:session:ended", "the peer ended the session")
        if lib.pn_session_state(session) & LOCAL_CLOSED == 0:
            lib.pn_session_close(session)
        conn = self.by_ptr.get(lib.pn_session_connection(session))
        if conn is None:
            return
        if condition.name == "amqp:internal-error" and conn.listener is None:
            # The peer failed under us (RabbitMQ ends every session so when it shuts
            # down, then drops the connection): the connection is as good as lost, and
            # its links are attached again on the next one. Its transport is closed
            # here and dropped by the collector's TRANSPORT_CLOSED, in this same pass.
            cond = lib.pn_transport_condition(conn.transport)
            if not lib.pn_condition_get_name(cond):
                lib.pn_condition_set_name(cond, b"amqp:connection:failed")
                lib.pn_condition_set_description(cond, (
                    f"{describe(conn)}: the peer ended a session: {condition.name}: "
                    f"{condition.description}").encode())
            lib.pn_transport_close_tail(conn.transport)
            lib.pn_transport_close_head(conn.transport)
            return
        for link in list(conn.links.values()):
            if lib.pn_link_session(link.ptr) == session:
                self._link_ended(link, condition)
                del conn.links[link.ptr]
        if conn.session == session and conn.listener is None and not conn.closed_sent:
            conn.session = lib.pn_session(conn.ptr)
            lib.pn_session_open(conn.session)

    def _on_link_open(self, ptr: Any) -> None:
        conn = self.by_ptr.get(lib.pn_session_connection(lib.pn_link_session(ptr)))
        if conn is None:
            return
        link = conn.links.get(ptr)
        if link is None:
            link = self._accept_link(conn, ptr)
        source = _read_terminus(lib.pn_link_remote_source(ptr))
        target = _read_terminus(lib.pn_link_remote_target(ptr))
        # A null remote terminus is a refusal: the detach with its reason follows.
        refused = (target if link.is_sender else source) is None and conn.listener is None
        if refused or lib.pn_link_state(ptr) & REMOTE_CLOSED:
            return
        link.opened = True
        link.may_presettle = lib.pn_link_remote_snd_settle_mode(ptr) != p.SND_UNSETTLED
        self.emit(p.LinkOpened(
            link.id, conn.listener if conn.listener is not None else conn.id,
            _text(lib.pn_link_name(ptr)) or "", link.is_sender, source, target,
            inbound=conn.listener is not None,
            remote_max_message_size=lib.pn_link_remote_max_message_size(ptr),
            inbound_conn=conn.id if conn.listener is not None else 0,
            remote_properties=encode_data(lib.pn_link_remote_properties(ptr)),
            remote_snd_settle_mode=lib.pn_link_remote_snd_settle_mode(ptr),
            remote_rcv_settle_mode=lib.pn_link_remote_rcv_settle_mode(ptr),
        ))
        if link.is_sender:
            self._pump_sender(link)

    def _accept_link(self, conn: Connection, ptr: Any) -> Link:
        """A remote peer attached to us (we listen): mirror its termini and open (a
        `defer_attach` listener's link: once AcceptLink says with which termini)."""
        is_sender = bool(lib.pn_link_is_sender(ptr))
        listener = self.listeners.get(conn.listener) if conn.listener is not None else None
        limit = listener.max_message_size if listener is not None else 0
        link = self._new_link(self.next_inbound_link, ptr, conn, is_sender, limit)
        self.next_inbound_link += 1
        if listener is not None and listener.defer_attach:
            link.deferred = True
        else:
            self._attach_inbound(link, None, None)
        return link

    def _attach_inbound(self, link: Link, source: p.Terminus | None,
                        target: p.Terminus | None) -> None:
        ptr = link.ptr
        lib.pn_terminus_copy(lib.pn_link_source(ptr), lib.pn_link_remote_source(ptr))
        lib.pn_terminus_copy(lib.pn_link_target(ptr), lib.pn_link_remote_target(ptr))
        if source is not None:
            _write_terminus(lib.pn_link_source(ptr), source)
        if target is not None:
            _write_terminus(lib.pn_link_target(ptr), target)
        _name_dynamic(lib.pn_link_source(ptr))
        _name_dynamic(lib.pn_link_target(ptr))
        snd_settle_mode = lib.pn_link_remote_snd_settle_mode(ptr)
        lib.pn_link_set_snd_settle_mode(ptr, snd_settle_mode)
        lib.pn_link_set_rcv_settle_mode(ptr, lib.pn_link_remote_rcv_settle_mode(ptr))
        if link.is_sender:  # a remote receiver that asked for pre-settled messages gets them
            link.settle_on_send = snd_settle_mode == p.SND_SETTLED
        elif lib.pn_link_remote_rcv_settle_mode(ptr) == p.RCV_SECOND:
            link.awaiting = set()  # as the remote sender asked: settle after it does
        lib.pn_link_open(ptr)
        if not link.is_sender:
            listener = self.listeners.get(link.conn.listener)  # type: ignore[arg-type]
            lib.pn_link_flow(ptr, listener.credit if listener is not None else 1000)

    def _accept_deferred(self, cmd: p.AcceptLink) -> None:
        link = self.links.get(cmd.link)
        if link is None or link.closed or not link.deferred:
            return
        link.deferred = False
        if lib.pn_link_state(link.ptr) & LOCAL_CLOSED:
            return  # detached meanwhile (CloseLink)
        self._attach_inbound(link, cmd.source, cmd.target)
        if link.is_sender:
            self._pump_sender(link)

    def _new_link(self, link_id: int, ptr: Any, conn: Connection, is_sender: bool,
                  max_message_size: int) -> Link:
        link = Link(link_id, ptr, conn, is_sender)
        if max_message_size:
            lib.pn_link_set_max_message_size(ptr, max_message_size)  # in our attach
        link.max_message_size = max_message_size
        link.fast_limit = min(self.fragment, max_message_size or NO_LIMIT)
        conn.links[ptr] = link
        self.links[link_id] = link
        self.link_by_ptr[ptr] = link
        self.link_by_address[link.ptr_address] = link
        return link

    def _on_link_close(self, ptr: Any) -> None:
        conn = self.by_ptr.get(lib.pn_session_connection(lib.pn_link_session(ptr)))
        link = conn.links.get(ptr) if conn is not None else None
        condition = _condition(lib.pn_link_remote_condition(ptr))
        if lib.pn_link_state(ptr) & LOCAL_CLOSED == 0 and not (link and link.detached):
            lib.pn_link_close(ptr)
        if conn is not None and link is not None:
            self._link_ended(link, condition)
            del conn.links[ptr]  # both ends detached: nothing more comes for it

    def _on_flow(self, ptr: Any) -> None:
        conn = self.by_ptr.get(lib.pn_session_connection(lib.pn_link_session(ptr)))
        link = conn.links.get(ptr) if conn is not None else None
        if link is None:
            return
        if link.is_sender:
            self._pump_sender(link)
        elif link.draining:
            self._check_drained(link)

    def _check_drained(self, link: Link) -> None:
        """A drain is over once the link has no credit left beyond what arrived: the
        peer's flow gave it back, or its transfers used it all (then it owes no flow)."""
        ptr = link.ptr
        if lib.pn_link_credit(ptr) > lib.pn_link_queued(ptr):
            return
        link.draining = False
        self._draining.discard(link)
        lib.pn_link_set_drain(ptr, False)
        self._flush_link(link)  # the deliveries before it come first
        self.emit(p.Credit(link.id, 0, drained=True))

    def _on_outcome(self, link: Link, delivery: Any) -> None:
        """The receiver updated a sent delivery: settle it once the outcome is final."""
        state = _remote_state(delivery)
        if state == p.ACCEPTED:  # the common case, checked first
            seq = link.unsettled.pop(address(delivery), None)
            if seq is None:
                self._untracked_outcome(link, delivery)
                return
            _settle(delivery)
            runs = link.accepted  # p.add_to_runs, inlined: once per message
            if runs and runs[-1] == seq:
                runs[-1] = seq + 1
            else:
                runs += (seq, seq + 1)
            if not link.dirty:
                self._mark(link)
            return
        if state == p.TRANSACTIONAL_STATE:  # the outcome inside it decides
            state = _transactional_outcome(lib.pn_delivery_remote(delivery))
        if not (p.ACCEPTED < state <= p.MODIFIED or state == p.DECLARED
                or lib.pn_delivery_settled(delivery)):
            return  # a non-terminal state (received): wait for the outcome
        seq = link.unsettled.pop(address(delivery), None)
        if seq is None:
            self._untracked_outcome(link, delivery)
            return
        _settle(delivery)
        if state == p.ACCEPTED:  # accepted inside a transactional state
            p.add_to_runs(link.accepted, seq, seq + 1)
            if not link.dirty:
                self._mark(link)
            return
        self._emit_outcome(link, delivery, seq, state)

    def _untracked_outcome(self, link: Link, delivery: Any) -> None:
        """An outcome for a delivery with no seq: settle it, unless it is the message
        still being written in parts (its last part looks at the outcome)."""
        if link.out is None or delivery != link.out:
            _settle(delivery)

    def _emit_outcome(self, link: Link, delivery: Any, seq: int, state: int) -> None:
        """A rejected, released or modified outcome, with its details."""
        remote = lib.pn_delivery_remote(delivery)
        self.emit(p.Outcomes(
            link.id, [seq, seq + 1], state,
            condition=_condition(lib.pn_disposition_condition(remote)),
            delivery_failed=bool(lib.pn_disposition_is_failed(remote)),
            undeliverable_here=bool(lib.pn_disposition_is_undeliverable(remote)),
            annotations=self._encode_data(lib.pn_disposition_annotations(remote)),
            data=encode_data(lib.pn_disposition_data(remote)) if state == p.DECLARED
            else None,
        ))

    def _encode_data(self, data: Any) -> bytes | None:
        """A pn_data_t's AMQP encoding, or None when it holds nothing."""
        size = lib.pn_data_encoded_size(data)
        if size <= 0:
            return None
        n = lib.pn_data_encode(data, self._recv_c, RECV_BUFFER)
        return bytes(self._recv_view[:n]) if n > 0 else None

    def _on_transfer(self, link: Link, delivery: Any) -> None:
        """Bytes arrived for a delivery: take the message once it is complete.

        The hot path takes a complete message of at most `link.fast_limit` bytes whole;
        anything else (nothing pending: a state change of one already taken; a partial,
        large, oversized or aborted one; a message being streamed) goes the slow way.
        """
        size = _pending(delivery)
        if not size or size > link.fast_limit or _partial(delivery):
            self._on_transfer_slow(link, delivery, size)
            return
        ptr = link.ptr
        n = _recv(ptr, self._recv_c, RECV_BUFFER)
        if n < 0:
            self._on_recv_error(link, delivery, n)
            return
        payload = _unpack(self._recv_c, n)
        _advance(ptr)
        delivery_id = link.next_delivery_id
        link.next_delivery_id = delivery_id + 1
        rx = link.rx
        if not rx:
            link.rx_first = delivery_id
            if not link.dirty:
                self._mark(link)
        if link.may_presettle and lib.pn_delivery_settled(delivery):
            _settle(delivery)  # pre-settled: nothing more to say
            if link.rx_settled is None:
                link.rx_settled = []
            link.rx_settled.append(len(rx))
        else:
            link.deliveries[delivery_id] = address(delivery)
        rx.append(payload)
        if len(rx) >= RX_BATCH:
            self._flush_link(link)  # bound a record's size

    def _on_transfer_slow(self, link: Link, delivery: Any, size: int) -> None:
        if link.releasing:  # in flight when we detached: it goes back at once
            if size or _partial(delivery):
                lib.pn_delivery_update(delivery, p.RELEASED)
                _settle(delivery)  # proton drops the rest of its frames
            return
        if link.part_id < 0:  # not streaming yet
            if not size:
                awaiting = link.awaiting
                if awaiting and delivery in awaiting and lib.pn_delivery_settled(delivery):
                    awaiting.discard(delivery)  # the sender settled our outcome: done
                    _settle(delivery)
                    return
                if _aborted(delivery):
                    self._on_recv_error(link, delivery, PN_ABORTED)
                return  # a state change of a delivery already taken
            if link.max_message_size and size > link.max_message_size:
                self._too_large(link, delivery, size)
                return
            if size < self.fragment and _partial(delivery):
                return  # small so far: wait for the rest, then take it whole
            if _aborted(delivery):
                self._on_recv_error(link, delivery, PN_ABORTED)
                return
            self._flush_link(link)  # the deliveries gathered before it go first
            link.part_id = link.next_delivery_id
            link.next_delivery_id += 1
            link.part_size = 0
            link.fast_limit = -1  # every event of the link comes here until it ends
        elif delivery != lib.pn_link_current(link.ptr):
            return  # a state change of an earlier delivery, not news of this message
        self._stream(link, delivery)

    def _stream(self, link: Link, delivery: Any) -> None:
        """Pass what proton holds of a large message on in parts of `fragment` bytes (the
        last one shorter), so that the worker never holds much more than a part of it."""
        ptr = link.ptr
        fragment = self.fragment
        while True:
            more = _partial(delivery)
            if more and _pending(delivery) < fragment:
                return  # wait for a whole part
            n = _recv(ptr, self._recv_c, fragment)
            if n == PN_EOS:
                n = 0  # complete, and everything was passed on already
            elif n < 0:
                self._on_recv_error(link, delivery, n)
                return
            link.part_size += n
            if link.max_message_size and link.part_size > link.max_message_size:
                self._too_large(link, delivery, link.part_size)
                return
            last = not more and not _pending(delivery)
            chunk = _unpack(self._recv_c, n)
            if last:
                self._end_stream(link, delivery, chunk)
                return
            self.emit(p.DeliveryPart(link.id, link.part_id, chunk, False))

    def _end_stream(self, link: Link, delivery: Any, chunk: bytes) -> None:
        settled = link.may_presettle and bool(lib.pn_delivery_settled(delivery))
        if settled:
            _settle(delivery)  # also advances the link
        else:
            _advance(link.ptr)
            link.deliveries[link.part_id] = address(delivery)
        self.received += 1
        self.emit(p.DeliveryPart(link.id, link.part_id, chunk, True, settled=settled))
        self._reset_stream(link)

    def _reset_stream(self, link: Link) -> None:
        link.part_id = -1
        link.part_size = 0
        link.fast_limit = -1 if link.releasing else min(self.fragment,
                                                         link.max_message_size or NO_LIMIT)

    def _abort_stream(self, link: Link) -> None:
        """Tell the user that the message it has parts of will not be completed."""
        if link.part_id >= 0:
            self.emit(p.DeliveryPart(link.id, link.part_id, b"", True, aborted=True))
            self._reset_stream(link)

    def _on_recv_error(self, link: Link, delivery: Any, code: int) -> None:
        """pn_link_recv failed: the sender aborted the transfer (PN_ABORTED), or proton is
        in a state it should not be (any other code). Drop the delivery; an aborted one
        gets its credit back here (the user side neither takes nor settles it)."""
        self._abort_stream(link)
        _settle(delivery)  # also advances the link past it
        if code == PN_ABORTED:
            lib.pn_link_flow(link.ptr, 1)
            return
        self._end_link(link, p.Condition(
            "amqscale:internal-error",
            f"link {link.id}: pn_link_recv returned {code} on {describe(link.conn)}"))

    def _too_large(self, link: Link, delivery: Any, size: int) -> None:
        """A message over our max-message-size: the link ends (AMQP 1.0, 2.7.3), not more."""
        self._abort_stream(link)
        _settle(delivery)  # proton ignores the rest of a settled delivery's frames
        self._end_link(link, p.Condition(MESSAGE_SIZE_EXCEEDED, (
            f"link {link.id} on {describe(link.conn)}: a message of {size} bytes or "
            f"more exceeds the link's max-message-size of {link.max_message_size}")))

    def _end_link(self, link: Link, condition: p.Condition) -> None:
        """Detach a link with `condition` and tell the user at once."""
        if lib.pn_link_state(link.ptr) & LOCAL_CLOSED == 0:
            _set_condition(lib.pn_link_condition(link.ptr), condition)
            lib.pn_link_close(link.ptr)
        self._link_ended(link, condition)

    def _mark(self, link: Link) -> None:
        link.dirty = True
        self._dirty.append(link)

    def _flush_link(self, link: Link) -> None:
        if link.rx:
            self.received += len(link.rx)
            self.emit(p.Deliveries(link.id, link.rx_first, link.rx, link.rx_settled))
            link.rx = []
            link.rx_settled = None
        if link.accepted:
            self.emit(p.Outcomes(link.id, link.accepted, p.ACCEPTED))
            link.accepted = []
        if link.sent_settled:
            self.emit(p.Outcomes(link.id, link.sent_settled, p.SENT_SETTLED))
            link.sent_settled = []

    def _on_trace(self, transport: Any, line: Any) -> None:
        conn = self.by_ptr.get(lib.pn_transport_connection(transport))
        conn_id = conn.id if conn is not None else 0
        text = ffi.string(line).decode("utf-8", "replace")
        # SASL responses carry credentials (PLAIN's password): never in a log.
        self._trace.setdefault(conn_id, []).append(_SASL_SECRET.sub(r"\1=<hidden>", text))

    def flush_events(self) -> None:
        """Emit the deliveries and outcomes this pump gathered, a batch per link (and
        the frame trace, when tracing)."""
        if self._trace:
            for conn_id, lines in self._trace.items():
                self.emit(p.Trace(conn_id, lines))
            self._trace = {}
        if self._draining:
            for link in list(self._draining):
                if link.closed:
                    self._draining.discard(link)
                else:
                    self._check_drained(link)
        if self._dirty:
            for link in self._dirty:
                link.dirty = False
                self._flush_link(link)
            self._dirty = []
