"""``Message``: an AMQP 1.0 bare message, every section, encoded and decoded in Python, with
the whole-message fast path of ``amqscale._ccodec`` in front (see :mod:`amqscale.codec`).

The attribute names are proton's (``durable``, ``ttl``, ``id``, ``properties``,
``instructions``, ``annotations``, ...) so that AMQ Python code reads the same; amqscale adds
``footer``, and its ``body`` is lossless (see :mod:`amqscale.types` for the body-section
rules, which replace proton's ``inferred`` flag).

Differences from proton, each for a reason:

* Absent fields are ``None`` (proton returns ``0``, ``b""`` or ``symbol('None')`` for some),
  so a received message says which fields its sender set. Header fields keep the AMQP
  defaults (``durable=False``, ``priority=4``, ``first_acquirer=False``,
  ``delivery_count=0``), which is what an absent header field means.
* ``ttl``, ``expiry_time`` and ``creation_time`` are seconds (``float``), as in proton, but
  are kept internally as the wire's integer milliseconds, so a decoded value re-encodes to
  the same milliseconds (proton's ``int(seconds * 1000)`` can lose one).
* ``encode()`` omits empty sections (proton always writes an empty header and properties),
  and checks every field, naming it in the error, before anything reaches the wire.
"""

from __future__ import annotations

import inspect
import math
import struct
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

from proton import Array, char, symbol, timestamp, ubyte, uint, ulong

from . import codec as _c
from .codec import Buffer, DecodeError, as_bytes, error_reason
from .types import AmqpSequence, AmqpValue, DataSections, SequenceSections, timestamp_of

__all__ = ["Message", "convert_natives"]

_ENC_get = _c._ENC_get
_enc_other = _c._enc_other
_enc_string = _c._enc_string
_enc_symbol = _c._enc_symbol
_enc_uint = _c._enc_uint
_enc_ulong = _c._enc_ulong
_enc_binary = _c._enc_binary
_enc_uuid = _c._enc_uuid
_STR8 = _c._STR8
_VBIN8 = _c._VBIN8
_SMALLLONG = _c._SMALLLONG
_UBYTE = _c._UBYTE
_pack_BI = _c._pack_BI
_pack_Bq = _c._pack_Bq
_pack_II_into = _c._pack_II_into
_decode_at = _c._decode_at
_items = _c._items
_map_items = _c._map_items
_unpack_II = _c._unpack_II
_uuid_set_int = _c._uuid_set_int
_uuid_set_is_safe = _c._uuid_set_is_safe
_int_from_bytes = int.from_bytes
_SAFE_UNKNOWN = _c._SAFE_UNKNOWN
_new_object = object.__new__

# Section descriptors: 0x00 (described) + smallulong code.
_HEADER = b"\x00\x53\x70"
_DELIVERY_ANNOTATIONS = b"\x00\x53\x71"
_MESSAGE_ANNOTATIONS = b"\x00\x53\x72"
_PROPERTIES = b"\x00\x53\x73"
_APPLICATION_PROPERTIES = b"\x00\x53\x74"
_APPLICATION_PROPERTIES_MAP32 = _APPLICATION_PROPERTIES + b"\xd1"
_DATA = b"\x00\x53\x75"
_AMQP_SEQUENCE = b"\x00\x53\x76"
_AMQP_VALUE = b"\x00\x53\x77"
_FOOTER = b"\x00\x53\x78"

# properties list8 of one field, the message-id: a uuid, or a str8 of n bytes (n <= 252).
_PROPERTIES_UUID_ID = _PROPERTIES + bytes((0xC0, 18, 1, 0x98))
_PROPERTIES_STR8_ID = [_PROPERTIES + bytes((0xC0, n + 3, 1, 0xA1, n)) for n in range(253)]

_SECTION_NAMES = {
    "amqp:header:list": 0x70,
    "amqp:delivery-annotations:map": 0x71,
    "amqp:message-annotations:map": 0x72,
    "amqp:properties:list": 0x73,
    "amqp:application-properties:map": 0x74,
    "amqp:data:binary": 0x75,
    "amqp:amqp-sequence:list": 0x76,
    "amqp:amqp-value:*": 0x77,
    "amqp:footer:map": 0x78,
}

_FIELDS = (
    "durable",
    "priority",
    "ttl",
    "first_acquirer",
    "delivery_count",
    "instructions",
    "annotations",
    "id",
    "user_id",
    "address",
    "subject",
    "reply_to",
    "correlation_id",
    "content_type",
    "content_encoding",
    "expiry_time",
    "creation_time",
    "group_id",
    "group_sequence",
    "reply_to_group_id",
    "properties",
    "body",
    "footer",
)
_FIELD_SET = frozenset(_FIELDS)

_PROPERTY_FIELDS = (
    "id",
    "user_id",
    "address",
    "subject",
    "reply_to",
    "correlation_id",
    "content_type",
    "content_encoding",
    "expiry_time",
    "creation_time",
    "group_id",
    "group_sequence",
    "reply_to_group_id",
)

_NOT_SIMPLE = (list, tuple, dict, Array)


def _fail(field: str, exc: BaseException) -> NoReturn:
    """Re-raise a codec error with the message field it came from in front."""
    path, reason = error_reason(exc)
    cls = TypeError if isinstance(exc, TypeError) else ValueError
    raise cls(f"{field}{path}: {reason}") from None


def _type_error(field: str, expected: str, value: Any) -> NoReturn:
    raise TypeError(f"{field}: expected {expected}, not {type(value).__name__}")


def _millis(field: str, value: Any, lo: int, hi: int) -> int | None:
    """Seconds (as proton takes them) to the wire's integer milliseconds, checked."""
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, (int, float)):
        _type_error(field, "seconds as int or float", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{field}: {value!r} is not a finite number of seconds")
        ms = round(value * 1000)
    else:
        ms = value * 1000
    if not lo <= ms <= hi:
        raise ValueError(f"{field}: {value!r} seconds is out of range")
    return int(ms)


def _time_millis(field: str, value: Any) -> int | None:
    """expiry_time and creation_time: seconds as proton takes them (rounded to the
    millisecond), or an aware datetime (floored to its millisecond, see types.timestamp_of)."""
    if isinstance(value, datetime):
        return int(timestamp_of(value, field))
    if type(value) is bool or not isinstance(value, (int, float, type(None))):
        _type_error(field, "seconds as int or float, or an aware datetime", value)
    return _millis(field, value, -(2**63), 2**63 - 1)


def _check_int(field: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is bool or not isinstance(value, int):
        _type_error(field, "int", value)
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value!r} is out of range {lo}..{hi}")


# Field encoders for the properties list: (buf, value, field name).


def _pf_message_id(buf: bytearray, v: Any, field: str) -> None:
    t = type(v)
    if t is str:
        try:
            b = v.encode()
        except ValueError as e:
            _fail(field, e)
        n = len(b)
        buf += _STR8[n] if n < 256 else _pack_BI(0xB1, n)
        buf += b
    elif t is UUID:
        buf += b"\x98"
        buf += v.bytes
    elif isinstance(v, str):
        try:
            _enc_string(buf, v)
        except ValueError as e:
            _fail(field, e)
    elif isinstance(v, int) and t is not bool:
        _check_int(field, v, 0, 0xFFFFFFFFFFFFFFFF)
        _enc_ulong(buf, v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _enc_binary(buf, v.tobytes() if isinstance(v, memoryview) else v)
    elif isinstance(v, UUID):
        _enc_uuid(buf, v)
    else:
        _type_error(field, "str, int (ulong), uuid.UUID or bytes", v)


def _pf_binary(buf: bytearray, v: Any, field: str) -> None:
    if type(v) is bytes or type(v) is bytearray:
        _enc_binary(buf, v)
    elif isinstance(v, memoryview):
        _enc_binary(buf, v.tobytes())
    else:
        _type_error(field, "bytes", v)


def _pf_string(buf: bytearray, v: Any, field: str) -> None:
    if not isinstance(v, str):
        _type_error(field, "str", v)
    try:
        _enc_string(buf, v)
    except ValueError as e:
        _fail(field, e)


def _pf_symbol(buf: bytearray, v: Any, field: str) -> None:
    if not isinstance(v, str):
        _type_error(field, "str", v)
    try:
        _enc_symbol(buf, v)
    except ValueError as e:
        _fail(field, e)


def _pf_timestamp(buf: bytearray, v: int, field: str) -> None:
    buf += _pack_Bq(0x83, v)  # checked when set


def _pf_uint(buf: bytearray, v: Any, field: str) -> None:
    _check_int(field, v, 0, 0xFFFFFFFF)
    _enc_uint(buf, v)


_PROPERTY_ENCODERS: tuple[Callable[[bytearray, Any, str], None], ...] = (
    _pf_message_id,
    _pf_binary,
    _pf_string,
    _pf_string,
    _pf_string,
    _pf_message_id,
    _pf_symbol,
    _pf_symbol,
    _pf_timestamp,
    _pf_timestamp,
    _pf_string,
    _pf_uint,
    _pf_string,
)


def _list_section(
    buf: bytearray, descriptor: bytes, content: bytes | bytearray, count: int
) -> None:
    """A described list with proton's choice of list8 (when it fits) or list32."""
    buf += descriptor
    size = len(content) + 1
    if size <= 255:
        buf += bytes((0xC0, size, count))
    else:
        buf += b"\xd0"
        buf += _c._S_II.pack(size + 3, count)
    buf += content


def _annotations_section(buf: bytearray, descriptor: bytes, value: Any, field: str) -> None:
    """Annotations maps (delivery, message, footer): keys are symbols or ulongs. A plain
    ``str`` key is sent as a symbol, as proton's AnnotationDict does."""
    if not isinstance(value, dict):
        _type_error(field + "s", "dict", value)
    buf += descriptor
    buf += b"\xd1"
    start = len(buf)
    buf += b"\x00\x00\x00\x00\x00\x00\x00\x00"
    k: Any = None
    on_key = True
    try:
        for k, v in value.items():
            on_key = True
            t = type(k)
            if t is symbol or (isinstance(k, str) and t is not char):
                _enc_symbol(buf, k)
            elif t is ulong:
                _enc_ulong(buf, k)
            else:
                raise TypeError(f"must be a symbol (or str) or a ulong, not {t.__name__}")
            on_key = False
            _ENC_get(type(v), _enc_other)(buf, v)
    except (TypeError, ValueError) as e:
        _fail(f"{field} key {k!r}" if on_key else f"{field} {k!r}", e)
    _pack_II_into(buf, start, len(buf) - start - 4, 2 * len(value))


def _application_properties(buf: bytearray, value: Any) -> None:
    if not isinstance(value, dict):
        _type_error("properties", "dict", value)
    buf += _APPLICATION_PROPERTIES_MAP32
    start = len(buf)
    buf += b"\x00\x00\x00\x00\x00\x00\x00\x00"
    k: Any = None
    on_key = True
    try:
        for k, v in value.items():
            on_key = True
            if type(k) is str:
                b = k.encode()
            elif isinstance(k, str) and not isinstance(k, (symbol, char)):
                b = str.encode(k)
            else:
                raise TypeError(
                    f"must be str, not {type(k).__name__} "
                    "(AMQP application-properties keys are strings)"
                )
            n = len(b)
            buf += _STR8[n] if n < 256 else _pack_BI(0xB1, n)
            buf += b
            on_key = False
            t = type(v)
            if t is str:
                b = v.encode()
                n = len(b)
                buf += _STR8[n] if n < 256 else _pack_BI(0xB1, n)
                buf += b
            elif t is int and -128 <= v <= 127:
                buf += _SMALLLONG[v + 128]
            elif t is bool:
                buf += b"\x41" if v else b"\x42"
            elif isinstance(v, _NOT_SIMPLE):
                raise TypeError(
                    f"a {type(v).__name__} is not allowed (AMQP application-properties values "
                    "are simple types: no list, map or array)"
                )
            else:
                _ENC_get(t, _enc_other)(buf, v)
    except (TypeError, ValueError) as e:
        _fail(f"application property key {k!r}" if on_key else f"application property {k!r}", e)
    _pack_II_into(buf, start, len(buf) - start - 4, 2 * len(value))


def _body(buf: bytearray, body: Any) -> None:
    t = type(body)
    if t is bytes or t is bytearray or t is memoryview:
        if t is memoryview:
            body = body.tobytes()
        buf += _DATA
        _enc_binary(buf, body)
    elif t is AmqpValue:
        buf += _AMQP_VALUE
        v = body.value
        try:
            _ENC_get(type(v), _enc_other)(buf, v)
        except (TypeError, ValueError) as e:
            _fail("body", e)
    elif t is AmqpSequence:
        buf += _AMQP_SEQUENCE
        try:
            _c._enc_list(buf, body)
        except (TypeError, ValueError) as e:
            _fail("body", e)
    elif t is DataSections:
        for i, part in enumerate(body):
            if not isinstance(part, (bytes, bytearray, memoryview)):
                _type_error(f"body[{i}]", "bytes (a data section)", part)
            buf += _DATA
            _enc_binary(buf, part.tobytes() if isinstance(part, memoryview) else part)
    elif t is SequenceSections:
        for i, part in enumerate(body):
            if not isinstance(part, (list, tuple)):
                _type_error(f"body[{i}]", "list (an amqp-sequence section)", part)
            buf += _AMQP_SEQUENCE
            try:
                _c._enc_list(buf, part)
            except (TypeError, ValueError) as e:
                _fail(f"body[{i}]", e)
    else:
        buf += _AMQP_VALUE
        try:
            _ENC_get(t, _enc_other)(buf, body)
        except (TypeError, ValueError) as e:
            _fail("body", e)


def _unknown_fields(fields: dict[str, Any]) -> NoReturn:
    unknown = [k for k in fields if k not in _FIELD_SET]
    hint = ""
    if "inferred" in unknown:
        hint = (
            " (amqscale has no 'inferred': wrap the body in AmqpSequence, "
            "AmqpValue or DataSections to choose its section)"
        )
    raise TypeError(
        "Message() got unknown field name(s): " + ", ".join(repr(k) for k in unknown) + hint
    )


if TYPE_CHECKING:
    _MessageBase = object
else:  # with the C fast path, the base class's __init__ is Message's (see below the class)
    _MessageBase = object if _c._ccodec is None else _c._ccodec.MessageBase


class Message(_MessageBase):
    """An AMQP 1.0 message: header, delivery annotations (``instructions``), message
    annotations (``annotations``), properties, application properties (``properties``),
    body and footer.

    ``Message(body=None, **fields)`` takes any attribute below by name and rejects unknown
    names. Values are checked by ``encode()`` (times as soon as they are set), and errors
    name the field: checking once per send costs less than checking every assignment.
    ``Message.decode(data)`` builds one from the encoded bare message.

    Header: ``durable`` (bool), ``priority`` (0..255, default 4), ``ttl`` (seconds or
    None), ``first_acquirer`` (bool), ``delivery_count`` (0..2**32-1).
    Properties (None when absent): ``id`` and ``correlation_id`` (str, int, uuid.UUID or
    bytes), ``user_id`` (bytes), ``address``, ``subject``, ``reply_to``, ``group_id``,
    ``reply_to_group_id`` (str), ``content_type``, ``content_encoding`` (symbol; a str is
    sent as a symbol), ``expiry_time``, ``creation_time`` (seconds since the epoch),
    ``group_sequence`` (0..2**32-1).
    Maps (None when absent): ``instructions``, ``annotations`` and ``footer`` with symbol
    (or str) or ulong keys; ``properties`` with str keys and simple values.
    """

    __slots__ = (
        "durable",
        "priority",
        "_ttl",
        "first_acquirer",
        "delivery_count",
        "instructions",
        "annotations",
        "id",
        "user_id",
        "address",
        "subject",
        "reply_to",
        "correlation_id",
        "content_type",
        "content_encoding",
        "_expiry_time",
        "_creation_time",
        "group_id",
        "group_sequence",
        "reply_to_group_id",
        "properties",
        "body",
        "footer",
    )

    durable: bool
    priority: int
    _ttl: int | None
    first_acquirer: bool
    delivery_count: int
    instructions: dict[Any, Any] | None
    annotations: dict[Any, Any] | None
    id: Any
    user_id: bytes | None
    address: str | None
    subject: str | None
    reply_to: str | None
    correlation_id: Any
    content_type: str | None
    content_encoding: str | None
    _expiry_time: int | None
    _creation_time: int | None
    group_id: str | None
    group_sequence: int | None
    reply_to_group_id: str | None
    properties: dict[str, Any] | None
    body: Any
    footer: dict[Any, Any] | None

    def __init__(self, body: Any = None, **fields: Any) -> None:
        # The reference. With the C fast path on, MessageBase.__init__ runs instead (every
        # slot set in one call, the cost of a send) and calls this for what it does not take.
        self.durable = False
        self.priority = 4
        self._ttl = None
        self.first_acquirer = False
        self.delivery_count = 0
        self.instructions = None
        self.annotations = None
        self.id = None
        self.user_id = None
        self.address = None
        self.subject = None
        self.reply_to = None
        self.correlation_id = None
        self.content_type = None
        self.content_encoding = None
        self._expiry_time = None
        self._creation_time = None
        self.group_id = None
        self.group_sequence = None
        self.reply_to_group_id = None
        self.properties = None
        self.body = body
        self.footer = None
        if fields:
            if not _FIELD_SET.issuperset(fields):
                _unknown_fields(fields)
            for name, value in fields.items():
                setattr(self, name, value)

    _init_python = __init__

    # Times: seconds outside, integer milliseconds inside (the wire's unit).

    @property
    def ttl(self) -> float | None:
        """Time to live in seconds (None: the message does not expire)."""
        ms = self._ttl
        return None if ms is None else ms / 1000

    @ttl.setter
    def ttl(self, value: float | None) -> None:
        self._ttl = _millis("ttl", value, 0, 0xFFFFFFFF)

    @property
    def expiry_time(self) -> float | None:
        """Absolute expiry time, seconds since the Unix epoch. Set it to seconds or to an
        aware ``datetime`` (floored to the millisecond; a naive one raises TypeError)."""
        ms = self._expiry_time
        return None if ms is None else ms / 1000

    @expiry_time.setter
    def expiry_time(self, value: float | datetime | None) -> None:
        self._expiry_time = _time_millis("expiry_time", value)

    @property
    def creation_time(self) -> float | None:
        """Creation time, seconds since the Unix epoch. Set it to seconds or to an aware
        ``datetime`` (floored to the millisecond; a naive one raises TypeError)."""
        ms = self._creation_time
        return None if ms is None else ms / 1000

    @creation_time.setter
    def creation_time(self, value: float | datetime | None) -> None:
        self._creation_time = _time_millis("creation_time", value)

    # ------------------------------------------------------------------------------------
    # Encoding

    def encode(self) -> bytes:
        """The bare message: its sections in the specification's order, empty ones left out
        (a message with nothing set is one empty properties section: a transfer needs bytes).

        Header and properties are described lists with trailing nulls trimmed, list8 when
        they fit, exactly as proton writes them; the maps and the body are what
        :func:`amqscale.codec.encode` gives for them, as proton's ``Data``."""
        if _c_encode_message is not None:
            # The C fast path (amqscale/_ccodec.c) encodes the whole message, to the byte what
            # _encode_python gives, in a fraction of its time: this runs once per message
            # sent. None when it does not handle a field (errors included): Python then runs.
            b = _c_encode_message(self)
            if b is not None:
                return b
        return self._encode_python()

    def _encode_python(self) -> bytes:
        """encode() in pure Python: the reference, and the fallback of the C fast path."""
        buf = bytearray()
        durable = self.durable
        priority = self.priority
        delivery_count = self.delivery_count
        if (
            durable is not False
            or priority != 4
            or self._ttl is not None
            or self.first_acquirer is not False
            or delivery_count != 0
        ):
            self._encode_header(buf)
        if self.instructions:
            _annotations_section(
                buf, _DELIVERY_ANNOTATIONS, self.instructions, "delivery annotation"
            )
        if self.annotations:
            _annotations_section(buf, _MESSAGE_ANNOTATIONS, self.annotations, "message annotation")

        mid = self.id
        if (
            self.user_id is None
            and self.address is None
            and self.subject is None
            and self.reply_to is None
            and self.correlation_id is None
            and self.content_type is None
            and self.content_encoding is None
            and self._expiry_time is None
            and self._creation_time is None
            and self.group_id is None
            and self.group_sequence is None
            and self.reply_to_group_id is None
        ):
            # A properties section holding only a message-id: the usual case, inlined.
            t = type(mid)
            if t is UUID:
                buf += _PROPERTIES_UUID_ID
                buf += mid.int.to_bytes(16, "big")
            elif t is str and len(mid) < 64:  # 64 characters are at most 252 UTF-8 bytes
                try:
                    b = mid.encode()
                except ValueError as e:
                    _fail("id", e)
                buf += _PROPERTIES_STR8_ID[len(b)]
                buf += b
            elif mid is not None:
                content = bytearray()
                _pf_message_id(content, mid, "id")
                _list_section(buf, _PROPERTIES, content, 1)
        else:
            self._encode_properties(buf)

        properties = self.properties
        if properties:
            _application_properties(buf, properties)

        body = self.body
        if type(body) is bytes:
            n = len(body)
            buf += _DATA
            buf += _VBIN8[n] if n < 256 else _pack_BI(0xB0, n)
            buf += body
        elif body is not None:
            _body(buf, body)

        if self.footer:
            _annotations_section(buf, _FOOTER, self.footer, "footer")
        if not buf:  # nothing set: no section is left, and a transfer needs bytes
            return EMPTY_MESSAGE
        return bytes(buf)

    def _encode_header(self, buf: bytearray) -> None:
        durable = self.durable
        priority = self.priority
        ttl = self._ttl
        first_acquirer = self.first_acquirer
        delivery_count = self.delivery_count
        if type(durable) is not bool:
            _type_error("durable", "bool", durable)
        if type(first_acquirer) is not bool:
            _type_error("first_acquirer", "bool", first_acquirer)
        _check_int("priority", priority, 0, 255)
        _check_int("delivery_count", delivery_count, 0, 0xFFFFFFFF)
        parts: list[bytes | bytearray | None] = [
            b"\x41" if durable else None,
            None if priority == 4 else _UBYTE[priority],
            None,
            b"\x41" if first_acquirer else None,
            None,
        ]
        if ttl is not None:
            b = bytearray()
            _enc_uint(b, ttl)
            parts[2] = b
        if delivery_count:
            b = bytearray()
            _enc_uint(b, delivery_count)
            parts[4] = b
        while parts[-1] is None:
            parts.pop()
        content = b"".join(b"\x40" if p is None else p for p in parts)
        _list_section(buf, _HEADER, content, len(parts))

    def _encode_properties(self, buf: bytearray) -> None:
        values = (
            self.id,
            self.user_id,
            self.address,
            self.subject,
            self.reply_to,
            self.correlation_id,
            self.content_type,
            self.content_encoding,
            self._expiry_time,
            self._creation_time,
            self.group_id,
            self.group_sequence,
            self.reply_to_group_id,
        )
        content = bytearray()
        nulls = 0
        count = 0
        for v, encode_field, name in zip(values, _PROPERTY_ENCODERS, _PROPERTY_FIELDS, strict=True):
            if v is None:
                nulls += 1
                continue
            if nulls:
                content += b"\x40" * nulls
                count += nulls
                nulls = 0
            encode_field(content, v, name)
            count += 1
        _list_section(buf, _PROPERTIES, content, count)

    # ------------------------------------------------------------------------------------
    # Decoding

    @classmethod
    def decode(cls, data: Buffer, datetimes: bool = False, decimals: bool = False) -> Message:
        """Decode a bare message (the payload of a transfer). Accepts every encoding the
        specification allows, symbolic section descriptors included; raises
        :class:`amqscale.codec.DecodeError` naming the offset of anything malformed.

        The body comes back in the form that re-encodes to the same sections (see
        :mod:`amqscale.types`); binary values are ``bytes``. ``datetimes=True`` and
        ``decimals=True`` give the timestamps and decimals in the annotations, application
        properties, body and footer as ``datetime`` and ``Decimal`` (see
        :func:`convert_natives`). The options are positional-or-keyword, not keyword-only,
        which would cost every call (see :func:`amqscale.codec.decode`)."""
        if _c_decode_message is not None:
            # The C fast path (amqscale/_ccodec.c): the same message, field for field and type
            # for type, in a fraction of the time. None for what it does not handle (symbolic
            # descriptors, malformed input, ...): Python then runs and words the error.
            m = _c_decode_message(cls, data)
            if m is not None:
                return convert_natives(m, datetimes, decimals) if datetimes or decimals else m
        return convert_natives(cls._decode_python(data), datetimes, decimals)

    @classmethod
    def _decode_python(cls, data: Buffer) -> Message:
        """decode() in pure Python: the reference, and the fallback of the C fast path."""
        # One function, common encodings inlined: this runs once per received message.
        d = data if type(data) is bytes else as_bytes(data)
        n = len(d)
        p = 0
        header: list[Any] | None = None
        delivery_annotations = message_annotations = application_properties = footer = None
        props: list[Any] | None = None
        mid: Any = None
        data_parts: list[bytes] | None = None
        sequences: list[list[Any]] | None = None
        value: Any = None
        has_value = False
        last = 0x6F
        start = 0
        try:
            while p < n:
                start = p
                if d[p] == 0 and d[p + 1] == 0x53:
                    code = d[p + 2]
                    p += 3
                else:
                    code, p = _section_code(d, p)
                if code <= last or code > 0x78:
                    if not 0x70 <= code <= 0x78:
                        raise DecodeError(f"unknown message section descriptor 0x{code:02x}", start)
                    if code != last or code < 0x75 or code > 0x76:
                        raise DecodeError(
                            f"message section 0x{code:02x} out of order or repeated", start
                        )
                last = code
                c = d[p]
                if code == 0x75:
                    # data
                    if c == 0xA0:
                        e = p + 2 + d[p + 1]
                        if e > n:
                            raise DecodeError("truncated data section", p)
                        b = d[p + 2 : e]
                        p = e
                    else:
                        b, p = _decode_at(d, p)
                        if type(b) is not bytes:
                            _bad("data section", b, "binary", start)
                    if sequences is not None or has_value:
                        raise DecodeError("data section after another body section", start)
                    if data_parts is None:
                        data_parts = [b]
                    else:
                        data_parts.append(b)
                elif code == 0x74:
                    # application-properties
                    if c == 0xD1:
                        size, count = _unpack_II(d, p + 1)
                        if size < 4:
                            raise DecodeError("map32 size too small", p)
                        e = p + 5 + size
                        application_properties = _map_items(d, p + 9, e, count)
                        p = e
                    else:
                        application_properties, p = _decode_at(d, p)
                        if type(application_properties) is not dict:
                            _bad("application-properties", application_properties, "map", start)
                elif code == 0x73:
                    # properties; most often only a message-id
                    if c == 0xC0 and d[p + 2] == 1:
                        e = p + 2 + d[p + 1]
                        if e > n:
                            raise DecodeError("truncated properties section", p)
                        c = d[p + 3]
                        if c == 0xA1:
                            q = p + 5 + d[p + 4]
                            mid = d[p + 5 : q].decode()
                        elif c == 0x98:
                            q = p + 20
                            mid = _new_object(UUID)
                            _uuid_set_int(mid, _int_from_bytes(d[p + 4 : q], "big"))
                            _uuid_set_is_safe(mid, _SAFE_UNKNOWN)
                        else:
                            mid, q = _decode_at(d, p + 3)
                            if mid is not None and type(mid) not in _ID_TYPES:
                                _bad(
                                    "properties message-id", mid, "ulong, uuid, binary or string", p
                                )
                        if q != e:
                            raise DecodeError("properties list size mismatch", p)
                        p = e
                    else:
                        if c == 0xC0:
                            e = p + 2 + d[p + 1]
                            v = _items(d, p + 3, e, d[p + 2], "properties")
                            p = e
                        else:
                            v, p = _decode_at(d, p)
                        props = _properties(v, start)
                elif code == 0x70:
                    if c == 0x45:
                        p += 1  # an empty header, as proton always sends
                    else:
                        v, p = _decode_at(d, p)
                        header = _header(v, start)
                elif code == 0x77:
                    if data_parts is not None or sequences is not None:
                        raise DecodeError("amqp-value section after another body section", start)
                    value, p = _decode_at(d, p)
                    has_value = True
                elif code == 0x76:
                    v, p = _decode_at(d, p)
                    if type(v) is not list:
                        _bad("amqp-sequence section", v, "list", start)
                    if data_parts is not None or has_value:
                        raise DecodeError("amqp-sequence section after another body section", start)
                    if sequences is None:
                        sequences = [v]
                    else:
                        sequences.append(v)
                else:
                    v, p = _decode_at(d, p)
                    if type(v) is not dict:
                        _bad("annotations section", v, "map", start)
                    if code == 0x72:
                        message_annotations = v
                    elif code == 0x71:
                        delivery_annotations = v
                    else:
                        footer = v
        except (IndexError, struct.error):
            raise DecodeError("truncated message section", start) from None
        except UnicodeDecodeError:
            raise DecodeError("invalid UTF-8 in message-id", start) from None
        except RecursionError:
            raise DecodeError("message nested too deeply", start) from None

        m = cls.__new__(cls)  # not __init__: every slot is set below
        if header is None:
            m.durable = False
            m.priority = 4
            m._ttl = None
            m.first_acquirer = False
            m.delivery_count = 0
        else:
            m.durable, m.priority, m._ttl, m.first_acquirer, m.delivery_count = header
        m.instructions = delivery_annotations
        m.annotations = message_annotations
        if props is None:
            m.id = mid
            m.user_id = None
            m.address = None
            m.subject = None
            m.reply_to = None
            m.correlation_id = None
            m.content_type = None
            m.content_encoding = None
            m._expiry_time = None
            m._creation_time = None
            m.group_id = None
            m.group_sequence = None
            m.reply_to_group_id = None
        else:
            (
                m.id,
                m.user_id,
                m.address,
                m.subject,
                m.reply_to,
                m.correlation_id,
                m.content_type,
                m.content_encoding,
                m._expiry_time,
                m._creation_time,
                m.group_id,
                m.group_sequence,
                m.reply_to_group_id,
            ) = props
        m.properties = application_properties
        if data_parts is not None:
            m.body = data_parts[0] if len(data_parts) == 1 else DataSections(data_parts)
        elif sequences is not None:
            m.body = (
                AmqpSequence(sequences[0]) if len(sequences) == 1 else SequenceSections(sequences)
            )
        elif has_value:
            m.body = AmqpValue(value) if value is None or type(value) is bytes else value
        else:
            m.body = None
        m.footer = footer
        return m

    # ------------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        for name in Message.__slots__:
            a = getattr(self, name)
            b = getattr(other, name)
            if name == "body" and type(a) is not type(b):
                return False
            if a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        if self.body is not None:
            parts.append(f"body={self.body!r}")
        for name in _FIELDS:
            if name == "body":
                continue
            v = getattr(self, name)
            if v is None or (name in _HEADER_DEFAULTS and v == _HEADER_DEFAULTS[name]):
                continue
            parts.append(f"{name}={v!r}")
        return f"Message({', '.join(parts)})"


# A Message with nothing set, encoded: an empty properties section (described list0).
# Without it the transfer would carry no bytes, which no peer decodes as a message; it
# decodes back to a Message with nothing set.
EMPTY_MESSAGE = b"\x00\x53\x73\x45"


def convert_natives(message: Message, datetimes: bool = False, decimals: bool = False) -> Message:
    """``message`` (decoded) with the timestamps (``datetimes``) and decimals (``decimals``)
    of its delivery and message annotations, application properties, body and footer
    converted in place to ``datetime`` and ``Decimal``, as :func:`amqscale.codec.decode`
    does; returns it. For messages decoded without the options, e.g. a batch. The
    ``creation_time`` and ``expiry_time`` properties stay seconds (``float``)."""
    if not (datetimes or decimals):
        return message
    for name in ("instructions", "annotations", "properties", "body", "footer"):
        value = getattr(message, name)
        if value is not None and not isinstance(value, (bytes, DataSections, AmqpValue)):
            setattr(message, name, _c.natives(value, datetimes, decimals))
    return message


_HEADER_DEFAULTS = {"durable": False, "priority": 4, "first_acquirer": False, "delivery_count": 0}


# ------------------------------------------------------------------------------------------
# Decoding helpers


def _bad(field: str, value: Any, expected: str, p: int) -> NoReturn:
    raise DecodeError(f"{field} is {type(value).__name__}, expected {expected}", p)


def _list_fields(value: Any, name: str, n: int, p: int) -> list[Any]:
    if type(value) is not list:
        raise DecodeError(f"{name} section is {type(value).__name__}, expected a list", p)
    if len(value) > n:
        raise DecodeError(f"{name} section has {len(value)} fields, expected at most {n}", p)
    if len(value) < n:
        value += [None] * (n - len(value))
    return value


def _header(v: Any, p: int) -> list[Any]:
    """Check a decoded header list's field types; fill in the defaults of absent fields."""
    h = _list_fields(v, "header", 5, p)
    durable, priority, ttl, first_acquirer, delivery_count = h
    if durable is None:
        h[0] = False
    elif type(durable) is not bool:
        _bad("header durable", durable, "boolean", p)
    if priority is None:
        h[1] = 4
    elif type(priority) is not ubyte:
        _bad("header priority", priority, "ubyte", p)
    else:
        h[1] = int(priority)
    if ttl is not None:
        if type(ttl) is not uint:
            _bad("header ttl", ttl, "uint", p)
        h[2] = int(ttl)
    if first_acquirer is None:
        h[3] = False
    elif type(first_acquirer) is not bool:
        _bad("header first-acquirer", first_acquirer, "boolean", p)
    if delivery_count is None:
        h[4] = 0
    elif type(delivery_count) is not uint:
        _bad("header delivery-count", delivery_count, "uint", p)
    else:
        h[4] = int(delivery_count)
    return h


_ID_TYPES = (ulong, UUID, bytes, str)


def _properties(f: Any, p: int) -> list[Any]:
    """Check a decoded properties list's field types and pad it to its 13 fields."""
    if type(f) is not list:
        _bad("properties section", f, "list", p)
    n = len(f)
    if n > 13:
        raise DecodeError(f"properties section has {n} fields, expected at most 13", p)
    if n == 1:
        if type(f[0]) not in _ID_TYPES and f[0] is not None:
            _bad("properties message-id", f[0], "ulong, uuid, binary or string", p)
        return f + _NULLS_12
    for i, v in enumerate(f):
        if v is None:
            continue
        t = type(v)
        if i == 0 or i == 5:
            if t not in _ID_TYPES:
                _bad(f"properties {_PROPERTY_FIELDS[i]}", v, "ulong, uuid, binary or string", p)
        elif i == 1:
            if t is not bytes:
                _bad("properties user-id", v, "binary", p)
        elif i == 6 or i == 7:
            if t is not symbol:
                _bad(f"properties {_PROPERTY_FIELDS[i]}", v, "symbol", p)
        elif i == 8 or i == 9:
            if t is not timestamp:
                _bad(f"properties {_PROPERTY_FIELDS[i]}", v, "timestamp", p)
            f[i] = int(v)
        elif i == 11:
            if t is not uint:
                _bad("properties group-sequence", v, "uint", p)
            f[i] = int(v)
        elif t is not str:
            _bad(f"properties {_PROPERTY_FIELDS[i]}", v, "string", p)
    if n < 13:
        f += [None] * (13 - n)
    return f


_NULLS_12 = [None] * 12


def _section_code(d: bytes, p: int) -> tuple[int, int]:
    """The section code (0x70..0x78) of the described value at ``p`` and the offset of its
    value. Descriptors may be the ulong or the symbolic name."""
    try:
        if d[p] != 0:
            raise DecodeError("expected a message section (a described value)", p)
        if d[p + 1] == 0x53:
            return d[p + 2], p + 3
    except IndexError:
        raise DecodeError("truncated message section", p) from None
    descriptor, q = _decode_at(d, p + 1)
    code = -1
    if type(descriptor) is ulong:
        code = int(descriptor)
    elif type(descriptor) is symbol:
        code = _SECTION_NAMES.get(descriptor, -1)
    if not 0x70 <= code <= 0x78:
        raise DecodeError(f"unknown message section descriptor {descriptor!r}", p)
    return code, q


_NO_FIELDS = [None] * 13


def _load_c_message() -> tuple[Any, Any]:
    """The C fast path's encode_message and decode_message, handed Message and the body
    forms; Nones when the codec runs in pure Python."""
    cc = _c._ccodec
    if cc is None:
        return None, None
    try:
        cc.setup_message(
            {
                "Message": Message,
                "AmqpValue": AmqpValue,
                "AmqpSequence": AmqpSequence,
                "DataSections": DataSections,
                "SequenceSections": SequenceSections,
            }
        )
    except Exception:  # a Message whose slots the extension does not know: pure Python
        return None, None
    return cc.encode_message, cc.decode_message


_c_encode_message, _c_decode_message = _load_c_message()
if _MessageBase is not object:
    # MessageBase.__init__ takes over (it calls _init_python until setup_message has run).
    del Message.__init__
    _reference = inspect.signature(Message._init_python)
    Message.__signature__ = _reference.replace(  # type: ignore[attr-defined]
        parameters=list(_reference.parameters.values())[1:])
