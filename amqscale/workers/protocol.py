"""Commands (user process -> worker) and events (worker -> user process).

Each ring record is one msgspec-encoded *list* of these structs, so that one record, one
cursor publish and at most one wake-up cover a whole batch. Structs are array-like and tagged
with small integers: compact and fast to encode. The hot-path structs (``Send``,
``Deliveries``, ``Settle``, ``Outcomes``, ``Flow``) carry many messages each.

Identifiers: the user process numbers connections, listeners and the links it opens
(positive ints). A worker numbers the links that remote peers open on its listeners from
``INBOUND_LINK_BASE`` upwards, with the worker's index in the high bits, so the two spaces
never meet; the connections peers open to its listeners from -1 downwards, with its index
in the high bits too. Senders number their messages (``seq``) per link; receivers' deliveries are
numbered per link by the worker.

New AMQP features extend these structs with optional fields (defaults keep old encodings
readable) or add new tagged structs; nothing here needs reshaping for them.
"""

from __future__ import annotations

import msgspec

# The least time between two wake-ups of a sleeping peer for partial batches, both ways:
# a sleeping worker for the user's sends and settlements, a sleeping user for a worker's
# events. Busy peers take batches at once; this caps the wake-ups at moderate rates.
WAKE_INTERVAL = 200e-6

# Messages larger than a ring record cross the rings in parts (SendPart, DeliveryPart).
# A part carries at most fragment_size() bytes; records are sealed at record_budget(), so a
# record of small payloads plus one part always fits (budget + part < max_record_size).
MAX_FRAGMENT = 1 << 20


def fragment_size(max_record_size: int) -> int:
    """The most message bytes one SendPart or DeliveryPart carries, for a ring whose
    records hold at most `max_record_size` bytes."""
    return min(MAX_FRAGMENT, max_record_size // 4)


RECORD_BUDGET = 256 * 1024


def record_budget(max_record_size: int) -> int:
    """Seal a record once its payload bytes reach this: what is added after it (one more
    payload of at most fragment_size(), the framing) still fits. At most RECORD_BUDGET:
    the reader copies each record out, and records that stay in the caches cost less."""
    return min(RECORD_BUDGET, max_record_size // 2)


# Link ids at or above this are assigned by workers to inbound links (listeners).
INBOUND_LINK_BASE = 1 << 62
INBOUND_WORKER_SHIFT = 40

# Delivery states, as AMQP numbers them (the descriptor codes of the outcomes).
# SENT_SETTLED is amqscale's own: a pre-settled message was handed to the engine.
SENT_SETTLED = 0
RECEIVED = 0x23
ACCEPTED = 0x24
REJECTED = 0x25
RELEASED = 0x26
MODIFIED = 0x27
# Local transactions (AMQP 1.0, part 4): a declare's outcome (its data: [txn-id]), and the
# state a transactional transfer or disposition carries ([txn-id, outcome]).
DECLARED = 0x33
TRANSACTIONAL_STATE = 0x34
OUTCOME_NAMES = {
    ACCEPTED: "accepted",
    REJECTED: "rejected",
    RELEASED: "released",
    MODIFIED: "modified",
    DECLARED: "declared",
}

# Settle modes (AMQP 1.0, 2.8.2 and 2.8.3).
SND_UNSETTLED = 0
SND_SETTLED = 1
SND_MIXED = 2
RCV_FIRST = 0
RCV_SECOND = 1


class Condition(msgspec.Struct, array_like=True, frozen=True):
    """An AMQP error condition: a symbolic name, a description and optional info."""

    name: str
    description: str = ""


class Terminus(msgspec.Struct, array_like=True, omit_defaults=True):
    """A link's source or target, as its attach carries it (amqscale.terminus builds and
    checks them for the user). The AMQP-encoded fields are opaque to the worker."""

    address: str | None = None
    dynamic: bool = False
    durable: int = 0  # 0 none, 1 configuration, 2 unsettled-state
    expiry_policy: str | None = None  # None: the default (session-end)
    timeout: int = 0  # seconds
    capabilities: list[str] | None = None
    # AMQP-encoded filter map (amqscale.codec), opaque to the worker.
    filter: bytes | None = None
    distribution_mode: str | None = None  # "move", "copy"; sources only
    # AMQP-encoded dynamic-node-properties map (a dynamic terminus's).
    node_properties: bytes | None = None
    # A target that is a transaction coordinator (AMQP 1.0 part 4), not a node.
    coordinator: bool = False


class WorkerSpec(msgspec.Struct):
    """What a worker needs to start; passed on its command line (no secrets in it)."""

    index: int
    parent_pid: int
    rings: str  # RingPairHandles.encode()
    # Unix sockets for handing accepted connections over: worker 0 holds one to each
    # other worker (in index order), every other worker one from worker 0.
    handoff: list[int] = []
    # The user process's import path, appended to the worker's: a handler the user's
    # process can import (see OpenLink.handler) the worker can import too.
    sys_path: list[str] = []


# ---- commands ---------------------------------------------------------------------------


# SASL mechanisms a client with a user name tries, strongest first, and a listener with
# users offers by default. PLAIN sends the password itself: Cyrus drops it over a
# connection without TLS unless insecure mechanisms are allowed.
CREDENTIAL_MECHANISMS = "SCRAM-SHA-512 SCRAM-SHA-256 SCRAM-SHA-1 PLAIN"

# The condition of a connection or listener whose TLS settings proton or OpenSSL refused.
TLS_SETUP_FAILED = "amqscale:tls-setup-failed"


class TLSConfig(msgspec.Struct, array_like=True, frozen=True):
    """One side's TLS settings (amqscale.security.TLS, checked). A worker builds one
    proton SSL domain per distinct TLSConfig and reuses it for every connection."""

    server: bool
    ca: str | None = None  # a PEM file or a directory of them; None: the system's CAs
    verify: str = "peer-name"  # "peer-name", "peer" or "none" (see security.TLS)
    cert: str | None = None
    key: str | None = None
    # Travels only through the ring (shared memory), never argv or the environment.
    key_password: str | None = None
    protocols: str | None = None  # proton's list, "TLSv1.2 TLSv1.3"; None: all allowed
    ciphers: str | None = None

    def __repr__(self) -> str:  # the key password never reaches a log or a traceback
        return (f"TLSConfig(server={self.server}, ca={self.ca!r}, verify={self.verify!r}, "
                f"cert={self.cert!r}, key={self.key!r}, "
                f"key_password={'<hidden>' if self.key_password else None}, "
                f"protocols={self.protocols!r}, ciphers={self.ciphers!r})")


class OpenConnection(msgspec.Struct, tag=1, array_like=True):
    conn: int
    host: str
    port: int
    container_id: str
    virtual_host: str | None = None
    user: str | None = None
    # Travels only through the ring (shared memory), never argv or the environment.
    password: str | None = None
    sasl_mechanisms: str | None = None
    allow_insecure_mechanisms: bool = False
    idle_timeout: float = 0.0
    max_frame_size: int = 0
    tls: TLSConfig | None = None
    # The name TLS sends (SNI) and checks the peer's certificate against; None: host.
    peer_name: str | None = None
    authzid: str | None = None
    # Seconds to resolve the host, connect and receive the peer's open; 0: no limit.
    # On expiry the connection ends with condition "amqscale:connect-timeout".
    connect_timeout: float = 30.0
    # Seconds to wait before connecting (a reconnect's backoff): the worker keeps time.
    delay: float = 0.0
    # Our open's capabilities and properties (an AMQP-encoded map with symbol keys).
    offered_capabilities: list[str] | None = None
    desired_capabilities: list[str] | None = None
    properties: bytes | None = None
    channel_max: int = 0  # 0: proton's default

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return (f"OpenConnection(conn={self.conn}, host={self.host!r}, port={self.port}, "
                f"user={self.user!r}, password={'<hidden>' if self.password else None}, "
                f"tls={self.tls!r})")


class ServerSASL(msgspec.Struct, array_like=True, frozen=True):
    """How a listener authenticates its peers (amqscale.security.ServerSASL, checked).

    `users` (name -> password) are written into a private Cyrus sasldb in the worker;
    `config_path` instead points Cyrus at the user's own configuration directory (a
    `<config_name>.conf` there names its mechanisms, sasldb or keytab)."""

    mechanisms: str | None = None  # offered, space-separated; None: Cyrus's mech_list
    users: dict[str, str] | None = None
    config_path: str | None = None
    config_name: str = "proton-server"
    allow_insecure_mechanisms: bool = False

    def __repr__(self) -> str:  # passwords never reach a log or a traceback
        users = None if self.users is None else f"<{len(self.users)} users>"
        return (f"ServerSASL(mechanisms={self.mechanisms!r}, users={users}, "
                f"config_path={self.config_path!r}, config_name={self.config_name!r})")


class Listen(msgspec.Struct, tag=2, array_like=True):
    listener: int
    host: str
    port: int
    container_id: str
    # Credit each inbound link (a remote sender) is granted, and its settle modes.
    credit: int = 1000
    # Worker 0 binds and accepts; the others only adopt the connections it deals them.
    adopt_only: bool = False
    # The largest message an inbound link accepts (announced in its attach); 0: no limit.
    max_message_size: int = 0
    # An inbound link's attach waits for an AcceptLink (the event-driven face's
    # on_link_opening may set its termini); without: the worker answers it at once.
    defer_attach: bool = False
    # An inbound connection's open waits for an AcceptConnection (on_connection_opening
    # may set what our open offers); without: the worker answers it at once.
    defer_open: bool = False
    # TLS every inbound connection must speak (a plain one is refused); None: no TLS.
    tls: TLSConfig | None = None
    sasl: ServerSASL | None = None


class OpenLink(msgspec.Struct, tag=3, array_like=True):
    link: int
    conn: int
    name: str
    is_sender: bool
    source: Terminus
    target: Terminus
    snd_settle_mode: int = SND_UNSETTLED
    rcv_settle_mode: int = RCV_FIRST
    credit: int = 0
    # The largest message this end accepts (announced in the attach); 0: no limit.
    max_message_size: int = 0
    # A receiving link whose messages a handler in the worker takes (workers.inworker):
    # "package.module:Name", a class or factory called with `handler_args` once per
    # worker for each `handler_group` (the user's receiver: the same for its shards).
    # Credit is then the worker's to keep granted (`credit` per link); the user process
    # gets HandlerCounts and the LinkClosed of a failed handler, never the messages.
    handler: str | None = None
    handler_args: dict[str, object] | None = None
    handler_group: int = 0
    # The link gets a session of its own, ended when the link ends: RabbitMQ 3.10 keeps
    # what reaches a receiving link after its detach from every other consumer until the
    # session ends, and a link that closes mid-stream (a failed handler) must not strand
    # messages for as long as the connection lives.
    own_session: bool = False
    # The link's properties in its attach (an AMQP-encoded map with symbol keys).
    properties: bytes | None = None
    # The session it goes on: 0, the connection's default one; else one the user began
    # (BeginSession) on this connection.
    session: int = 0


class Send(msgspec.Struct, tag=4, array_like=True):
    """Messages for one link, numbered first_seq, first_seq+1, ... (AMQP-encoded)."""

    link: int
    first_seq: int
    payloads: list[bytes]
    settled: bool = False
    # Sent in this transaction (its txn-id): each transfer carries transactional-state.
    txn: bytes | None = None


class SendPart(msgspec.Struct, tag=12, array_like=True):
    """One part of a message too large for one record (more than fragment_size() bytes).

    A message's parts go consecutively on its link, in order, after the Sends of the
    messages before it; `last` ends it. The worker writes them as one delivery with seq
    `seq` (a multi-frame transfer), a part at a time as the transport takes them.
    """

    link: int
    seq: int
    chunk: bytes
    last: bool
    settled: bool = False
    txn: bytes | None = None  # as Send.txn (read from the first part)

    def __repr__(self) -> str:  # a megabyte of chunk helps no log
        return (f"SendPart(link={self.link}, seq={self.seq}, {len(self.chunk)} bytes, "
                f"last={self.last})")


class Settle(msgspec.Struct, tag=5, array_like=True):
    """The user's disposition of received deliveries; they are settled with it."""

    link: int
    ids: list[int]
    state: int = ACCEPTED
    condition: Condition | None = None
    delivery_failed: bool = False
    undeliverable_here: bool = False
    # AMQP-encoded annotations map for MODIFIED.
    annotations: bytes | None = None
    # The disposition is part of this transaction (its txn-id): it takes effect when the
    # transaction commits (the condition and annotations are then not sent).
    txn: bytes | None = None


class Flow(msgspec.Struct, tag=6, array_like=True):
    """Grant `credit` more to a receiving link; drain asks the sender to use it or lose it."""

    link: int
    credit: int
    drain: bool = False


class CloseLink(msgspec.Struct, tag=7, array_like=True):
    """End a link: close it (its terminus goes too), or with `detach` only detach it, so
    that a durable terminus (a durable subscription) stays for a later attach."""

    link: int
    condition: Condition | None = None
    detach: bool = False


class CloseConnection(msgspec.Struct, tag=8, array_like=True):
    conn: int
    condition: Condition | None = None


class CloseListener(msgspec.Struct, tag=9, array_like=True):
    listener: int


class AcceptLink(msgspec.Struct, tag=13, array_like=True):
    """Answer the attach of an inbound link of a `defer_attach` listener: our termini are
    the peer's, with what `source` and `target` set on top (a dynamic source's address)."""

    link: int
    source: Terminus | None = None
    target: Terminus | None = None


class AcceptConnection(msgspec.Struct, tag=14, array_like=True):
    """Answer the open of an inbound connection of a `defer_open` listener, with these
    in our open (`properties`: an AMQP-encoded map with symbol keys)."""

    conn: int
    offered_capabilities: list[str] | None = None
    desired_capabilities: list[str] | None = None
    properties: bytes | None = None


class BeginSession(msgspec.Struct, tag=15, array_like=True):
    """Begin a session of the user's on connection `conn`, numbered `session` (unique
    per user process); its links name it in OpenLink.session. `incoming_window`: the
    bytes it lets the peer send ahead (proton's session capacity); 0: proton's default."""

    session: int
    conn: int
    incoming_window: int = 0
    outgoing_window: int = 0


class EndSession(msgspec.Struct, tag=16, array_like=True):
    """End a user's session (its links end with it)."""

    session: int
    condition: Condition | None = None


class Shutdown(msgspec.Struct, tag=10, array_like=True):
    """Close everything gracefully and exit."""


class Stats(msgspec.Struct, tag=11, array_like=True):
    """Ask for the worker's counters (answered by WorkerStats)."""


Command = (
    OpenConnection | Listen | OpenLink | Send | Settle | Flow | CloseLink | CloseConnection
    | CloseListener | Shutdown | Stats | SendPart | AcceptLink | AcceptConnection
    | BeginSession | EndSession
)

# ---- events -----------------------------------------------------------------------------


class Ready(msgspec.Struct, tag=101, array_like=True):
    pid: int


class Security(msgspec.Struct, array_like=True, frozen=True):
    """What a connection negotiated: its TLS protocol and cipher and the subject of the
    peer's certificate (None without TLS, or without a peer certificate), and the SASL
    mechanism and authenticated user (None without SASL; on an inbound connection, the
    user the peer authenticated as)."""

    tls_protocol: str | None = None
    tls_cipher: str | None = None
    peer_subject: str | None = None
    sasl_mechanism: str | None = None
    user: str | None = None
    authzid: str | None = None
    # On a failed authentication: Cyrus's outcome, "auth" (wrong credentials), "sys",
    # "perm" or "temp" (the peer's system failed); None otherwise.
    sasl_outcome: str | None = None


class ConnectionOpened(msgspec.Struct, tag=102, array_like=True):
    """The peer opened the connection. An inbound one (a listener's, our open answers
    the peer's) has the worker's negative id in `conn` and its listener in `listener`."""

    conn: int
    remote_container: str | None = None
    listener: int | None = None
    security: Security | None = None
    # What the peer's open carried (properties: an AMQP-encoded map).
    remote_offered_capabilities: list[str] | None = None
    remote_desired_capabilities: list[str] | None = None
    remote_properties: bytes | None = None
    remote_hostname: str | None = None
    remote_max_frame_size: int = 0
    remote_channel_max: int = 0
    remote_idle_timeout: float = 0.0


class ConnectionClosed(msgspec.Struct, tag=103, array_like=True):
    """The connection ended: closed by either side, or its transport failed."""

    conn: int
    condition: Condition | None = None
    # Where a connection that never opened failed: "tls" (the handshake), "sasl" (the
    # authentication), or None (anything else, or after it opened).
    failed_in: str | None = None
    security: Security | None = None  # what was negotiated before it failed
    # The peer closed it (its close frame, with `condition`), rather than the transport
    # failing: only a peer's amqp:connection:forced is worth reconnecting after.
    by_peer: bool = False


class Listening(msgspec.Struct, tag=104, array_like=True):
    listener: int
    port: int


class ListenFailed(msgspec.Struct, tag=105, array_like=True):
    listener: int
    condition: Condition


class LinkOpened(msgspec.Struct, tag=106, array_like=True):
    """The remote end attached. For an inbound link (a listener's), `conn` is the listener."""

    link: int
    conn: int
    name: str
    is_sender: bool
    remote_source: Terminus | None = None
    remote_target: Terminus | None = None
    inbound: bool = False
    # The largest message the peer accepts on this link (its attach); 0: no limit.
    remote_max_message_size: int = 0
    # An inbound link's connection: the worker's id of it (as in ConnectionOpened).
    inbound_conn: int = 0
    # The peer's link properties (an AMQP-encoded map) and settle modes.
    remote_properties: bytes | None = None
    remote_snd_settle_mode: int = SND_MIXED
    remote_rcv_settle_mode: int = RCV_FIRST


class LinkClosed(msgspec.Struct, tag=107, array_like=True):
    link: int
    condition: Condition | None = None
    # It ended because its connection did (a ConnectionClosed follows): the user side
    # may attach it again on a new connection.
    with_connection: bool = False


class Deliveries(msgspec.Struct, tag=108, array_like=True):
    """Messages received on a link, numbered first_id, first_id+1, ...

    `settled` lists the positions (0-based, within this batch) of deliveries the sender
    had already settled (pre-settled / at-most-once): they take no disposition.
    """

    link: int
    first_id: int
    payloads: list[bytes]
    settled: list[int] | None = None


class DeliveryPart(msgspec.Struct, tag=112, array_like=True):
    """A part of a received message too large for one record: delivery `id` on `link`.

    The parts of one delivery come consecutively, after the Deliveries before it; `last`
    completes it. `aborted`: the sender aborted the transfer; drop the parts (the delivery
    takes no disposition). `settled` as in Deliveries, on the last part.
    """

    link: int
    id: int
    chunk: bytes
    last: bool
    settled: bool = False
    aborted: bool = False

    def __repr__(self) -> str:
        return (f"DeliveryPart(link={self.link}, id={self.id}, {len(self.chunk)} bytes, "
                f"last={self.last}, aborted={self.aborted})")


def gather_part(parts: list[bytes], event: DeliveryPart) -> bytes | None:
    """Add `event`'s chunk to `parts`, the parts of its delivery so far: the whole payload
    once the last part came (`parts` emptied), else None (also on an abort, which drops
    the parts)."""
    if event.aborted:
        parts.clear()
        return None
    parts.append(event.chunk)
    if not event.last:
        return None
    payload = b"".join(parts)
    parts.clear()
    return payload


class PartsWritten(msgspec.Struct, tag=113, array_like=True):
    """`count` more SendParts of message `seq` on `link` went to the engine (the last one
    included). The worker queues every part it is sent, so a sender that keeps only a few
    parts in flight by these bounds what a large message costs the worker."""

    link: int
    seq: int
    count: int


class Outcomes(msgspec.Struct, tag=109, array_like=True):
    """The remote's settled outcome for sent messages (by seq), all with one state.

    The seqs go as runs, `runs = [start0, end0, start1, end1, ...]` with each end
    exclusive: peers mostly settle in order, so a batch of outcomes is one run, which
    costs the same to carry and to apply whatever its length.

    State SENT_SETTLED reports pre-settled messages written to the engine: they have no
    outcome, but the sender's window and flush() count them until then.
    """

    link: int
    runs: list[int]
    state: int
    condition: Condition | None = None
    delivery_failed: bool = False
    undeliverable_here: bool = False
    # AMQP-encoded message-annotations map of a MODIFIED outcome.
    annotations: bytes | None = None
    # The outcome's own fields, AMQP-encoded: a DECLARED's [txn-id].
    data: bytes | None = None


def add_to_runs(runs: list[int], start: int, end: int) -> None:
    """Add seqs start..end-1 to `runs` (see Outcomes), extending the last run if they follow it."""
    if runs and runs[-1] == start:
        runs[-1] = end
    else:
        runs += (start, end)


def run_length(runs: list[int]) -> int:
    """How many seqs `runs` (see Outcomes) holds."""
    return sum(runs[1::2]) - sum(runs[0::2])


class WorkerStats(msgspec.Struct, tag=111, array_like=True):
    """A worker's counters since it started."""

    index: int
    pid: int
    connections: int
    sent: int  # messages written to the engine
    received: int  # messages taken from the engine
    tls_contexts: int = 0  # SSL domains built (one per distinct TLS configuration)


class HandlerCounts(msgspec.Struct, tag=114, array_like=True):
    """What the in-worker handler of a receiving link did since the link opened (totals,
    sent at most once per pass of the worker's loop for each link that moved)."""

    link: int
    handled: int  # on_message returned (or raised Reject / Release)
    accepted: int
    rejected: int
    released: int
    modified: int


# Condition names of a receiving link ended by its in-worker handler: its module or name
# could not be imported (the link is never attached), or a callback raised (the
# description carries the traceback).
HANDLER_NOT_FOUND = "amqscale:handler-not-found"
HANDLER_ERROR = "amqscale:handler-error"


class Credit(msgspec.Struct, tag=110, array_like=True):
    """A receiving link's drain ended (`drained`): the peer used or gave back the credit
    it had, after the deliveries that came before this (AMQP 1.0, 2.6.7)."""

    link: int
    credit: int
    drained: bool = False


class Trace(msgspec.Struct, tag=115, array_like=True):
    """Proton's frame trace of connection `conn` (PN_TRACE_FRM=1 in the environment):
    the lines proton wrote since the last pass, for the user process's log."""

    conn: int
    lines: list[str]


Event = (
    Ready | ConnectionOpened | ConnectionClosed | Listening | ListenFailed | LinkOpened
    | LinkClosed | Deliveries | Outcomes | Credit | WorkerStats | DeliveryPart | PartsWritten
    | HandlerCounts | Trace
)

_command_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(list[Command])
_event_decoder = msgspec.msgpack.Decoder(list[Event])

encode = _command_encoder.encode  # same encoder for both directions
encode_into = _command_encoder.encode_into


def decode_commands(record: bytes) -> list[Command]:
    return _command_decoder.decode(record)


def decode_events(record: bytes) -> list[Event]:
    return _event_decoder.decode(record)
