"""amqscale's messages and outcomes, judged by implementations amqscale did not write.

* Message fidelity: amqscale sends messages whose every field varies, and a proton-python
  receiver (proton's codec, in a thread), a rhea receiver (tests/peers/rhea_peer.js
  --record-full) and the Proton C `receive` example say what they got; each is compared
  field by field, for every message.
* Outcomes from a foreign receiver: proton-python and rhea settle each message as its
  application properties say (accept, reject with a condition, release, modify with flags and
  typed message annotations), and every Tracker must show exactly that outcome.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Data,
    Delivery,
    Described,
    byte,
    char,
    decimal32,
    decimal64,
    decimal128,
    float32,
    int32,
    short,
    symbol,
    timestamp,
    ubyte,
    uint,
    ulong,
    ushort,
)
from proton import Message as ProtonMessage
from proton_peers import Sink, wait_for

import amqscale
from amqscale import AmqpSequence, AmqpValue, DataSections, SequenceSections
from amqscale.testing.brokers import ProtonCBroker, RheaPeer

TIMEOUT = 60.0
COUNT = 200  # messages per fidelity test
EPOCH_MS = 1_700_000_000_000

FIDELITY = "message fidelity"
OUTCOMES = "outcomes from a foreign receiver"

# Section descriptors (AMQP 1.0, part 3.2).
HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES = 0x70, 0x71, 0x72, 0x73
APPLICATION_PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = 0x74, 0x75, 0x76, 0x77, 0x78


# ---- the messages ---------------------------------------------------------------------------


def _ids(i: int) -> Any:
    """A message-id (or correlation-id) of one of the four kinds AMQP allows."""
    kind = i % 4
    if kind == 0:
        return ulong(i * 7919) if i % 8 else ulong(2**64 - 1 - i)  # int: sent as a ulong
    if kind == 1:
        return f"id-{i}-\u00e9\u2603"
    if kind == 2:
        return uuid.UUID(int=(i + 1) * 0x1234_5678_9ABC_DEF1)
    return bytes([i % 256, 0, 255]) + f"bin-{i}".encode()


def _time(i: int, offset: int) -> float | datetime:
    """Seconds since the epoch (exact milliseconds), or an aware datetime, to the millisecond."""
    ms = EPOCH_MS + i * 1001 + offset
    if i % 3 == 0:
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return ms / 1000


def _millis(value: float | datetime | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    return round(value * 1000)


# Bodies of every kind: one section of each kind, several sections, no section, and
# amqp-values of many types. `bodies(i)` picks them in turn.
def _bodies(i: int) -> list[Any]:
    return [
        f"text {i} \u00e9\u2603 \"quoted\" 'single' back\\slash\n",
        bytes(range(i % 256)) + b"\x00\xff",
        {"i": i, "name": f"n{i}", "nested": {"list": [i, "x", None, True]}, symbol("sym"): 1.5},
        [i, f"s{i}", b"b", None, False, [1, [2]], {"k": "v"}],
        AmqpSequence([i, "seq", ulong(i), symbol("s")]),
        None,
        AmqpValue(None),
        AmqpValue(f"binary amqp-value {i}".encode()),
        DataSections([f"part-{i}-{n}".encode() for n in range(1 + i % 3)]),
        SequenceSections([[i, n] for n in range(1 + i % 3)]),
        -(2**62) - i,
        ulong(2**64 - 1 - i),
        int32(-(2**31) + i),
        uint(2**32 - 1 - i),
        short(-(2**15) + i),
        ushort(65535 - i),
        byte(-128 + i % 256),
        ubyte(i % 256),
        i / 8 + 0.1,
        float32(i / 4),
        True,
        char("~"),
        timestamp(EPOCH_MS + i),
        uuid.UUID(int=i + 0xABCDEF),
        symbol(f"Symbol{'x' * (i % 5)}"),
        symbol(f"sym-{i}"),
        "",
        "L" * (70_000 + i),  # several frames
        Array(UNDESCRIBED, Data.INT, *map(int32, range(i % 5))),
        Array(UNDESCRIBED, Data.STRING, "a", f"b{i}"),
        {},
        [],
    ]


def _proton_only_bodies(i: int) -> list[Any]:
    """Bodies rhea's JSON cannot show (described values, decimals): proton and C only."""
    return [
        Described(symbol("com.example:thing"), [i, "x"]),
        Described(ulong(0x1234), {"k": i}),
        decimal32(i),
        decimal64(2**40 + i),
        decimal128(bytes(range(16))),
    ]


def make_message(i: int, body: Any) -> amqscale.Message:
    """Message `i`: every field set, to values that vary with `i`; some are left out now and
    then (an absent field must stay absent)."""
    properties: dict[str, Any] = {
        "i": i,
        "str": f"value {i} \u2603",
        "bool": i % 2 == 0,
        "ubyte": ubyte(i % 256),
        "ushort": ushort(i * 3),
        "uint": uint(2**32 - 1 - i),
        "ulong": ulong(2**64 - 1 - i),
        "byte": byte(-(i % 128)),
        "short": short(-i),
        "int": int32(-(2**31) + i),
        "long": -(2**63) + i,
        "small long": i % 100 - 50,
        "float": float32(i / 8),
        "double": i * 0.1,
        "char": char(chr(0x41 + i % 26)),
        "timestamp": timestamp(EPOCH_MS + i),
        "uuid": uuid.UUID(int=i),
        "binary": f"bin{i}".encode(),
        "symbol": symbol(f"sym{i}"),
        "null": None,
    }
    if i % 10 == 3:
        properties = {"only": i}
    return amqscale.Message(
        body=body,
        durable=i % 2 == 0,
        priority=i % 10,
        ttl=None if i % 5 == 0 else (1000 + i * 37) / 1000,
        first_acquirer=i % 3 == 0,
        delivery_count=0 if i % 4 == 0 else (2**32 - 1 - i if i % 7 == 0 else i * 11),
        instructions=None if i % 6 == 0 else {
            symbol("x-opt-delivery"): f"d{i}",
            "x-opt-plain-str-key": ulong(i),  # a str key goes as a symbol
            ulong(1000 + i): [i, "ulong key"],
        },
        annotations=None if i % 7 == 1 else {
            symbol("x-opt-seq"): ulong(i),
            symbol("x-opt-name"): f"m{i}",
            symbol("x-opt-ts"): timestamp(EPOCH_MS - i),
            symbol("x-opt-list"): [i, symbol("s"), None],
            symbol("x-opt-map"): {"k": i, "n": {"deep": True}},
            symbol("x-opt-int"): int32(-i),
            symbol("x-opt-binary"): bytes([i % 256]),
        },
        id=None if i % 11 == 5 else _ids(i),
        user_id=None if i % 9 == 0 else f"user-{i}".encode(),
        address=f"to/{i}",
        subject=None if i % 13 == 0 else f"subject {i} \u00e9",
        reply_to=f"reply/{i}",
        correlation_id=None if i % 5 == 2 else _ids(i + 1),
        content_type=f"application/x-test-{i}",
        content_encoding=None if i % 4 == 1 else ("gzip", "utf-8", "x-custom")[i % 3],
        expiry_time=None if i % 6 == 1 else _time(i, 3_600_000),
        creation_time=_time(i + 1, 0),
        group_id=None if i % 8 == 2 else f"group-{i % 5}",
        group_sequence=None if i % 8 == 3 else (2**32 - 1 if i % 17 == 0 else i * 1000),
        reply_to_group_id=f"reply-group-{i}",
        properties=properties,
        footer=None if i % 8 == 0 else {
            symbol("x-opt-crc"): uint(i * 31),
            symbol("x-opt-signature"): f"sig{i}".encode(),
            ulong(7): f"footer {i}",
        },
    )


def fidelity_messages(count: int, proton_only: bool) -> list[amqscale.Message]:
    """`count` messages; each gets the next body of the list (bodies also vary with i)."""
    messages = []
    for i in range(count):
        bodies = _bodies(i) + (_proton_only_bodies(i) if proton_only else [])
        messages.append(make_message(i, bodies[i % len(bodies)]))
    return messages


def _send_all(url: str, address: str, messages: list[amqscale.Message],
              shards: int = 1) -> list[amqscale.Tracker]:
    """Send every message on one connection; wait for each outcome."""
    with amqscale.Container(workers=min(shards, 2)) as container:
        sender = container.connect(url, shards=shards).open_sender(address)
        trackers = [sender.send(m, timeout=TIMEOUT) for m in messages]
        sender.flush(timeout=TIMEOUT)
        for tracker in trackers:
            tracker.wait(TIMEOUT)
        return trackers


# ---- strict comparison: the value and its AMQP type ------------------------------------------


def assert_same(got: Any, want: Any, where: str) -> None:
    """`got` equals `want` with the same AMQP types all the way down (ulong is not int, a
    symbol is not a str, float32 is not float), map keys included."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not a map (want {want!r})"
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], (
            f"{where}: keys {list(got)!r} != {list(want)!r}")
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
        return
    if isinstance(want, Array):
        assert type(got) is Array, f"{where}: {got!r} is not an array"
        assert (got.descriptor, got.type) == (want.descriptor, want.type), where
        assert_same(list(got.elements), list(want.elements), where)
        return
    if isinstance(want, Described):
        assert type(got) is Described, f"{where}: {got!r} is not described"
        assert_same(got.descriptor, want.descriptor, f"{where} descriptor")
        assert_same(got.value, want.value, f"{where} value")
        return
    if isinstance(want, list):
        assert type(got) is list, f"{where}: {got!r} is not a list"
        assert len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{n}]")
        return
    assert type(got) is type(want), (
        f"{where}: {got!r} ({type(got).__name__}) is not {want!r} ({type(want).__name__})")
    assert got == want, f"{where}: {got!r} != {want!r}"


def _annotation_map(value: dict[Any, Any] | None) -> dict[Any, Any] | None:
    """An annotations map as the wire has it: str keys are symbols."""
    if value is None:
        return None
    return {symbol(k) if type(k) is str else k: v for k, v in value.items()}


def _plain(value: Any) -> Any:
    """AmqpSequence -> list, recursively: what a decoder gives for an AMQP list."""
    if isinstance(value, (list, tuple)) and not isinstance(value, Array):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def body_sections(body: Any) -> list[tuple[int, Any]]:
    """The body sections amqscale's rules (amqscale/types.py) say `body` is sent as."""
    if body is None:
        return []
    if type(body) in (bytes, bytearray):  # exactly: a decimal128 is a bytes, and a value
        return [(DATA, bytes(body))]
    if isinstance(body, DataSections):
        return [(DATA, bytes(part)) for part in body]
    if isinstance(body, AmqpSequence):
        return [(AMQP_SEQUENCE, _plain(list(body)))]
    if isinstance(body, SequenceSections):
        return [(AMQP_SEQUENCE, _plain(list(part))) for part in body]
    if isinstance(body, AmqpValue):
        return [(AMQP_VALUE, _plain(body.value))]
    return [(AMQP_VALUE, _plain(body))]


# ---- 1. proton-python receives every field ---------------------------------------------------


class RecordingSink(Sink):
    """A Sink that keeps each message's raw bytes and proton's decoding of them (proton's
    Message, and every section as proton's Data decodes it), and accepts it."""

    def __init__(self) -> None:
        super().__init__(credit=100_000, accept=True)
        self.received: list[tuple[ProtonMessage, list[tuple[int, Any]]]] = []

    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        link = delivery.link
        if not link.is_receiver or not delivery.readable or delivery.partial:
            return
        raw = b""
        while True:
            chunk = link.recv(max(delivery.pending, 1))
            if not chunk:
                break
            raw += chunk
        link.advance()
        message = ProtonMessage()
        message.decode(raw)
        self.received.append((message, proton_sections(raw)))
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()


def proton_sections(raw: bytes) -> list[tuple[int, Any]]:
    """Every section of a bare message, decoded by proton's codec: (descriptor, value)."""
    sections = []
    position = 0
    while position < len(raw):
        data = Data()
        position += data.decode(raw[position:])
        data.rewind()
        data.next()
        section = data.get_object()
        assert type(section) is Described, f"not a described section: {section!r}"
        assert type(section.descriptor) is ulong, section.descriptor  # amqscale: codes
        sections.append((int(section.descriptor), _copied(section.value)))
    return sections


def _copied(value: Any) -> Any:
    """proton's decoded value with its binaries copied out: proton gives a binary inside a
    map or list as a memoryview of its Data's buffer."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, Described):
        return Described(_copied(value.descriptor), _copied(value.value))
    if isinstance(value, Array):
        return Array(value.descriptor, value.type, *map(_copied, value.elements))
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return type(value)((_copied(k), _copied(v)) for k, v in value.items())
    return value


def _header_fields(sent: amqscale.Message) -> list[Any]:
    """The header list amqscale should write: defaults are null, trailing nulls trimmed."""
    ttl = None if sent.ttl is None else uint(round(sent.ttl * 1000))
    fields = [True if sent.durable else None,
              None if sent.priority == 4 else ubyte(sent.priority),
              ttl,
              True if sent.first_acquirer else None,
              uint(sent.delivery_count) if sent.delivery_count else None]
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def _property_fields(sent: amqscale.Message) -> list[Any]:
    """The properties list: ids as sent (a Python int is a ulong), times as timestamps."""
    def ident(value: Any) -> Any:
        return ulong(value) if type(value) is int else value

    def stamp(value: float | None) -> timestamp | None:
        return None if value is None else timestamp(round(value * 1000))

    fields = [ident(sent.id), sent.user_id, sent.address, sent.subject, sent.reply_to,
              ident(sent.correlation_id),
              None if sent.content_type is None else symbol(sent.content_type),
              None if sent.content_encoding is None else symbol(sent.content_encoding),
              stamp(sent.expiry_time), stamp(sent.creation_time), sent.group_id,
              None if sent.group_sequence is None else uint(sent.group_sequence),
              sent.reply_to_group_id]
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def expected_sections(sent: amqscale.Message) -> list[tuple[int, Any]]:
    """Every section `sent` should be on the wire as, in the specification's order."""
    sections: list[tuple[int, Any]] = []
    header = _header_fields(sent)
    if header:
        sections.append((HEADER, header))
    if sent.instructions:
        sections.append((DELIVERY_ANNOTATIONS, _plain(_annotation_map(sent.instructions))))
    if sent.annotations:
        sections.append((MESSAGE_ANNOTATIONS, _plain(_annotation_map(sent.annotations))))
    properties = _property_fields(sent)
    if properties:
        sections.append((PROPERTIES, properties))
    if sent.properties:
        sections.append((APPLICATION_PROPERTIES, sent.properties))
    sections += body_sections(sent.body)
    if sent.footer:
        sections.append((FOOTER, _plain(_annotation_map(sent.footer))))
    return sections


def check_proton_message(got: ProtonMessage, sent: amqscale.Message, where: str) -> None:
    """What proton's Message API shows a proton user, field by field (binaries in maps and
    lists are memoryviews there too: `_copied`)."""
    assert got.durable is sent.durable, where
    assert got.priority == sent.priority, where
    assert got.ttl == (sent.ttl or 0.0), where  # proton: seconds, 0 for none
    assert got.first_acquirer is sent.first_acquirer, where
    assert got.delivery_count == sent.delivery_count, where
    for name in ("instructions", "annotations"):
        want = _annotation_map(getattr(sent, name))
        if want is None:
            assert getattr(got, name) is None, f"{where} {name}"
        else:
            assert_same(_copied(dict(getattr(got, name))), _plain(want), f"{where} {name}")
    # proton's Message gives a ulong id as a plain int (the section check saw the ulong).
    want_id = int(sent.id) if isinstance(sent.id, int) else sent.id
    assert_same(_copied(got.id), want_id, f"{where} id")
    assert got.user_id == (sent.user_id or b""), where  # proton: b"" for none
    for name in ("address", "subject", "reply_to", "group_id", "reply_to_group_id"):
        assert getattr(got, name) == getattr(sent, name), f"{where} {name}"
    want_corr = (int(sent.correlation_id) if isinstance(sent.correlation_id, int)
                 else sent.correlation_id)
    assert_same(_copied(got.correlation_id), want_corr, f"{where} correlation_id")
    for name in ("content_type", "content_encoding"):
        value = getattr(sent, name)
        if value is not None:
            assert_same(getattr(got, name), symbol(value), f"{where} {name}")
    # Times: both are the wire's milliseconds / 1000 (proton: 0 for none).
    assert got.expiry_time == (sent.expiry_time or 0.0), f"{where} expiry_time"
    assert got.creation_time == (sent.creation_time or 0.0), f"{where} creation_time"
    assert got.group_sequence == (sent.group_sequence or 0), f"{where} group_sequence"
    assert_same(_copied(got.properties), sent.properties, f"{where} properties")
    sections = body_sections(sent.body)
    if len(sections) == 1:  # proton's Message folds one section into body + inferred
        kind, value = sections[0]
        assert got.inferred is (kind != AMQP_VALUE), f"{where} inferred"
        assert_same(_plain(_copied(got.body)), value, f"{where} body")


@pytest.mark.interop(FIDELITY, "proton-python")
def test_proton_python_receives_every_field_of_every_message(unique_name: str) -> None:
    messages = fidelity_messages(COUNT, proton_only=True)
    with RecordingSink() as sink:
        trackers = _send_all(sink.url, unique_name, messages)
        wait_for(lambda: len(sink.received) >= COUNT, TIMEOUT, "every message at the sink")
    assert [t.outcome for t in trackers] == ["accepted"] * COUNT
    assert len(sink.received) == COUNT
    checked_fields = 0
    for i, ((message, sections), sent) in enumerate(zip(sink.received, messages, strict=True)):
        where = f"message {i}"
        want = expected_sections(sent)
        assert [code for code, _ in sections] == [code for code, _ in want], where
        for (code, got), (_, value) in zip(sections, want, strict=True):
            assert_same(got, value, f"{where} section 0x{code:02x}")
            checked_fields += len(value) if isinstance(value, (list, dict)) else 1
        check_proton_message(message, sent, where)
    assert checked_fields > COUNT * 40  # every field of every message was looked at


# ---- 2. rhea receives every field ------------------------------------------------------------
# rhea's record comes through JSON (rhea_peer.js `jsonable`), which cannot show AMQP types:
# every integer type is a number (ulong and long beyond 2**53 are their 8 bytes, as rhea
# keeps them), symbol and string are both strings, char is its code point, binary and uuid
# are both {"binary": hex}, a timestamp is {"timestamp": ms}, float32 is the double it widens
# to, map keys are strings, and an array is a list. So this test compares values; test 1
# checks the types.


def _eight(value: int, signed: bool) -> dict[str, str]:
    return {"binary": value.to_bytes(8, "big", signed=signed).hex()}


def rhea_json(value: Any, ulong_rule: bool = False) -> Any:
    """What rhea_peer.js records for an AMQP value that amqscale sent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, char):
        return ord(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, timestamp):
        return {"timestamp": int(value)}
    if isinstance(value, (decimal32, decimal64)):  # rhea has no decimal: the raw bytes
        return {"binary": int(value).to_bytes(4 if isinstance(value, decimal32) else 8,
                                              "big").hex()}
    if isinstance(value, uuid.UUID):
        return {"binary": value.bytes.hex()}
    if isinstance(value, (bytes, bytearray)):
        return {"binary": bytes(value).hex()}
    if isinstance(value, float32):
        return struct.unpack(">f", struct.pack(">f", value))[0]
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        # rhea reads a ulong or long as a number when its high 32 bits are below 2097153
        # (in magnitude), else leaves its 8 bytes.
        if isinstance(value, ulong) or ulong_rule:
            return int(value) if value >> 32 < 2097153 else _eight(value, False)
        if type(value) is int:  # amqscale sends a Python int as a long
            return value if -2097153 < value >> 32 < 2097153 else _eight(value, True)
        return int(value)
    if isinstance(value, Array):
        return [rhea_json(v) for v in value.elements]
    if isinstance(value, (list, tuple)):
        return [rhea_json(v) for v in value]
    if isinstance(value, dict):
        return {str(int(k)) if isinstance(k, int) else str(k): rhea_json(v)
                for k, v in value.items()}
    raise AssertionError(f"no rhea mapping for {value!r}")


def rhea_body(body: Any) -> Any:
    """rhea's body: its section object for data and amqp-sequence sections, else the value."""
    if type(body) in (bytes, bytearray):
        return {"typecode": DATA, "content": rhea_json(body), "multiple": None}
    if isinstance(body, DataSections):
        content = [rhea_json(bytes(p)) for p in body]
        if len(content) == 1:
            return {"typecode": DATA, "content": content[0], "multiple": None}
        return {"typecode": DATA, "content": content, "multiple": True}
    if isinstance(body, AmqpSequence):
        return {"typecode": AMQP_SEQUENCE, "content": rhea_json(list(body)), "multiple": None}
    if isinstance(body, SequenceSections):
        content = [rhea_json(list(p)) for p in body]
        if len(content) == 1:
            return {"typecode": AMQP_SEQUENCE, "content": content[0], "multiple": None}
        return {"typecode": AMQP_SEQUENCE, "content": content, "multiple": True}
    if isinstance(body, AmqpValue):
        return rhea_json(body.value)
    return rhea_json(body)


def expected_rhea_record(sent: amqscale.Message) -> dict[str, Any]:
    def ident(value: Any) -> Any:
        return rhea_json(value, ulong_rule=type(value) is int)

    def stamp(value: float | None) -> Any:
        return None if value is None else {"timestamp": round(value * 1000)}

    def annotations(value: dict[Any, Any] | None) -> Any:
        return rhea_json(value) if value else None

    return {
        "delivery_annotations": annotations(sent.instructions),
        "message_annotations": annotations(sent.annotations),
        "message_id": ident(sent.id),
        "user_id": rhea_json(sent.user_id),
        "to": sent.address,
        "subject": sent.subject,
        "reply_to": sent.reply_to,
        "correlation_id": ident(sent.correlation_id),
        "content_type": sent.content_type,
        "content_encoding": sent.content_encoding,
        "absolute_expiry_time": stamp(sent.expiry_time),
        "creation_time": stamp(sent.creation_time),
        "group_id": sent.group_id,
        "group_sequence": sent.group_sequence,
        "reply_to_group_id": sent.reply_to_group_id,
        "application_properties": rhea_json(sent.properties) if sent.properties else None,
        "body": rhea_body(sent.body),
        "footer": annotations(sent.footer),
    }


HEADER_DEFAULTS = {"durable": False, "priority": 4, "ttl": None, "first_acquirer": False,
                   "delivery_count": 0}


def check_rhea_record(record: dict[str, Any], sent: amqscale.Message, where: str) -> None:
    for name, default in HEADER_DEFAULTS.items():
        want = sent.ttl if name == "ttl" else getattr(sent, name)
        if name == "ttl" and want is not None:
            want = round(want * 1000)  # rhea: milliseconds
        if want == default:
            # amqscale leaves a default out; rhea reports an absent field as absent, or as
            # its default when the header list holds a null for it.
            assert record[name] in (None, default), f"{where} {name}: {record[name]!r}"
        else:
            assert record[name] == want, f"{where} {name}: {record[name]!r} != {want!r}"
            assert name in record["present"], f"{where} {name}"
    for name, want in expected_rhea_record(sent).items():
        assert record[name] == want, f"{where} {name}: {record[name]!r} != {want!r}"
        # rhea's decoder sets exactly the fields that are on the wire (an amqp-value null
        # body is a body: rhea's body is null then, but present).
        on_wire = want is not None or (name == "body" and sent.body is not None)
        assert (name in record["present"]) is on_wire, f"{where} {name} present"


@pytest.fixture(scope="module")
def rhea_recorder() -> Iterator[RheaPeer]:
    """A rhea peer that records whole messages and settles as `outcome` properties say."""
    with RheaPeer(record=10, record_full=COUNT, outcomes="outcome") as peer:
        yield peer


@pytest.mark.interop(FIDELITY, "rhea")
def test_rhea_receives_every_field_of_every_message(rhea_recorder: RheaPeer,
                                                    unique_name: str) -> None:
    messages = fidelity_messages(COUNT, proton_only=False)
    trackers = _send_all(rhea_recorder.url, unique_name, messages)
    assert [t.outcome for t in trackers] == ["accepted"] * COUNT
    stats = rhea_recorder.stats()["addresses"][unique_name]
    assert stats["received"] == COUNT
    records = stats["messages"]
    assert len(records) == COUNT
    for i, (record, sent) in enumerate(zip(records, messages, strict=True)):
        check_rhea_record(record, sent, f"message {i}")


# ---- 3. foreign receivers choose the outcome -------------------------------------------------
# Each message carries its outcome in application properties, which both peers read:
# "outcome" (accept, reject, release, modify), "condition" and "description" (reject),
# "delivery_failed", "undeliverable_here" and "annotations" (modify; JSON {KEY: [TYPE, VALUE]},
# typed as rhea_peer.js `typedValue` types them).

LONG_DESCRIPTION = "a long description: " + "\u00e9x" * 6000  # ~18 kB of UTF-8


def _typed(spec: list[Any]) -> Any:
    """The Python AMQP value of a [TYPE, VALUE] description, as amqscale decodes it."""
    kind, value = spec
    makers: dict[str, Callable[[Any], Any]] = {
        "null": lambda v: None, "boolean": bool, "string": str, "symbol": symbol,
        "ulong": lambda v: ulong(int(v)), "long": int, "uint": uint, "int": int32,
        "ushort": ushort, "short": short, "ubyte": ubyte, "byte": byte, "double": float,
        "float": float32, "timestamp": timestamp, "char": lambda v: char(chr(v)),
        "uuid": lambda v: uuid.UUID(hex=v), "binary": bytes.fromhex,
    }
    return makers[kind](value)


def _annotation_specs(i: int) -> dict[str, list[Any]]:
    """Modified-outcome annotations of many types (values vary with i)."""
    return {
        "x-opt-ulong": ["ulong", str(2**64 - 1 - i)],
        "x-opt-small-ulong": ["ulong", str(i % 200)],
        "x-opt-long": ["long", str(-(2**63) + i)],
        "x-opt-uint": ["uint", 2**32 - 1 - i],
        "x-opt-int": ["int", -i],
        "x-opt-ushort": ["ushort", i],
        "x-opt-short": ["short", -i],
        "x-opt-ubyte": ["ubyte", i % 256],
        "x-opt-byte": ["byte", -(i % 128)],
        "x-opt-boolean": ["boolean", i % 2 == 0],
        "x-opt-double": ["double", i + 0.25],
        "x-opt-float": ["float", i / 4],
        "x-opt-timestamp": ["timestamp", EPOCH_MS + i],
        "x-opt-char": ["char", 0x2603],
        "x-opt-uuid": ["uuid", uuid.UUID(int=i).hex],
        "x-opt-binary": ["binary", bytes([i % 256, 0, 255]).hex()],
        "x-opt-string": ["string", f"reason {i} \u00e9"],
        "x-opt-symbol": ["symbol", f"sym-{i}"],
        "x-opt-null": ["null", None],
    }


def outcome_plan(i: int) -> dict[str, Any]:
    """The application properties that tell the peer how to settle message `i`."""
    case = i % 12
    if case in (0, 1):
        return {"outcome": "accept"}
    if case == 2:
        return {"outcome": "reject", "condition": "amqp:not-allowed",
                "description": f"not allowed {i}"}
    if case == 3:
        return {"outcome": "reject", "condition": f"com.example:rejected-{i}",
                "description": f"\u00e9\u2603 unicode reason {i}"}
    if case == 4:
        return {"outcome": "reject", "condition": "amqp:precondition-failed"}  # none given
    if case == 5:
        return {"outcome": "reject", "condition": "amqp:internal-error",
                "description": LONG_DESCRIPTION}
    if case == 6:
        return {"outcome": "release"}
    if case == 7:
        return {"outcome": "modify"}  # every field absent: the defaults
    if case == 8:
        return {"outcome": "modify", "delivery_failed": True, "undeliverable_here": False}
    if case == 9:
        return {"outcome": "modify", "delivery_failed": False, "undeliverable_here": True}
    if case == 10:
        return {"outcome": "modify", "delivery_failed": True, "undeliverable_here": True,
                "annotations": json.dumps({"x-opt-reason": ["string", f"retry {i}"]})}
    return {"outcome": "modify", "delivery_failed": i % 2 == 0, "undeliverable_here": True,
            "annotations": json.dumps(_annotation_specs(i))}


def check_tracker(tracker: amqscale.Tracker, plan: dict[str, Any], where: str) -> None:
    """The Tracker shows exactly the outcome the peer chose."""
    outcome = plan["outcome"]
    want = {"accept": "accepted", "reject": "rejected", "release": "released",
            "modify": "modified"}[outcome]
    assert tracker.outcome == want, f"{where}: {tracker.outcome} != {want}"
    if outcome == "reject":
        assert tracker.condition is not None, where
        assert tracker.condition.name == plan["condition"], where
        assert tracker.condition.description == plan.get("description", ""), where
    else:
        assert tracker.condition is None, f"{where}: {tracker.condition!r}"
    if outcome == "modify":
        assert tracker.delivery_failed is plan.get("delivery_failed", False), where
        assert tracker.undeliverable_here is plan.get("undeliverable_here", False), where
        if "annotations" in plan:
            want_annotations = {symbol(k): _typed(v)
                                for k, v in json.loads(plan["annotations"]).items()}
            assert tracker.annotations is not None, where
            assert_same(tracker.annotations, want_annotations, f"{where} annotations")
        else:
            assert tracker.annotations is None, f"{where}: {tracker.annotations!r}"
    else:
        assert not tracker.delivery_failed and not tracker.undeliverable_here, where
        assert tracker.annotations is None, where


class OutcomeSink(Sink):
    """A Sink that settles each message as its application properties say (see above)."""

    def __init__(self) -> None:
        super().__init__(credit=100_000)
        self.settled: dict[str, int] = {}

    def on_message(self, event: Any) -> None:
        props = event.message.properties or {}
        delivery = event.delivery
        outcome = props["outcome"]
        if outcome == "reject":
            delivery.local.condition = Condition(props["condition"], props.get("description"))
            delivery.update(Delivery.REJECTED)
        elif outcome == "release":
            delivery.update(Delivery.RELEASED)
        elif outcome == "modify":
            delivery.local.failed = props.get("delivery_failed", False)
            delivery.local.undeliverable = props.get("undeliverable_here", False)
            if "annotations" in props:
                delivery.local.annotations = {
                    symbol(k): _typed(v) for k, v in json.loads(props["annotations"]).items()}
            delivery.update(Delivery.MODIFIED)
        else:
            assert outcome == "accept", outcome
            delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        self.settled[outcome] = self.settled.get(outcome, 0) + 1


def _outcome_messages(count: int) -> list[amqscale.Message]:
    return [amqscale.Message(id=i, body=f"outcome {i}", properties=outcome_plan(i))
            for i in range(count)]


def _check_outcomes(trackers: list[amqscale.Tracker], count: int) -> dict[str, int]:
    settled: dict[str, int] = {}
    for i, tracker in enumerate(trackers):
        plan = outcome_plan(i)
        check_tracker(tracker, plan, f"message {i} ({plan['outcome']})")
        settled[plan["outcome"]] = settled.get(plan["outcome"], 0) + 1
    assert sum(settled.values()) == count
    return settled


@pytest.mark.interop(OUTCOMES, "proton-python")
@pytest.mark.parametrize("shards", [1, 2])
def test_proton_python_receiver_chooses_each_outcome(shards: int, unique_name: str) -> None:
    count = 360
    with OutcomeSink() as sink:
        trackers = _send_all(sink.url, unique_name, _outcome_messages(count), shards=shards)
        settled = _check_outcomes(trackers, count)
        assert sink.links_opened == shards
    assert sink.settled == settled


@pytest.mark.interop(OUTCOMES, "rhea")
@pytest.mark.parametrize("shards", [1, 2])
def test_rhea_receiver_chooses_each_outcome(rhea_recorder: RheaPeer, shards: int,
                                            unique_name: str) -> None:
    count = 360
    before = rhea_recorder.stats().get("outcomes", {})
    trackers = _send_all(rhea_recorder.url, unique_name, _outcome_messages(count),
                         shards=shards)
    settled = _check_outcomes(trackers, count)
    after = rhea_recorder.stats()["outcomes"]
    assert {k: after[k] - before.get(k, 0) for k in after} == settled


# ---- 4. every body at the Proton C `receive` example -----------------------------------------
# `receive` prints pn_inspect of each message's body, one line each. The expected line is
# built from what was sent, by the rules of Proton C's inspect (codec.c), checked against it by
# hand: strings and binaries quoted with printable ASCII kept and every other byte (and ", ',
# \) as \xHH; a symbol of letters only bare (:name), else quoted; floats as %g; described as
# "@descriptor value"; arrays as "@PN_TYPE[...]". Proton C's limits, not amqscale's: of
# several data or amqp-sequence sections it keeps only the last, an amqp-value null prints
# as an empty line, and a char prints as one byte (so only ASCII chars are sent here).

_ARRAY_TYPES = {Data.INT: "PN_INT", Data.STRING: "PN_STRING", Data.SYMBOL: "PN_SYMBOL",
                Data.ULONG: "PN_ULONG"}


def _quote(raw: bytes) -> str:
    return "".join(chr(c) if 32 <= c < 127 and c not in b"\"'\\" else f"\\x{c:02x}"
                   for c in raw)


def inspect(value: Any) -> str:
    """Proton C's pn_inspect of one AMQP value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, char):
        return str(value)
    if isinstance(value, symbol):
        simple = value.isascii() and (value.isalpha() or value == "")
        return f":{value}" if simple else f':"{_quote(value.encode())}"'
    if isinstance(value, str):
        return f'"{_quote(value.encode())}"'
    if isinstance(value, decimal32):
        return f"D32({int(value)})"
    if isinstance(value, decimal64):
        return f"D64({int(value)})"
    if isinstance(value, decimal128):
        return f"D128({bytes(value).hex()})"
    if isinstance(value, (bytes, bytearray)):
        return f'b"{_quote(bytes(value))}"'
    if isinstance(value, uuid.UUID):
        return f"UUID({value})"
    if isinstance(value, float):
        number = float(struct.unpack(">f", struct.pack(">f", value))[0]
                       if isinstance(value, float32) else value)
        assert math.isfinite(number)
        return f"{number:g}"  # as C's %g
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Array):
        assert value.descriptor is UNDESCRIBED
        items = ", ".join(inspect(v) for v in value.elements)
        return f"@{_ARRAY_TYPES[value.type]}[{items}]"
    if isinstance(value, Described):
        return f"@{inspect(value.descriptor)} {inspect(value.value)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(inspect(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{inspect(k)}={inspect(v)}" for k, v in value.items()) + "}"
    raise AssertionError(f"no inspect rule for {value!r}")


def expected_receive_line(body: Any) -> str:
    sections = body_sections(body)
    if not sections:
        return ""
    _, value = sections[-1]  # Proton C keeps the last of several sections
    return "" if value is None else inspect(value)


def _run_receive(broker: ProtonCBroker, address: str, messages: list[amqscale.Message]
                 ) -> tuple[int, list[str]]:
    """Send `messages` to the C broker at `address`; the C `receive` takes them. Returns its
    exit status and output lines."""
    receive = subprocess.Popen(
        [str(broker.receive_path), "127.0.0.1", str(broker.port), address,
         str(len(messages))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        trackers = _send_all(broker.url, address, messages)
        assert [t.outcome for t in trackers] == ["accepted"] * len(messages)
        output, _ = receive.communicate(timeout=TIMEOUT)
    finally:
        if receive.poll() is None:
            receive.kill()
            receive.wait(TIMEOUT)
    # Strings are printed escaped: every line is ASCII, and a body is one line.
    return receive.returncode, output.decode("ascii").split("\n")


@pytest.mark.interop(FIDELITY, "proton-c")
@pytest.mark.interop("send", "proton-c")
def test_proton_c_receive_prints_every_body(proton_c_broker: ProtonCBroker,
                                            unique_name: str) -> None:
    count = 300
    messages = fidelity_messages(count, proton_only=True)
    for i in range(0, count, 7):  # and some with no other section than the body
        messages[i] = amqscale.Message(body=messages[i].body if messages[i].body is not None
                                       else AmqpValue(None))
    status, lines = _run_receive(proton_c_broker, unique_name, messages)
    assert status == 0, lines[-5:]
    assert lines[count:] == [f"{count} messages received", ""]
    for i, (line, sent) in enumerate(zip(lines[:count], messages, strict=True)):
        assert line == expected_receive_line(sent.body), f"message {i}: {sent.body!r:.200}"


@pytest.mark.interop(FIDELITY, "proton-c")
def test_proton_c_receive_takes_a_message_with_nothing_set(proton_c_broker: ProtonCBroker,
                                                           unique_name: str) -> None:
    status, lines = _run_receive(proton_c_broker, unique_name,
                                 [amqscale.Message(), amqscale.Message(body="after")])
    assert status == 0, lines
    assert lines == ["", '"after"', "2 messages received", ""]


# A rejection whose description does not fit in one of amqscale's frames. amqscale announces
# proton's default max-frame-size (32768); neither proton-python nor rhea checks a disposition
# against the peer's limit, so a ~100 kB description reaches amqscale as an oversized frame:
# amqscale closes the connection with amqp:connection:framing-error (with reconnect on, it
# reconnects and resends the message, which is rejected again, indefinitely). Announcing a
# larger max-frame-size lets the description through whole.
HUGE_DESCRIPTION = "a description larger than a frame: " + "d" * 100_000


@pytest.fixture
def outcome_peer(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an outcome-choosing peer: a proton-python OutcomeSink, or rhea."""
    if request.param == "rhea":
        yield request.getfixturevalue("rhea_recorder").url
    else:
        with OutcomeSink() as sink:
            yield sink.url


_PEERS = [pytest.param("proton-python", marks=pytest.mark.interop(OUTCOMES, "proton-python")),
          pytest.param("rhea", marks=pytest.mark.interop(OUTCOMES, "rhea"))]


@pytest.mark.parametrize("outcome_peer", _PEERS, indirect=True)
def test_a_rejection_larger_than_a_frame(outcome_peer: str, unique_name: str) -> None:
    plan = {"outcome": "reject", "condition": "amqp:internal-error",
            "description": HUGE_DESCRIPTION}
    with amqscale.Container(workers=1) as container:
        conn = container.connect(outcome_peer, max_frame_size=1_000_000)
        tracker = conn.open_sender(unique_name).send(amqscale.Message(body="x", properties=plan))
        check_tracker(tracker.wait(TIMEOUT), plan, "with a 1 MB max-frame-size")

        conn = container.connect(outcome_peer, reconnect=False)
        tracker = conn.open_sender(unique_name).send(amqscale.Message(body="x", properties=plan))
        with pytest.raises(amqscale.LinkDetached, match="amqp:connection:framing-error"):
            tracker.wait(TIMEOUT)
