"""A test broker written to the AMQP 1.0 specification, on proton-python's engine.

A second, independent AMQP 1.0 implementation to test amqscale against (it shares no code with
amqscale). One process, all state in memory, plain AMQP (SASL ANONYMOUS, or no SASL layer):

    python tests/peers/spec_broker.py --host 127.0.0.1 --port N [--refuse-coordinator] [--window W]

prints ``listening on PORT`` (flushed) once it accepts connections, logs to stderr, and exits
with status 0 on SIGTERM or SIGINT. Started by ``amqscale.testing.brokers.SpecBroker``.

What it does
------------
Nodes. An address names a queue, created on first attach or first message, unless it is a
topic: a source/target with capability ``topic`` creates (or uses) a topic, ``queue`` a queue;
the attach echoes the one honoured (and ``shared`` when honoured). An attach with ``topic`` to
an existing queue (or ``queue`` to a topic) is refused with ``amqp:precondition-failed``.

Queues. Distribution mode ``move`` (the default): competing consumers, round robin among the
links that have credit. ``copy`` browses: the link gets every message in the queue now and later
ones, and its outcomes remove nothing. The attach's source echoes the mode applied (topics:
``copy``). Released messages go back in their original order, ahead of later ones.

Topics. Every subscription gets its own copy of each message. A receiver gets a subscription:
  * non-durable (default): deleted when its link detaches;
  * durable: source durability ``configuration`` (1) or ``unsettled-state`` (2) and expiry
    policy ``never``; keyed by (remote container id, link name). Detach with closed=false keeps
    it and it keeps accumulating; a re-attach with the same container id and link name resumes
    it (an attach with a null source address finds it too); detach with closed=true deletes it.
    A re-attach with a different selector (or topic) replaces it: the old one and its messages
    are dropped, as JMS says of a changed durable subscription;
  * capability ``shared``: links of any connection with the same link name share one
    subscription, round robin; it is deleted when its last link goes (non-durable) or when its
    last link closes with closed=true (durable).
Subscription names (in stats): durable ``CONTAINER|LINK``, shared ``shared|LINK``, others
``CONTAINER|LINK|N``.

Filters. ``apache.org:selector-filter:string`` (descriptor symbol, or ulong 0x0000468C00000004)
with a JMS selector; on a queue the link gets only matching messages (others stay for other
consumers); on a topic only matching messages enter the subscription. The attach echoes only
the filters applied: others (e.g. no-local) are left out. A selector that does not parse:
attach answered with a null source, then detach with ``amqp:invalid-field`` naming the error.

Selector subset. Identifiers: application properties, and JMSPriority (header priority, 4 if
absent), JMSMessageID (message-id as a string), JMSCorrelationID, JMSType (the subject),
JMSDeliveryMode ('PERSISTENT'/'NON_PERSISTENT'), JMSTimestamp (creation-time, ms), JMSExpiration
(absolute-expiry-time, ms), JMSRedelivered (delivery-count > 0); a missing one is NULL.
Identifiers are [A-Za-z_$][A-Za-z0-9_$.]*, or "double quoted". Literals: 'strings' ('' escapes
a quote), integers (decimal, 0x hex, optional L), decimals (1.5, .5, 1e3, optional F/D), TRUE,
FALSE, NULL. Operators, by precedence: OR; AND; NOT; = <> < > <= >= and [NOT] LIKE 'pat'
[ESCAPE 'c'] (% any run, _ one character), [NOT] IN (literal, ...), [NOT] BETWEEN a AND b,
IS [NOT] NULL; + -; * /; unary + -; parentheses. Keywords are case-insensitive. SQL
three-valued logic: NULL operands, mismatched types, strings or booleans under < > <= >=, and
division by zero give UNKNOWN; a message is selected only when the selector is TRUE.

Dynamic nodes. A receiver with a dynamic source, or a sender with a dynamic target, gets a new
temporary queue ``dynamic/UUID`` (address returned in the attach). It lives as long as the link
that created it (lifetime-policy delete-on-close): deleted when that link detaches or closes,
or its session or connection ends; expiry-policy ``never`` keeps it until the broker exits.

Anonymous relay. The open offers ``ANONYMOUS-RELAY`` (and ``SHARED-SUBS``); a sender with a
null target address routes each message by its ``to`` (queue or topic, as above). A message
without ``to`` is rejected with ``amqp:precondition-failed``.

Drain. A consumer's flow with drain=true gets what is queued up to its credit, then the rest of
its credit is drained (a flow with credit 0 back), at once if nothing is queued.

Transactions (local, spec part 4). A coordinator link (refused with ``--refuse-coordinator``:
null target, detach ``amqp:not-implemented``) takes ``declare`` (declared, fresh binary
txn-id; a global-id is refused with ``amqp:not-implemented``) and ``discharge``. Transfers under
transactional-state are answered with transactional-state(accepted) and held, invisible, until
the discharge: commit enqueues them, abort drops them. A consumer's transactional outcome holds
the message (acquired) until the discharge: commit applies the outcome, abort releases it. The
discharge is answered ``accepted``; an unknown txn-id is rejected with
``amqp:transaction:unknown-id`` (so is a transfer naming one). Test hook: a commit of a
transaction that sent to ``$rollback-on-commit`` is rejected with ``amqp:transaction:rollback``
and its work discarded. Closing the coordinator link, or the connection, aborts its open
transactions. A control message that is not a declare or discharge list: rejected with
``amqp:decode-error``.

Settlement. Senders may use any snd-settle-mode; rcv-settle-mode ``second`` is honoured where
the broker receives: it states its outcome, waits for the client's settle, then settles. For
the broker's deliveries: accepted (or settled without outcome) removes; released requeues;
modified with delivery-failed increments the header's delivery-count (message-annotations in
the outcome are merged) and requeues; undeliverable-here is never offered to that link again;
rejected moves the message to the queue ``$dead-letter``. A receiver asking for snd-settle-mode
``settled`` gets pre-settled deliveries, removed when sent. Unsettled deliveries of a link that
goes are returned as modified(delivery-failed). Message TTLs are not enforced.

Stats. A receiver attached to ``$stats`` gets one message, a JSON string:
``{"queues": {ADDR: depth}, "topics": {ADDR: [subscription]}, "subscriptions": {NAME: depth},
"dead_letter": N, "transactions": {"declared", "committed", "aborted", "open"},
"connections": [{"container_id", "hostname", "properties", "offered_capabilities",
"desired_capabilities", "max_frame_size", "channel_max", "idle_timeout", "sessions", "open",
"links": [{"name", "role", "source_address", "target_address", "snd_settle_mode",
"rcv_settle_mode", "properties", "capabilities", "filters", "dynamic", "durability",
"expiry_policy", "distribution_mode", "attached"}]}]}`` -- what each client sent (the last 200
connections); "role" is the client's role, settle modes are the requested ones as numbers,
properties are stringified.

Robustness. A transfer whose payload is not a sequence of AMQP message sections is rejected
with ``amqp:decode-error`` (checked strictly: proton's own decoder accepts garbage). A handler
error is logged and closes only the link (or connection) concerned with ``amqp:internal-error``;
the broker keeps running. Sending to ``$stats`` stores nothing.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import logging
import re
import signal
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proton import (
    Condition,
    Connection,
    Data,
    Delivery,
    Described,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Session,
    Terminus,
    symbol,
    ulong,
)
from proton.reactor import Container

log = logging.getLogger("spec-broker")

SELECTOR_SYMBOL = "apache.org:selector-filter:string"
SELECTOR_CODE = 0x0000468C00000004
DECLARE = ("amqp:declare:list", 0x31)
DISCHARGE = ("amqp:discharge:list", 0x32)
DECLARED = 0x33
TRANSACTIONAL_STATE = 0x34
ACCEPTED, REJECTED, RELEASED, MODIFIED = 0x24, 0x25, 0x26, 0x27
DEAD_LETTER = "$dead-letter"
STATS = "$stats"
ROLLBACK_ON_COMMIT = "$rollback-on-commit"
OFFERED = ["ANONYMOUS-RELAY", "SHARED-SUBS"]
MAX_CONNECTION_RECORDS = 200


# ---------------------------------------------------------------------------------------------
# JMS selectors: tokenizer, recursive-descent parser to closures, three-valued evaluation.
# ---------------------------------------------------------------------------------------------


class SelectorError(ValueError):
    """A selector that does not parse; the message says where and why."""


Value = Any  # None (NULL/UNKNOWN), bool, int, float, str, or another AMQP value
Evaluator = Callable[[Message], Value]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<number>0[xX][0-9a-fA-F]+[lL]?
        | (?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fFdDlL]?)
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<ident>[A-Za-z_$][A-Za-z0-9_$.]*)
    | (?P<op><>|<=|>=|[=<>+\-*/(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "LIKE", "ESCAPE", "IN", "BETWEEN", "IS", "NULL", "TRUE", "FALSE"}


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    """(kind, value, position) triples; kind is 'str', 'num', 'id', 'kw', 'op' or 'end'."""
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            raise SelectorError(f"unexpected character {text[at]!r} at position {at}")
        start = match.start(match.lastgroup or 0)
        kind, raw = match.lastgroup, match.group(match.lastgroup or 0)
        if kind == "string":
            tokens.append(("str", raw[1:-1].replace("''", "'"), start))
        elif kind == "number":
            tokens.append(("num", _number(raw), start))
        elif kind == "quoted":
            tokens.append(("id", raw[1:-1].replace('""', '"'), start))
        elif kind == "ident" and raw.upper() in _KEYWORDS:
            tokens.append(("kw", raw.upper(), start))
        elif kind == "ident":
            tokens.append(("id", raw, start))
        else:
            tokens.append(("op", raw, start))
        pos = match.end()
    tokens.append(("end", None, len(text)))
    return tokens


def _number(raw: str) -> int | float:
    if raw[:2].lower() == "0x":
        return int(raw.rstrip("lL"), 16)
    if raw[-1] in "lL":
        return int(raw[:-1])
    if raw[-1] in "fFdD" or any(c in raw for c in ".eE"):
        return float(raw.rstrip("fFdD"))
    return int(raw)


def _is_number(v: Value) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _jms_header(message: Message, name: str) -> Value:
    """The value of a JMS header identifier, or of an application property."""
    if name == "JMSPriority":
        return 4 if message.priority is None else int(message.priority)
    if name == "JMSMessageID":
        return None if message.id is None else str(message.id)
    if name == "JMSCorrelationID":
        return None if message.correlation_id is None else str(message.correlation_id)
    if name == "JMSType":
        return message.subject
    if name == "JMSDeliveryMode":
        return "PERSISTENT" if message.durable else "NON_PERSISTENT"
    if name == "JMSTimestamp":
        return int(message.creation_time * 1000) if message.creation_time else None
    if name == "JMSExpiration":
        return int(message.expiry_time * 1000) if message.expiry_time else None
    if name == "JMSRedelivered":
        return bool(message.delivery_count)
    props: dict[Any, Any] = message.properties or {}
    value = props.get(name)
    return str(value) if isinstance(value, str) else value  # symbols, chars: plain strings


def _like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    out, chars = [], iter(pattern)
    for ch in chars:
        if escape is not None and ch == escape:
            nxt = next(chars, None)
            if nxt is None:
                raise SelectorError("LIKE pattern ends with its ESCAPE character")
            out.append(re.escape(nxt))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _compare(op: str, a: Value, b: Value) -> bool | None:
    if a is None or b is None:
        return None
    if _is_number(a) and _is_number(b):
        pass
    elif type(a) is not type(b) or op not in ("=", "<>"):
        return None  # strings and booleans compare only by = and <>; mixed types: UNKNOWN
    if op == "=":
        return bool(a == b)
    if op == "<>":
        return bool(a != b)
    return bool({"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op])


def _arith(op: str, a: Value, b: Value) -> Value:
    if not (_is_number(a) and _is_number(b)):
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b


def _and(a: Value, b: Value) -> bool | None:
    if a is False or b is False:
        return False
    if a is True and b is True:
        return True
    return None


def _or(a: Value, b: Value) -> bool | None:
    if a is True or b is True:
        return True
    if a is False and b is False:
        return False
    return None


def _not(a: Value) -> bool | None:
    return None if not isinstance(a, bool) else not a


class _Parser:
    """Recursive descent over the tokens; each rule returns an evaluator (Message -> Value)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, kind: str, value: Any = None) -> bool:
        k, v, _ = self.tokens[self.i]
        return k == kind and (value is None or v == value)

    def take(self, kind: str, value: Any = None) -> Any:
        k, v, pos = self.tokens[self.i]
        if k != kind or (value is not None and v != value):
            want = value or {"str": "a string", "num": "a number", "id": "an identifier"}.get(
                kind, kind
            )
            got = "the end" if k == "end" else repr(v)
            raise SelectorError(f"expected {want} at position {pos}, found {got}")
        self.i += 1
        return v

    def accept(self, kind: str, value: Any = None) -> bool:
        if self.peek(kind, value):
            self.i += 1
            return True
        return False

    def parse(self) -> Evaluator:
        expr = self.or_expr()
        self.take("end")
        return expr

    def or_expr(self) -> Evaluator:
        left = self.and_expr()
        while self.accept("kw", "OR"):
            left = (lambda a, b: lambda m: _or(a(m), b(m)))(left, self.and_expr())
        return left

    def and_expr(self) -> Evaluator:
        left = self.not_expr()
        while self.accept("kw", "AND"):
            left = (lambda a, b: lambda m: _and(a(m), b(m)))(left, self.not_expr())
        return left

    def not_expr(self) -> Evaluator:
        if self.accept("kw", "NOT"):
            inner = self.not_expr()
            return lambda m: _not(inner(m))
        return self.comparison()

    def comparison(self) -> Evaluator:
        left = self.additive()
        for op in ("=", "<>", "<=", ">=", "<", ">"):
            if self.accept("op", op):
                right = self.additive()
                return lambda m: _compare(op, left(m), right(m))
        if self.accept("kw", "IS"):
            negate = self.accept("kw", "NOT")
            self.take("kw", "NULL")
            return lambda m: (left(m) is not None) if negate else (left(m) is None)
        negate = self.accept("kw", "NOT")
        if self.accept("kw", "LIKE"):
            test = self.like(left)
        elif self.accept("kw", "IN"):
            test = self.in_list(left)
        elif self.accept("kw", "BETWEEN"):
            test = self.between(left)
        elif negate:
            raise SelectorError(f"expected LIKE, IN or BETWEEN after NOT at {self.position()}")
        else:
            return left
        return (lambda m: _not(test(m))) if negate else test

    def position(self) -> str:
        return f"position {self.tokens[self.i][2]}"

    def like(self, left: Evaluator) -> Evaluator:
        pattern = self.take("str")
        escape = None
        if self.accept("kw", "ESCAPE"):
            escape = self.take("str")
            if len(escape) != 1:
                raise SelectorError("ESCAPE takes a single character")
        regex = _like_regex(pattern, escape)

        def test(m: Message) -> bool | None:
            value = left(m)
            return None if not isinstance(value, str) else regex.fullmatch(value) is not None

        return test

    def in_list(self, left: Evaluator) -> Evaluator:
        self.take("op", "(")
        items = [self.literal()]
        while self.accept("op", ","):
            items.append(self.literal())
        self.take("op", ")")

        def test(m: Message) -> bool | None:
            value = left(m)
            if value is None:
                return None
            return any(_compare("=", value, item) for item in items)

        return test

    def between(self, left: Evaluator) -> Evaluator:
        low = self.additive()
        self.take("kw", "AND")
        high = self.additive()

        def test(m: Message) -> bool | None:
            value = left(m)
            return _and(_compare(">=", value, low(m)), _compare("<=", value, high(m)))

        return test

    def literal(self) -> Value:
        sign = -1 if self.accept("op", "-") else 1
        if self.peek("num"):
            return sign * self.take("num")
        if sign == 1 and self.peek("str"):
            return self.take("str")
        raise SelectorError(f"expected a literal at {self.position()}")

    def additive(self) -> Evaluator:
        left = self.multiplicative()
        while self.peek("op", "+") or self.peek("op", "-"):
            op = self.take("op")
            right = self.multiplicative()
            left = (lambda o, a, b: lambda m: _arith(o, a(m), b(m)))(op, left, right)
        return left

    def multiplicative(self) -> Evaluator:
        left = self.unary()
        while self.peek("op", "*") or self.peek("op", "/"):
            op = self.take("op")
            left = (lambda o, a, b: lambda m: _arith(o, a(m), b(m)))(op, left, self.unary())
        return left

    def unary(self) -> Evaluator:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda m: _arith("-", 0, inner(m))
        if self.accept("op", "+"):
            inner = self.unary()
            return lambda m: inner(m) if _is_number(inner(m)) else None
        return self.primary()

    def primary(self) -> Evaluator:
        kind, value, pos = self.tokens[self.i]
        if self.accept("op", "("):
            inner = self.or_expr()
            self.take("op", ")")
            return inner
        if kind in ("str", "num"):
            self.i += 1
            return lambda m: value
        if kind == "kw" and value in ("TRUE", "FALSE", "NULL"):
            self.i += 1
            constant = {"TRUE": True, "FALSE": False, "NULL": None}[value]
            return lambda m: constant
        if kind == "id":
            self.i += 1
            return lambda m: _jms_header(m, value)
        got = "the end" if kind == "end" else repr(value)
        raise SelectorError(f"expected a value at position {pos}, found {got}")


class Selector:
    """A parsed JMS selector; `matches` is True only when it evaluates to TRUE."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise SelectorError("the selector is not a non-empty string")
        self.text = text
        self._evaluate = _Parser(text).parse()

    def matches(self, message: Message) -> bool:
        try:
            return self._evaluate(message) is True
        except Exception:  # an odd property value: UNKNOWN, not a dead broker
            return False


# ---------------------------------------------------------------------------------------------
# Nodes: queues, topics, subscriptions; messages held as their encoded bytes plus a decoding.
# ---------------------------------------------------------------------------------------------

_seq = itertools.count()


@dataclass(eq=False)
class Entry:
    """One message in one queue; `raw` is what goes on the wire (re-encoded only if changed)."""

    raw: bytes
    message: Message
    seq: int = field(default_factory=lambda: next(_seq))
    undeliverable: set[int] = field(default_factory=set)

    def copy(self) -> Entry:
        return Entry(self.raw, self.message, self.seq)

    def modify(self, failed: bool, annotations: dict[Any, Any] | None) -> None:
        message = Message()
        message.decode(self.raw)
        if failed:
            message.delivery_count = (message.delivery_count or 0) + 1
        if annotations:
            message.annotations = {**(message.annotations or {}), **annotations}
        self.message, self.raw = message, message.encode()


@dataclass
class Outcome:
    """A delivery outcome as the client stated it."""

    kind: int
    failed: bool = False
    undeliverable: bool = False
    annotations: dict[Any, Any] | None = None


class Queue:
    """Messages in order, competing consumers round robin, browsers that see everything."""

    kind = "queue"

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.entries: deque[Entry] = deque()
        self.consumers: list[Consumer] = []
        self.browsers: list[Consumer] = []
        self.deleted = False
        self._next = 0

    @property
    def depth(self) -> int:
        return len(self.entries)

    def enqueue(self, entry: Entry) -> None:
        if not self.deleted:
            self.entries.append(entry)
            self.pump()

    def requeue(self, entry: Entry) -> None:
        """Back in its place: ahead of every later message (a release)."""
        if self.deleted:
            return
        keys = [e.seq for e in self.entries]
        self.entries.insert(bisect.bisect_left(keys, entry.seq), entry)
        self.pump()

    def add(self, consumer: Consumer) -> None:
        (self.browsers if consumer.browse else self.consumers).append(consumer)
        self.pump()

    def remove(self, consumer: Consumer) -> None:
        for group in (self.consumers, self.browsers):
            if consumer in group:
                group.remove(consumer)

    def _take(self, consumer: Consumer) -> Entry | None:
        for i, entry in enumerate(self.entries):
            if consumer.id in entry.undeliverable:
                continue
            if consumer.selector is not None and not consumer.selector.matches(entry.message):
                continue
            del self.entries[i]
            return entry
        return None

    def pump(self) -> None:
        """Give messages to consumers with credit, one each in turn; then serve drains."""
        progress = True
        while progress and self.entries:
            progress = False
            count = len(self.consumers)
            for step in range(count):
                consumer = self.consumers[(self._next + step) % count]
                if consumer.link.credit <= 0:
                    continue
                entry = self._take(consumer)
                if entry is not None:
                    consumer.deliver(entry)
                    self._next = (self._next + step + 1) % count
                    progress = True
                    break
        for browser in self.browsers:
            browser.browse_from(self.entries)
        for consumer in self.consumers + self.browsers:
            consumer.finish_drain()


class Subscription(Queue):
    """A topic subscription: a queue fed by its topic, through its selector if it has one."""

    kind = "subscription"

    def __init__(
        self,
        broker: Broker,
        name: str,
        topic: Topic,
        selector: Selector | None,
        *,
        durable: bool,
        shared: bool,
    ) -> None:
        super().__init__(broker, name)
        self.topic = topic
        self.selector = selector
        self.durable = durable
        self.shared = shared

    def offer(self, entry: Entry) -> None:
        if self.selector is None or self.selector.matches(entry.message):
            self.enqueue(entry.copy())


class Topic:
    """A publish point: each subscription gets its own copy."""

    kind = "topic"

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscriptions: dict[str, Subscription] = {}

    def publish(self, entry: Entry) -> None:
        for sub in list(self.subscriptions.values()):
            sub.offer(entry)


Node = Queue | Topic


class Consumer:
    """A link on which the broker sends from a queue or subscription."""

    _ids = itertools.count(1)

    def __init__(
        self,
        link: Link,
        node: Queue,
        *,
        selector: Selector | None = None,
        browse: bool = False,
        presettled: bool = False,
    ) -> None:
        self.id = next(self._ids)
        self.link = link
        self.node = node
        self.selector = selector
        self.browse = browse
        self.presettled = presettled
        self.unsettled: dict[Delivery, Entry] = {}
        self._cursor = -1
        self._tags = itertools.count()

    def _send(self, raw: bytes) -> Delivery:
        delivery = self.link.delivery(str(next(self._tags)))
        self.link.stream(raw)
        self.link.advance()
        if self.presettled:
            delivery.settle()
        return delivery

    def deliver(self, entry: Entry) -> None:
        delivery = self._send(entry.raw)
        if not self.presettled:
            self.unsettled[delivery] = entry

    def browse_from(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if self.link.credit <= 0:
                return
            if entry.seq <= self._cursor:
                continue
            self._cursor = entry.seq
            if self.selector is None or self.selector.matches(entry.message):
                self._send(entry.raw)

    def finish_drain(self) -> None:
        if self.link.drain_mode and self.link.credit > 0:
            self.link.drained()


# ---------------------------------------------------------------------------------------------
# Transactions.
# ---------------------------------------------------------------------------------------------


@dataclass
class Transaction:
    id: bytes
    coordinator: Link
    sends: list[tuple[str | None, Entry]] = field(default_factory=list)
    acquired: list[tuple[Queue, Entry, Outcome, int]] = field(default_factory=list)
    rollback_only: bool = False


class TransactionCoordinator:
    """Local transactions: declared ids, their held work, commit and abort."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.open: dict[bytes, Transaction] = {}
        self.counts = {"declared": 0, "committed": 0, "aborted": 0}
        self._ids = itertools.count(1)

    def declare(self, coordinator: Link) -> Transaction:
        txn_id = b"txn-%d-" % next(self._ids) + uuid.uuid4().bytes[:4]
        txn = self.open[txn_id] = Transaction(txn_id, coordinator)
        self.counts["declared"] += 1
        return txn

    def get(self, txn_id: Any) -> Transaction | None:
        try:
            return self.open.get(bytes(txn_id))
        except TypeError:
            return None

    def commit(self, txn: Transaction) -> bool:
        """Apply the work; False (and the work discarded) when the txn is rollback-only."""
        if txn.rollback_only:
            self.abort(txn)
            return False
        del self.open[txn.id]
        self.counts["committed"] += 1
        for address, entry in txn.sends:
            self.broker.route(address, entry)
        for queue, entry, outcome, consumer_id in txn.acquired:
            self.broker.apply_outcome(queue, entry, outcome, consumer_id)
        return True

    def abort(self, txn: Transaction) -> None:
        self.open.pop(txn.id, None)
        self.counts["aborted"] += 1
        for queue, entry, _, _ in txn.acquired:
            queue.requeue(entry)

    def abort_owned_by(self, coordinator: Link) -> None:
        for txn in [t for t in self.open.values() if t.coordinator == coordinator]:
            log.info("rolling back txn %r: its coordinator went", txn.id)
            self.abort(txn)


# ---------------------------------------------------------------------------------------------
# Records of what clients sent (for $stats) and per-link state.
# ---------------------------------------------------------------------------------------------


def _data_object(data: Data) -> Any:
    data.rewind()
    if data.next() is None:
        return None
    return data.get_object()


def _symbols(data: Data) -> list[str]:
    value = _data_object(data)
    if value is None:
        return []
    if hasattr(value, "elements"):
        value = value.elements
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


SECTION_CODES = range(0x70, 0x79)  # header .. footer


def decode_message(raw: bytes) -> Message:
    """Decode a transfer's payload, strictly: proton's Message.decode accepts garbage, so each
    section must first decode as a described type with a message-section descriptor."""
    pos = 0
    while pos < len(raw):
        data = Data()
        pos += data.decode(raw[pos:])  # raises DataException on a bad or truncated encoding
        data.rewind()
        if data.next() != Data.DESCRIBED:
            raise ValueError(f"not a message section at byte {pos}")
        data.enter()
        data.next()
        descriptor = data.get_object()
        if not (descriptor in SECTION_CODES or str(descriptor).startswith("amqp:")):
            raise ValueError(f"unknown section descriptor {descriptor!r}")
    if not raw:
        raise ValueError("an empty message")
    message = Message()
    message.decode(raw)
    return message


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stringify(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, str) else str(value)
    return str(value)


@dataclass
class ConnectionRecord:
    info: dict[str, Any]
    links: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LinkState:
    """What the broker knows of one attached link."""

    link: Link
    record: dict[str, Any]
    connection: ConnectionRecord
    role: str = "producer"  # producer | consumer | coordinator | stats | refused
    consumer: Consumer | None = None
    address: str | None = None  # producer: the target node (None: anonymous relay)
    owned_node: str | None = None  # a dynamic node this link created
    stats_sent: bool = False


# ---------------------------------------------------------------------------------------------
# The broker: nodes, routing, outcomes, and the proton event handler.
# ---------------------------------------------------------------------------------------------


def _link_of(event: Event) -> Link:
    assert event.link is not None
    return event.link


def _conn_of(event: Event) -> Connection:
    assert event.connection is not None
    return event.connection


def _session_of(event: Event) -> Session:
    assert event.session is not None
    return event.session


def _delivery_of(event: Event) -> Delivery:
    assert event.delivery is not None
    return event.delivery


def _event_transport(event: Event) -> Any:
    return event.transport


def _unknown_txn(fields: list[Any]) -> str:
    txn_id = fields[0] if fields else None
    if isinstance(txn_id, (memoryview, bytearray)):
        txn_id = bytes(txn_id)
    return f"unknown txn-id {txn_id!r}"


def _condition(name: str, description: str) -> Condition:
    return Condition(name, description)


class Broker:
    """All broker state and the reactions to proton's events (dispatched by `Dispatcher`)."""

    def __init__(self, *, window: int, refuse_coordinator: bool) -> None:
        self.window = window
        self.refuse_coordinator = refuse_coordinator
        self.nodes: dict[str, Node] = {}
        self.durable: dict[str, Subscription] = {}  # subscription name -> durable/shared sub
        self.txns = TransactionCoordinator(self)
        self.links: dict[Link, LinkState] = {}
        self.connections: dict[Connection, ConnectionRecord] = {}
        self.history: deque[ConnectionRecord] = deque(maxlen=MAX_CONNECTION_RECORDS)
        self._volatile = itertools.count(1)

    # --- nodes ---------------------------------------------------------------------------

    def node(self, address: str, want: str | None = None) -> Node:
        """The node at `address`, created as `want` ('topic' or 'queue'; default queue)."""
        node = self.nodes.get(address)
        if node is None:
            node = Topic(address) if want == "topic" else Queue(self, address)
            self.nodes[address] = node
            log.info("created %s %s", node.kind, address)
        elif want is not None and node.kind != want:
            raise LinkRefused(
                "amqp:precondition-failed", f"{address} is a {node.kind}, not a {want}"
            )
        return node

    def route(self, address: str | None, entry: Entry) -> None:
        if address is None:
            return
        node = self.node(address)
        if isinstance(node, Topic):
            node.publish(entry)
        else:
            node.enqueue(entry)

    def delete_queue(self, address: str) -> None:
        node = self.nodes.pop(address, None)
        if isinstance(node, Queue):
            node.deleted = True
            node.entries.clear()
            log.info("deleted queue %s", address)

    def delete_subscription(self, sub: Subscription) -> None:
        sub.deleted = True
        sub.entries.clear()
        sub.topic.subscriptions.pop(sub.name, None)
        self.durable.pop(sub.name, None)
        log.info("deleted subscription %s", sub.name)

    def apply_outcome(self, queue: Queue, entry: Entry, outcome: Outcome, consumer_id: int) -> None:
        """What a consumer's outcome does to the message it was given."""
        if outcome.kind == ACCEPTED:
            return
        if outcome.kind == REJECTED:
            dead = self.node(DEAD_LETTER)
            assert isinstance(dead, Queue)
            dead.enqueue(Entry(entry.raw, entry.message))
            return
        if outcome.kind == MODIFIED:
            if outcome.failed or outcome.annotations:
                entry.modify(outcome.failed, outcome.annotations)
            if outcome.undeliverable:
                entry.undeliverable.add(consumer_id)
        queue.requeue(entry)

    # --- connections and sessions --------------------------------------------------------

    def on_connection_remote_open(self, event: Event) -> None:
        conn = _conn_of(event)
        transport = _event_transport(event)
        info = {
            "container_id": conn.remote_container,
            "hostname": conn.remote_hostname,
            "properties": _stringify(conn.remote_properties),
            "offered_capabilities": _stringify(list(conn.remote_offered_capabilities or [])),
            "desired_capabilities": _stringify(list(conn.remote_desired_capabilities or [])),
            "max_frame_size": transport.remote_max_frame_size if transport else None,
            "channel_max": transport.remote_channel_max if transport else None,
            "idle_timeout": transport.remote_idle_timeout if transport else None,
            "sessions": 0,
            "open": True,
        }
        record = ConnectionRecord(info)
        self.connections[conn] = record
        self.history.append(record)
        log.info("connection from %s", conn.remote_container)
        conn.offered_capabilities = list(OFFERED)
        conn.properties = {symbol("product"): "amqscale-spec-broker"}
        conn.open()

    def on_session_remote_open(self, event: Event) -> None:
        record = self.connections.get(_conn_of(event))
        if record is not None:
            record.info["sessions"] += 1
        _session_of(event).open()

    def on_session_remote_close(self, event: Event) -> None:
        self._links_gone(lambda st: st.link.session == _session_of(event))
        _session_of(event).close()

    def on_connection_remote_close(self, event: Event) -> None:
        self._connection_gone(_conn_of(event))
        _conn_of(event).close()

    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._connection_gone(event.connection)

    def _connection_gone(self, conn: Connection) -> None:
        self._links_gone(lambda st: st.link.connection == conn)
        record = self.connections.pop(conn, None)
        if record is not None:
            record.info["open"] = False

    def _links_gone(self, which: Callable[[LinkState], bool]) -> None:
        for st in [st for st in self.links.values() if which(st)]:
            self._link_gone(st, closed=False)

    # --- attach --------------------------------------------------------------------------

    def on_link_remote_open(self, event: Event) -> None:
        link = _link_of(event)
        if link.state & Endpoint.LOCAL_ACTIVE:
            return
        record = self.connections.get(link.connection) or ConnectionRecord({})
        st = LinkState(link, self._link_record(link), record)
        record.links.append(st.record)
        self.links[link] = st
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        try:
            if link.is_sender:
                self._attach_consumer(st)
            elif link.remote_target.type == Terminus.COORDINATOR:
                self._attach_coordinator(st)
            else:
                self._attach_producer(st)
        except LinkRefused as refused:
            self._refuse(st, refused)

    def _link_record(self, link: Link) -> dict[str, Any]:
        source, target = link.remote_source, link.remote_target
        terminus = source if link.is_sender else target
        return {
            "name": link.name,
            "role": "receiver" if link.is_sender else "sender",
            "source_address": source.address,
            "target_address": target.address,
            "snd_settle_mode": int(link.remote_snd_settle_mode),
            "rcv_settle_mode": int(link.remote_rcv_settle_mode),
            "properties": _stringify(link.remote_properties),
            "capabilities": _symbols(terminus.capabilities),
            "filters": _stringify(_data_object(source.filter)) if link.is_sender else None,
            "dynamic": bool(terminus.dynamic),
            "durability": int(terminus.durability),
            "expiry_policy": int(terminus.expiry_policy),
            "distribution_mode": int(source.distribution_mode),
            "target_type": int(target.type),
            "attached": True,
        }

    def _refuse(self, st: LinkState, refused: LinkRefused) -> None:
        """Attach with a null source (receiver) or target (sender), then detach with why."""
        link = st.link
        log.warning("refusing link %s: %s: %s", link.name, refused.name, refused.description)
        st.role = "refused"
        if link.is_sender:
            link.source.type = Terminus.UNSPECIFIED
            link.target.copy(link.remote_target)
        else:
            link.source.copy(link.remote_source)
            link.target.type = Terminus.UNSPECIFIED
        link.open()
        link.condition = _condition(refused.name, refused.description)
        link.close()

    def _terminus_kind(self, caps: list[str]) -> str | None:
        if "topic" in caps:
            return "topic"
        if "queue" in caps:
            return "queue"
        return None

    def _echo(self, terminus: Terminus, remote: Terminus, caps: list[str]) -> None:
        terminus.copy(remote)
        terminus.filter.clear()
        terminus.capabilities.clear()
        if caps:
            terminus.capabilities.put_array(False, Data.SYMBOL)
            terminus.capabilities.enter()
            for cap in caps:
                terminus.capabilities.put_symbol(symbol(cap))
            terminus.capabilities.exit()

    def _dynamic_queue(self, st: LinkState, terminus: Terminus) -> str:
        address = f"dynamic/{uuid.uuid4()}"
        self.node(address, "queue")
        if terminus.expiry_policy != Terminus.EXPIRE_NEVER:
            st.owned_node = address
        return address

    def _attach_producer(self, st: LinkState) -> None:
        link, remote = st.link, st.link.remote_target
        caps = _symbols(remote.capabilities)
        honoured: list[str] = []
        if remote.dynamic:
            st.address = self._dynamic_queue(st, remote)
            honoured = ["queue"]
        elif remote.address is not None:
            want = self._terminus_kind(caps)
            st.address = remote.address
            honoured = [self.node(remote.address, want).kind] if want else []
        self._echo(link.target, remote, honoured)
        if st.address is not None:
            link.target.address = st.address
        link.source.copy(link.remote_source)
        link.open()
        link.flow(self.window)

    def _attach_coordinator(self, st: LinkState) -> None:
        if self.refuse_coordinator:
            raise LinkRefused("amqp:not-implemented", "this broker does not do transactions")
        st.role = "coordinator"
        link = st.link
        link.source.copy(link.remote_source)
        link.target.type = Terminus.COORDINATOR
        link.target.copy(link.remote_target)
        link.open()
        link.flow(self.window)

    def _parse_filters(self, source: Terminus) -> tuple[Selector | None, dict[Any, Any]]:
        """The selector (if any) and the filter entries applied, to echo back."""
        filters = _data_object(source.filter)
        if not isinstance(filters, dict):
            return None, {}
        for key, value in filters.items():
            if not isinstance(value, Described):
                continue
            descriptor = value.descriptor
            if descriptor == SELECTOR_SYMBOL or (
                isinstance(descriptor, int) and not isinstance(descriptor, bool)
                and descriptor == SELECTOR_CODE
            ):
                try:
                    selector = Selector(value.value)  # type: ignore[arg-type]
                except SelectorError as err:
                    raise LinkRefused("amqp:invalid-field", f"invalid selector: {err}") from None
                return selector, {key: value}
        return None, {}

    def _attach_consumer(self, st: LinkState) -> None:
        link, remote = st.link, st.link.remote_source
        if remote.address == STATS:
            st.role = "stats"
            self._echo(link.source, remote, [])
            link.target.copy(link.remote_target)
            link.open()
            return
        selector, applied = self._parse_filters(remote)
        caps = _symbols(remote.capabilities)
        want = self._terminus_kind(caps)
        honoured: list[str] = []
        address = remote.address
        mode = Terminus.DIST_MODE_MOVE
        browse = False
        sub_existing = self._find_durable(st, caps) if address is None else None
        if remote.dynamic:
            address = self._dynamic_queue(st, remote)
            node: Node = self.node(address, "queue")
            honoured = ["queue"]
        elif sub_existing is not None:
            address = sub_existing.topic.name
            node = sub_existing.topic
            selector = sub_existing.selector
            applied = {symbol("selector"): Described(symbol(SELECTOR_SYMBOL), selector.text)} \
                if selector else {}
        elif address is None:
            raise LinkRefused("amqp:not-found", "a receiver needs a source address")
        else:
            node = self.node(address, want)
        if isinstance(node, Topic):
            queue: Queue = self._subscribe(st, node, selector, caps)
            honoured = ["topic"] + (["shared"] if "shared" in caps else [])
            mode = Terminus.DIST_MODE_COPY
            consumer_selector = None
        else:
            queue = node
            browse = remote.distribution_mode == Terminus.DIST_MODE_COPY
            mode = Terminus.DIST_MODE_COPY if browse else Terminus.DIST_MODE_MOVE
            honoured = honoured or ([want] if want else [])
            consumer_selector = selector
        self._echo(link.source, remote, honoured)
        link.source.address = address
        link.source.distribution_mode = mode
        if applied:
            link.source.filter.put_dict(applied)
        link.target.copy(link.remote_target)
        st.role = "consumer"
        st.consumer = Consumer(
            link,
            queue,
            selector=consumer_selector,
            browse=browse,
            presettled=link.remote_snd_settle_mode == Link.SND_SETTLED,
        )
        link.open()
        queue.add(st.consumer)

    # --- subscriptions -------------------------------------------------------------------

    @staticmethod
    def _is_durable(source: Terminus) -> bool:
        return (
            source.durability in (Terminus.CONFIGURATION, Terminus.DELIVERIES)
            and source.expiry_policy == Terminus.EXPIRE_NEVER
        )

    def _subscription_name(self, st: LinkState, caps: list[str]) -> str | None:
        """The name of the durable or shared subscription this link is for, else None."""
        if "shared" in caps:
            return f"shared|{st.link.name}"
        if self._is_durable(st.link.remote_source):
            return f"{st.link.connection.remote_container}|{st.link.name}"
        return None

    def _find_durable(self, st: LinkState, caps: list[str]) -> Subscription | None:
        name = self._subscription_name(st, caps)
        return self.durable.get(name) if name else None

    def _subscribe(
        self, st: LinkState, topic: Topic, selector: Selector | None, caps: list[str]
    ) -> Subscription:
        name = self._subscription_name(st, caps)
        durable = self._is_durable(st.link.remote_source)
        if name is None:
            name = f"{st.link.connection.remote_container}|{st.link.name}|{next(self._volatile)}"
        sub = self.durable.get(name)
        if sub is not None:
            changed = (sub.selector.text if sub.selector else None) != (
                selector.text if selector else None
            )
            if sub.topic is topic and not changed:
                return sub
            log.info("subscription %s changed (topic or selector): replacing it", name)
            for consumer in list(sub.consumers):
                self._detach_consumer_silently(consumer)
            self.delete_subscription(sub)
        sub = Subscription(
            self, name, topic, selector, durable=durable, shared="shared" in caps
        )
        topic.subscriptions[name] = sub
        if durable or sub.shared:
            self.durable[name] = sub
        log.info("subscription %s on %s (durable=%s)", name, topic.name, durable)
        return sub

    def _detach_consumer_silently(self, consumer: Consumer) -> None:
        st = self.links.get(consumer.link)
        if st is not None:
            st.link.condition = _condition("amqp:resource-deleted", "subscription replaced")
            self._link_gone(st, closed=True, answer=True)

    # --- flow and deliveries -------------------------------------------------------------

    def on_link_flow(self, event: Event) -> None:
        st = self.links.get(_link_of(event))
        if st is None or not _link_of(event).is_sender:
            return
        if st.role == "stats":
            self._send_stats(st)
        elif st.consumer is not None:
            st.consumer.node.pump()
            st.consumer.finish_drain()

    def on_delivery(self, event: Event) -> None:
        delivery = _delivery_of(event)
        st = self.links.get(delivery.link)
        if st is None:
            if delivery.settled:
                delivery.settle()
            return
        if delivery.link.is_sender:
            self._on_outcome(st, delivery)
        elif st.role == "coordinator":
            self._on_incoming(st, delivery, self._control)
        else:
            self._on_incoming(st, delivery, self._publish)

    def _on_outcome(self, st: LinkState, delivery: Delivery) -> None:
        consumer = st.consumer
        entry = consumer.unsettled.get(delivery) if consumer else None
        state = delivery.remote_state
        if entry is None or consumer is None:
            if delivery.settled or state:
                delivery.settle()
            return
        if not delivery.settled and state in (0, Delivery.RECEIVED):
            return  # no outcome yet
        del consumer.unsettled[delivery]
        if state == TRANSACTIONAL_STATE:
            self._transactional_outcome(consumer, entry, delivery)
        elif state in (0, Delivery.RECEIVED):
            self.apply_outcome(consumer.node, entry, Outcome(ACCEPTED), consumer.id)
        else:
            remote = delivery.remote
            outcome = Outcome(
                int(state), remote.failed, remote.undeliverable, remote.annotations or None
            )
            self.apply_outcome(consumer.node, entry, outcome, consumer.id)
        delivery.settle()

    def _transactional_outcome(self, consumer: Consumer, entry: Entry, delivery: Delivery) -> None:
        data = delivery.remote.data or []
        txn = self.txns.get(data[0]) if data else None
        if txn is None:
            log.warning("transactional outcome for an unknown txn: releasing the message")
            consumer.node.requeue(entry)
            return
        outcome = Outcome(ACCEPTED)
        if len(data) > 1 and isinstance(data[1], Described):
            kind = int(data[1].descriptor) if isinstance(data[1].descriptor, int) else ACCEPTED
            value = data[1].value
            fields: list[Any] = list(value) if isinstance(value, list) else []
            outcome = Outcome(
                kind,
                bool(fields[0]) if kind == MODIFIED and fields else False,
                bool(fields[1]) if kind == MODIFIED and len(fields) > 1 else False,
                fields[2] if kind == MODIFIED and len(fields) > 2 else None,
            )
        txn.acquired.append((consumer.node, entry, outcome, consumer.id))

    def _on_incoming(
        self,
        st: LinkState,
        delivery: Delivery,
        handle: Callable[[LinkState, Delivery, bytes], None],
    ) -> None:
        link = delivery.link
        if delivery.local_state:  # answered already: settle once the client has (mode second)
            if delivery.settled:
                delivery.settle()
            return
        if delivery.aborted:
            delivery.settle()
            return
        if not delivery.readable or delivery.partial:
            return
        chunks = []
        while chunk := link.recv(max(delivery.pending, 1)):
            chunks.append(chunk)
        link.advance()
        if link.credit < self.window // 2 + 1:
            link.flow(self.window - link.credit)
        handle(st, delivery, b"".join(chunks))

    def _answer(
        self,
        delivery: Delivery,
        kind: int,
        condition: Condition | None = None,
        data: list[Any] | None = None,
    ) -> None:
        if condition is not None:
            delivery.local.condition = condition
        if data is not None:
            delivery.local.data = data
        delivery.update(kind)
        if delivery.settled or delivery.link.rcv_settle_mode != Link.RCV_SECOND:
            delivery.settle()

    def _reject(self, delivery: Delivery, name: str, description: str) -> None:
        log.warning("rejecting a delivery: %s: %s", name, description)
        self._answer(delivery, REJECTED, _condition(name, description))

    def _publish(self, st: LinkState, delivery: Delivery, raw: bytes) -> None:
        try:
            message = decode_message(raw)
        except Exception as err:
            self._reject(delivery, "amqp:decode-error", f"cannot decode the message: {err}")
            return
        address = st.address if st.address is not None else message.address
        if address is None:
            self._reject(
                delivery, "amqp:precondition-failed", "anonymous relay: the message has no 'to'"
            )
            return
        if address == STATS:
            address = None  # nothing is stored at $stats
        txn = None
        if delivery.remote_state == TRANSACTIONAL_STATE:
            data = delivery.remote.data or []
            txn = self.txns.get(data[0]) if data else None
            if txn is None:
                self._reject(delivery, "amqp:transaction:unknown-id", _unknown_txn(data))
                return
        try:
            if address is not None:
                self.node(address)  # a queue unless it exists
        except LinkRefused as err:  # cannot happen without a 'want'; keep the broker alive
            self._reject(delivery, err.name, err.description)
            return
        entry = Entry(raw, message)
        if txn is not None:
            if address == ROLLBACK_ON_COMMIT:
                txn.rollback_only = True
            else:
                txn.sends.append((address, entry))
            self._answer(
                delivery, TRANSACTIONAL_STATE, data=[txn.id, Described(ulong(ACCEPTED), [])]
            )
            return
        self.route(address, entry)
        self._answer(delivery, ACCEPTED)

    def _control(self, st: LinkState, delivery: Delivery, raw: bytes) -> None:
        """A declare or discharge on a coordinator link."""
        try:
            message = decode_message(raw)
            body = message.body
        except Exception as err:
            self._reject(delivery, "amqp:decode-error", f"cannot decode the control: {err}")
            return
        if not isinstance(body, Described) or not isinstance(body.value, list):
            self._reject(delivery, "amqp:decode-error", "expected a declare or discharge list")
            return
        # proton decodes a binary as a memoryview into the message's own buffer: copy it
        # while the message lives.
        fields = [bytes(x) if isinstance(x, memoryview) else x for x in body.value]
        del message
        if body.descriptor in DECLARE:
            if fields and fields[0] is not None:
                self._reject(delivery, "amqp:not-implemented", "global transactions")
                return
            declared = self.txns.declare(st.link)
            log.info("declared txn %r", declared.id)
            self._answer(delivery, DECLARED, data=[declared.id])
        elif body.descriptor in DISCHARGE:
            txn = self.txns.get(fields[0]) if fields else None
            if txn is None:
                self._reject(delivery, "amqp:transaction:unknown-id", _unknown_txn(fields))
                return
            fail = len(fields) > 1 and bool(fields[1])
            if fail:
                self.txns.abort(txn)
                self._answer(delivery, ACCEPTED)
            elif self.txns.commit(txn):
                self._answer(delivery, ACCEPTED)
            else:
                self._reject(
                    delivery,
                    "amqp:transaction:rollback",
                    f"the transaction sent to {ROLLBACK_ON_COMMIT}: rolled back",
                )
        else:
            self._reject(delivery, "amqp:decode-error", f"unknown control {body.descriptor!r}")

    # --- stats ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        queues = {a: n.depth for a, n in self.nodes.items() if isinstance(n, Queue)}
        topics = {a: list(n.subscriptions) for a, n in self.nodes.items() if isinstance(n, Topic)}
        subs = {
            name: sub.depth
            for topic in self.nodes.values()
            if isinstance(topic, Topic)
            for name, sub in topic.subscriptions.items()
        }
        dead = self.nodes.get(DEAD_LETTER)
        return {
            "queues": queues,
            "topics": topics,
            "subscriptions": subs,
            "dead_letter": dead.depth if isinstance(dead, Queue) else 0,
            "transactions": {**self.txns.counts, "open": len(self.txns.open)},
            "connections": [
                {**record.info, "links": record.links} for record in self.history
            ],
        }

    def _send_stats(self, st: LinkState) -> None:
        link = st.link
        if not st.stats_sent and link.credit > 0:
            st.stats_sent = True
            body = json.dumps(_stringify(self.snapshot()))
            delivery = link.delivery("stats")
            link.stream(Message(body=body).encode())
            link.advance()
            if link.remote_snd_settle_mode == Link.SND_SETTLED:
                delivery.settle()
        if link.drain_mode and link.credit > 0:
            link.drained()

    # --- detach --------------------------------------------------------------------------

    def on_link_remote_close(self, event: Event) -> None:
        st = self.links.get(_link_of(event))
        if st is not None:
            self._link_gone(st, closed=True, answer=True)
        elif not _link_of(event).state & Endpoint.LOCAL_CLOSED:
            _link_of(event).close()

    def on_link_remote_detach(self, event: Event) -> None:
        st = self.links.get(_link_of(event))
        if st is not None:
            self._link_gone(st, closed=False, answer=True)
        elif not _link_of(event).state & Endpoint.LOCAL_CLOSED:
            _link_of(event).detach()

    def _link_gone(self, st: LinkState, *, closed: bool, answer: bool = False) -> None:
        """The link has ended (closed, detached, or its session/connection went): clean up."""
        link = self.links.pop(st.link, None)
        if link is None:
            return
        st.record["attached"] = False
        if st.consumer is not None:
            self._consumer_gone(st.consumer, closed)
        if st.role == "coordinator":
            self.txns.abort_owned_by(st.link)
        if st.owned_node is not None:
            self.delete_queue(st.owned_node)
        if answer and not st.link.state & Endpoint.LOCAL_CLOSED:
            if closed:
                st.link.close()
            else:
                st.link.detach()
        if answer:
            st.link.free()  # a later attach with the same name must find a new link

    def _consumer_gone(self, consumer: Consumer, closed: bool) -> None:
        queue = consumer.node
        queue.remove(consumer)
        if not consumer.browse:
            for entry in consumer.unsettled.values():
                entry.modify(True, None)
                queue.requeue(entry)
        consumer.unsettled.clear()
        idle = isinstance(queue, Subscription) and not queue.consumers and not queue.deleted
        if idle and isinstance(queue, Subscription) and (not queue.durable or closed):
            self.delete_subscription(queue)


class LinkRefused(Exception):
    def __init__(self, name: str, description: str) -> None:
        super().__init__(f"{name}: {description}")
        self.name = name
        self.description = description


class Dispatcher(Handler):
    """Hands proton's events to the broker; an error ends only the endpoint concerned."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def on_unhandled(self, method: str, *args: Any) -> None:
        handler = getattr(self.broker, method, None)
        if handler is None or not args:
            return
        event = args[0]
        try:
            handler(event)
        except Exception as err:
            log.exception("error handling %s", method)
            self._fail(event, err)

    def _fail(self, event: Event, err: Exception) -> None:
        condition = _condition("amqp:internal-error", f"broker error: {err}")
        try:
            endpoint: Link | Session | Connection | None = event.link or event.connection
            if endpoint is not None and not endpoint.state & Endpoint.LOCAL_CLOSED:
                if isinstance(endpoint, Link):
                    st = self.broker.links.get(endpoint)
                    if st is not None:
                        self.broker._link_gone(st, closed=True)
                endpoint.condition = condition
                endpoint.close()
        except Exception:
            log.exception("error while closing after an error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--window", type=int, default=100, help="credit given to senders")
    parser.add_argument("--refuse-coordinator", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    broker = Broker(window=max(1, args.window), refuse_coordinator=args.refuse_coordinator)
    container = Container(Dispatcher(broker))
    container.container_id = f"spec-broker-{uuid.uuid4()}"

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    container.listen(f"{args.host}:{args.port}")
    print(f"listening on {args.port}", flush=True)
    try:
        container.run()
    except SystemExit:
        log.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
