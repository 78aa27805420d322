"""AMQP 1.0 type-system encoder and decoder, in pure Python.

Why not proton's ``Data``: every value crossing proton's Python binding goes through a C data
tree, a wrapper call per node and, for ``Message``, a retry loop on a fixed-size buffer; that
costs several microseconds per message. This module encodes straight into a ``bytearray`` and
decodes straight out of ``bytes`` with type-dispatch tables and precompiled ``struct.Struct``
objects, which is several times cheaper.

It is a drop-in for proton's mapping between Python and AMQP values, so that amqscale and
proton interoperate value for value:

=============================  ===================================================
Python                         AMQP
=============================  ===================================================
``None``                       null
``bool``                       boolean
``int``                        long (signed 64-bit; larger values raise)
``float``                      double
``str``                        string
``bytes``/``bytearray``/        binary (decodes to ``bytes``, never ``memoryview``)
``memoryview``
``uuid.UUID``                  uuid
``list``/``tuple``             list (decodes to ``list``)
``dict``                       map
proton wrapper types           their type: ``ulong`` -> ulong, ``symbol`` -> symbol,
                               ``int32`` -> int, ``float32`` -> float, ``char``,
                               ``timestamp``, ``decimal32/64/128``, ``byte``, ``short``,
                               ``ubyte``, ``ushort``, ``uint``
``Described(d, v)``            described value
``Array(d, type, *elems)``     array (``d`` is ``UNDESCRIBED`` or the descriptor)
aware ``datetime.datetime``    timestamp (milliseconds, floored; naive raises)
``decimal.Decimal``            decimal128 (IEEE 754-2008 BID, exact or ValueError)
=============================  ===================================================

Decoding gives back the types ``proton.Data.get_object`` gives (``ulong``, ``int32``, ...;
a long is a plain ``int``), so that round trips are lossless; ``datetimes=True`` gives
timestamps as UTC-aware ``datetime`` and ``decimals=True`` decimal32/64/128 as ``Decimal``
(docs/types.md has the whole mapping and the rules).

The encoder picks the same encodings proton does, so the bytes are identical to
``proton.Data.encode()`` for the same value: the compact forms of null, boolean, uint, ulong,
int and long (``uint0``, ``smalluint``, ``ulong0``, ``smallulong``, ``smallint``,
``smalllong``), ``str8``/``vbin8``/``sym8`` below 256 bytes and the 32-bit forms above,
``list0`` for an empty list, and the 32-bit forms of list, map and array otherwise (proton
never uses ``list8``/``map8``/``array8``). Array elements use the wide form of their type.
The decoder accepts every encoding the specification allows.

Errors: an unsupported Python type raises ``TypeError`` and an out-of-range value raises
``ValueError``; both name where in the value the problem is (``at [2]['k']: ...``). Malformed
input raises :class:`DecodeError` (a ``ValueError``) naming the byte offset.

The C extension ``amqscale._ccodec`` is a fast path for the common types: the public functions
try it first and run the Python code here, the reference, for whatever it does not handle
(errors included, so that they are this module's own). ``AMQSCALE_PURE_PYTHON=1`` in the
environment at import turns it off; without the built extension the Python code runs alone.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from proton import (
    UNDESCRIBED,
    AnnotationDict,
    Array,
    Described,
    PropertyDict,
    SymbolList,
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

from .types import (
    TypeCode,
    decimal32_of,
    decimal64_of,
    decimal128_of,
    timestamp_of,
    to_datetime,
    to_decimal,
)

__all__ = ["DecodeError", "decode", "decode_from", "encode", "encode_into", "natives"]

Buffer = bytes | bytearray | memoryview

# Most of proton's int subclasses validate in a Python-level __init__; decoded values are in
# range by construction, so build them with int.__new__ and skip that cost.
_new_int = int.__new__
_new_float = float.__new__
_new_str = str.__new__
_new_bytes = bytes.__new__
_new_object = object.__new__


class DecodeError(ValueError):
    """Malformed AMQP input. ``offset`` is the byte offset in the decoded buffer where the
    problem was found and ``reason`` the message without the offset."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

_S_Bb = struct.Struct(">Bb")
_S_BH = struct.Struct(">BH")
_S_Bh = struct.Struct(">Bh")
_S_BI = struct.Struct(">BI")
_S_Bi = struct.Struct(">Bi")
_S_BQ = struct.Struct(">BQ")
_S_Bq = struct.Struct(">Bq")
_S_Bf = struct.Struct(">Bf")
_S_Bd = struct.Struct(">Bd")
_S_II = struct.Struct(">II")

_pack_BH = _S_BH.pack
_pack_Bh = _S_Bh.pack
_pack_BI = _S_BI.pack
_pack_Bi = _S_Bi.pack
_pack_BQ = _S_BQ.pack
_pack_Bq = _S_Bq.pack
_pack_Bf = _S_Bf.pack
_pack_Bd = _S_Bd.pack
_pack_I = struct.Struct(">I").pack
_pack_II_into = _S_II.pack_into

# Precomputed encodings: constructor + one-byte value or length.
_UBYTE = [bytes((0x50, i)) for i in range(256)]
_SMALLUINT = [bytes((0x52, i)) for i in range(256)]
_SMALLULONG = [bytes((0x53, i)) for i in range(256)]
_BYTE = [_S_Bb.pack(0x51, i) for i in range(-128, 128)]
_SMALLINT = [_S_Bb.pack(0x54, i) for i in range(-128, 128)]
_SMALLLONG = [_S_Bb.pack(0x55, i) for i in range(-128, 128)]
_VBIN8 = [bytes((0xA0, i)) for i in range(256)]
_STR8 = [bytes((0xA1, i)) for i in range(256)]
_SYM8 = [bytes((0xA3, i)) for i in range(256)]

_LIST32_HDR = b"\xd0\x00\x00\x00\x00\x00\x00\x00\x00"
_BODY32_HDR = b"\x00\x00\x00\x00\x00\x00\x00\x00"

_Encoder = Callable[[bytearray, Any], None]

_RANGES = {
    "ubyte": "0..255",
    "ushort": "0..65535",
    "uint": "0..2**32-1",
    "ulong": "0..2**64-1",
    "byte": "-128..127",
    "short": "-2**15..2**15-1",
    "int": "-2**31..2**31-1",
    "long": "-2**63..2**63-1; use ulong for larger unsigned values",
    "timestamp": "-2**63..2**63-1 milliseconds",
    "decimal32": "0..2**32-1 (the raw bits)",
    "decimal64": "0..2**64-1 (the raw bits)",
    "char": "one code point",
    "float": "a finite value within float32 range, or inf/nan",
}


def _range_error(name: str, value: Any) -> ValueError:
    return ValueError(f"{value!r} is out of range for AMQP {name} ({_RANGES.get(name, '')})")


def _at(exc: BaseException, where: str) -> Exception:
    """Re-raise ``exc`` one container level up, prefixing ``where`` to its location.

    The original type is kept as TypeError or ValueError (the subclass, e.g.
    UnicodeEncodeError, is not: its constructor takes other arguments)."""
    path = getattr(exc, "amqp_path", "")
    reason = getattr(exc, "amqp_reason", None) or str(exc)
    new_path = where + path
    cls = TypeError if isinstance(exc, TypeError) else ValueError
    new = cls(f"at {new_path}: {reason}")
    setattr(new, "amqp_path", new_path)  # noqa: B010 (exception attributes, untyped)
    setattr(new, "amqp_reason", reason)  # noqa: B010
    return new


def error_reason(exc: BaseException) -> tuple[str, str]:
    """The (path, reason) of an encoding error raised by this module, so callers (Message)
    can word it their own way: ``application property 'k'[0]: cannot encode ...``."""
    return getattr(exc, "amqp_path", ""), getattr(exc, "amqp_reason", None) or str(exc)


def _index_of(seq: Iterable[Any], item: Any) -> str:
    for i, x in enumerate(seq):
        if x is item:
            return f"[{i}]"
    return "[?]"


def _enc_null(buf: bytearray, v: None) -> None:
    buf += b"\x40"


def _enc_bool(buf: bytearray, v: bool) -> None:
    buf += b"\x41" if v else b"\x42"


def _enc_ubyte(buf: bytearray, v: int) -> None:
    if 0 <= v <= 255:
        buf += _UBYTE[v]
    else:
        raise _range_error("ubyte", v)


def _enc_ushort(buf: bytearray, v: int) -> None:
    if 0 <= v <= 0xFFFF:
        buf += _pack_BH(0x60, v)
    else:
        raise _range_error("ushort", v)


def _enc_uint(buf: bytearray, v: int) -> None:
    if 0 <= v <= 255:
        buf += _SMALLUINT[v] if v else b"\x43"
    elif 0 <= v <= 0xFFFFFFFF:
        buf += _pack_BI(0x70, v)
    else:
        raise _range_error("uint", v)


def _enc_ulong(buf: bytearray, v: int) -> None:
    if 0 <= v <= 255:
        buf += _SMALLULONG[v] if v else b"\x44"
    elif 0 <= v <= 0xFFFFFFFFFFFFFFFF:
        buf += _pack_BQ(0x80, v)
    else:
        raise _range_error("ulong", v)


def _enc_byte(buf: bytearray, v: int) -> None:
    if -128 <= v <= 127:
        buf += _BYTE[v + 128]
    else:
        raise _range_error("byte", v)


def _enc_short(buf: bytearray, v: int) -> None:
    if -0x8000 <= v <= 0x7FFF:
        buf += _pack_Bh(0x61, v)
    else:
        raise _range_error("short", v)


def _enc_int32(buf: bytearray, v: int) -> None:
    if -128 <= v <= 127:
        buf += _SMALLINT[v + 128]
    elif -0x80000000 <= v <= 0x7FFFFFFF:
        buf += _pack_Bi(0x71, v)
    else:
        raise _range_error("int", v)


def _enc_long(buf: bytearray, v: int) -> None:
    if -128 <= v <= 127:
        buf += _SMALLLONG[v + 128]
    elif -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF:
        buf += _pack_Bq(0x81, v)
    else:
        raise _range_error("long", v)


def _enc_timestamp(buf: bytearray, v: int) -> None:
    if -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF:
        buf += _pack_Bq(0x83, v)
    else:
        raise _range_error("timestamp", v)


def _enc_float32(buf: bytearray, v: float) -> None:
    try:
        buf += _pack_Bf(0x72, v)
    except (struct.error, OverflowError):
        raise _range_error("float", v) from None


def _enc_double(buf: bytearray, v: float) -> None:
    buf += _pack_Bd(0x82, v)


def _enc_decimal32(buf: bytearray, v: int) -> None:
    if 0 <= v <= 0xFFFFFFFF:
        buf += _pack_BI(0x74, v)
    else:
        raise _range_error("decimal32", v)


def _enc_decimal64(buf: bytearray, v: int) -> None:
    if 0 <= v <= 0xFFFFFFFFFFFFFFFF:
        buf += _pack_BQ(0x84, v)
    else:
        raise _range_error("decimal64", v)


def _enc_decimal128(buf: bytearray, v: bytes) -> None:
    if len(v) != 16:
        raise ValueError(f"AMQP decimal128 must be 16 bytes, not {len(v)}")
    buf += b"\x94"
    buf += v


def _enc_datetime(buf: bytearray, v: datetime) -> None:
    buf += _pack_Bq(0x83, timestamp_of(v))


def _enc_decimal(buf: bytearray, v: Decimal) -> None:
    # decimal128: the only width that holds every Decimal a 34-digit context makes.
    buf += b"\x94"
    buf += decimal128_of(v)


def _enc_char(buf: bytearray, v: str) -> None:
    if len(v) != 1:
        raise ValueError(f"AMQP char must be a single character, not {v!r}")
    buf += _pack_BI(0x73, ord(v))


def _enc_uuid(buf: bytearray, v: UUID) -> None:
    buf += b"\x98"
    buf += v.bytes


def _enc_binary(buf: bytearray, v: bytes | bytearray) -> None:
    n = len(v)
    if n < 256:
        buf += _VBIN8[n]
    else:
        buf += _pack_BI(0xB0, n)
    buf += v


def _enc_memoryview(buf: bytearray, v: memoryview) -> None:
    _enc_binary(buf, v.tobytes())


def _enc_string(buf: bytearray, v: str) -> None:
    b = v.encode()
    n = len(b)
    if n < 256:
        buf += _STR8[n]
    else:
        buf += _pack_BI(0xB1, n)
    buf += b


def _enc_symbol(buf: bytearray, v: str) -> None:
    try:
        b = v.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"AMQP symbol must be ASCII, not {v!r}") from None
    n = len(b)
    if n < 256:
        buf += _SYM8[n]
    else:
        buf += _pack_BI(0xB3, n)
    buf += b


def _enc_list(buf: bytearray, v: list[Any] | tuple[Any, ...]) -> None:
    if not v:
        buf += b"\x45"
        return
    start = len(buf)
    buf += _LIST32_HDR
    get = _ENC_get
    x = None
    try:
        for x in v:
            t = type(x)
            if t is str:
                b = x.encode()
                n = len(b)
                if n < 256:
                    buf += _STR8[n]
                else:
                    buf += _pack_BI(0xB1, n)
                buf += b
            else:
                get(t, _enc_other)(buf, x)
    except (TypeError, ValueError) as e:
        raise _at(e, _index_of(v, x)) from None
    _pack_II_into(buf, start + 1, len(buf) - start - 5, len(v))


def _enc_list32_body(buf: bytearray, v: list[Any] | tuple[Any, ...]) -> None:
    # An empty list inside an array still takes the list32 form: size 4, count 0.
    start = len(buf)
    buf += _BODY32_HDR
    x = None
    try:
        for x in v:
            _ENC_get(type(x), _enc_other)(buf, x)
    except (TypeError, ValueError) as e:
        raise _at(e, _index_of(v, x)) from None
    _pack_II_into(buf, start, len(buf) - start - 4, len(v))


def _enc_map(buf: bytearray, v: dict[Any, Any]) -> None:
    buf += b"\xd1"
    _enc_map32_body(buf, v)


def _enc_map32_body(buf: bytearray, v: dict[Any, Any]) -> None:
    start = len(buf)
    buf += _BODY32_HDR
    get = _ENC_get
    k: Any = None
    on_key = True
    try:
        for k, x in v.items():
            on_key = True
            t = type(k)
            if t is str:
                b = k.encode()
                n = len(b)
                buf += _STR8[n] if n < 256 else _pack_BI(0xB1, n)
                buf += b
            else:
                get(t, _enc_other)(buf, k)
            on_key = False
            t = type(x)
            if t is str:
                b = x.encode()
                n = len(b)
                buf += _STR8[n] if n < 256 else _pack_BI(0xB1, n)
                buf += b
            else:
                get(t, _enc_other)(buf, x)
    except (TypeError, ValueError) as e:
        raise _at(e, f"<map key {k!r}>" if on_key else f"[{k!r}]") from None
    _pack_II_into(buf, start, len(buf) - start - 4, 2 * len(v))


def _enc_described(buf: bytearray, v: Described) -> None:
    buf += b"\x00"
    d = v.descriptor
    try:
        _ENC_get(type(d), _enc_other)(buf, d)
    except (TypeError, ValueError) as e:
        raise _at(e, "<descriptor>") from None
    x = v.value
    try:
        _ENC_get(type(x), _enc_other)(buf, x)
    except (TypeError, ValueError) as e:
        raise _at(e, "<described value>") from None


def _enc_array(buf: bytearray, v: Array) -> None:
    buf += b"\xf0"
    _enc_array32_body(buf, v)


def _enc_array32_body(buf: bytearray, v: Array) -> None:
    t = v.type
    spec = _ARRAY_ELEMENTS.get(t)
    if spec is None:
        if t == TypeCode.DESCRIBED:
            raise TypeError(
                "an array's element type cannot be DESCRIBED: write a described array as "
                "Array(descriptor, element_type, *values)"
            )
        raise ValueError(f"unknown AMQP array element type {t!r}")
    constructor, encode_element = spec
    start = len(buf)
    buf += _BODY32_HDR
    d = v.descriptor
    if d is not UNDESCRIBED:
        buf += b"\x00"
        try:
            _ENC_get(type(d), _enc_other)(buf, d)
        except (TypeError, ValueError) as e:
            raise _at(e, "<array descriptor>") from None
    buf += constructor
    elements = v.elements
    x = None
    try:
        for x in elements:
            encode_element(buf, x)
    except (TypeError, ValueError) as e:
        raise _at(e, _index_of(elements, x)) from None
    _pack_II_into(buf, start, len(buf) - start - 4, len(elements))


def _enc_other(buf: bytearray, v: Any) -> None:
    """The fallback for types missing from the dispatch table: subclasses of supported types
    (an ``IntEnum`` member is an int, an ``OrderedDict`` a dict) are encoded as their base."""
    t = type(v)
    for base in t.__mro__[1:]:
        f = _ENC.get(base)
        if f is not None:
            f(buf, v)
            return
    raise TypeError(f"cannot encode object of type {t.__qualname__}")


_ENC: dict[type, _Encoder] = {
    type(None): _enc_null,
    bool: _enc_bool,
    ubyte: _enc_ubyte,
    ushort: _enc_ushort,
    uint: _enc_uint,
    ulong: _enc_ulong,
    byte: _enc_byte,
    short: _enc_short,
    int32: _enc_int32,
    int: _enc_long,
    float32: _enc_float32,
    float: _enc_double,
    decimal32: _enc_decimal32,
    decimal64: _enc_decimal64,
    decimal128: _enc_decimal128,
    char: _enc_char,
    timestamp: _enc_timestamp,
    UUID: _enc_uuid,
    bytes: _enc_binary,
    bytearray: _enc_binary,
    memoryview: _enc_memoryview,
    str: _enc_string,
    symbol: _enc_symbol,
    list: _enc_list,
    tuple: _enc_list,
    SymbolList: _enc_list,
    dict: _enc_map,
    AnnotationDict: _enc_map,
    PropertyDict: _enc_map,
    Described: _enc_described,
    Array: _enc_array,
    datetime: _enc_datetime,
    Decimal: _enc_decimal,
}
_ENC_get = _ENC.get


# Array elements: always the wide encoding of the array's type, proton's choice.


def _array_int(name: str, fmt: str, lo: int, hi: int) -> _Encoder:
    pack = struct.Struct(">" + fmt).pack

    def encode_element(buf: bytearray, x: Any) -> None:
        if type(x) is bool or not isinstance(x, int):
            raise TypeError(f"an array of {name} cannot hold an object of type {type(x).__name__}")
        if not lo <= x <= hi:
            raise _range_error(name, x)
        buf += pack(x)

    return encode_element


def _array_float(name: str, fmt: str) -> _Encoder:
    pack = struct.Struct(">" + fmt).pack

    def encode_element(buf: bytearray, x: Any) -> None:
        if type(x) is bool or not isinstance(x, (float, int)):
            raise TypeError(f"an array of {name} cannot hold an object of type {type(x).__name__}")
        try:
            buf += pack(x)
        except (struct.error, OverflowError):
            raise _range_error("float", x) from None

    return encode_element


def _array_typed(name: str, types: type | tuple[type, ...], body: _Encoder) -> _Encoder:
    def encode_element(buf: bytearray, x: Any) -> None:
        if not isinstance(x, types):
            raise TypeError(f"an array of {name} cannot hold an object of type {type(x).__name__}")
        body(buf, x)

    return encode_element


def _array_native(native: type, to_raw: Callable[[Any], Any], raw: _Encoder) -> _Encoder:
    """An array element encoder that also takes ``native`` values (datetime, Decimal),
    converted by ``to_raw`` to the raw value ``raw`` encodes."""

    def encode_element(buf: bytearray, x: Any) -> None:
        raw(buf, to_raw(x) if isinstance(x, native) else x)

    return encode_element


def _ae_null(buf: bytearray, x: Any) -> None:
    if x is not None:
        raise TypeError(f"an array of null cannot hold an object of type {type(x).__name__}")


def _ae_bool(buf: bytearray, x: Any) -> None:
    if type(x) is not bool:
        raise TypeError(f"an array of boolean cannot hold an object of type {type(x).__name__}")
    buf += b"\x01" if x else b"\x00"


def _ab_char(buf: bytearray, x: str) -> None:
    if len(x) != 1:
        raise ValueError(f"AMQP char must be a single character, not {x!r}")
    buf += _pack_I(ord(x))


def _ab_16(buf: bytearray, x: bytes) -> None:
    if len(x) != 16:
        raise ValueError(f"AMQP decimal128 must be 16 bytes, not {len(x)}")
    buf += x


def _ab_uuid(buf: bytearray, x: UUID) -> None:
    buf += x.bytes


def _ab_binary(buf: bytearray, x: bytes | bytearray | memoryview) -> None:
    if type(x) is memoryview:
        x = x.tobytes()
    buf += _pack_I(len(x))
    buf += x


def _ab_string(buf: bytearray, x: str) -> None:
    b = x.encode()
    buf += _pack_I(len(b))
    buf += b


def _ab_symbol(buf: bytearray, x: str) -> None:
    try:
        b = x.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"AMQP symbol must be ASCII, not {x!r}") from None
    buf += _pack_I(len(b))
    buf += b


_ARRAY_ELEMENTS: dict[int, tuple[bytes, _Encoder]] = {
    TypeCode.NULL: (b"\x40", _ae_null),
    TypeCode.BOOL: (b"\x56", _ae_bool),
    TypeCode.UBYTE: (b"\x50", _array_int("ubyte", "B", 0, 0xFF)),
    TypeCode.BYTE: (b"\x51", _array_int("byte", "b", -0x80, 0x7F)),
    TypeCode.USHORT: (b"\x60", _array_int("ushort", "H", 0, 0xFFFF)),
    TypeCode.SHORT: (b"\x61", _array_int("short", "h", -0x8000, 0x7FFF)),
    TypeCode.UINT: (b"\x70", _array_int("uint", "I", 0, 0xFFFFFFFF)),
    TypeCode.INT: (b"\x71", _array_int("int", "i", -0x80000000, 0x7FFFFFFF)),
    TypeCode.CHAR: (b"\x73", _array_typed("char", str, _ab_char)),
    TypeCode.ULONG: (b"\x80", _array_int("ulong", "Q", 0, 0xFFFFFFFFFFFFFFFF)),
    TypeCode.LONG: (
        b"\x81",
        _array_int("long", "q", -0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
    ),
    TypeCode.TIMESTAMP: (
        b"\x83",
        _array_native(
            datetime,
            timestamp_of,
            _array_int("timestamp", "q", -0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
        ),
    ),
    TypeCode.FLOAT: (b"\x72", _array_float("float", "f")),
    TypeCode.DOUBLE: (b"\x82", _array_float("double", "d")),
    TypeCode.DECIMAL32: (
        b"\x74",
        _array_native(Decimal, decimal32_of, _array_int("decimal32", "I", 0, 0xFFFFFFFF)),
    ),
    TypeCode.DECIMAL64: (
        b"\x84",
        _array_native(
            Decimal, decimal64_of, _array_int("decimal64", "Q", 0, 0xFFFFFFFFFFFFFFFF)
        ),
    ),
    TypeCode.DECIMAL128: (
        b"\x94",
        _array_native(Decimal, decimal128_of, _array_typed("decimal128", bytes, _ab_16)),
    ),
    TypeCode.UUID: (b"\x98", _array_typed("uuid", UUID, _ab_uuid)),
    TypeCode.BINARY: (
        b"\xb0",
        _array_typed("binary", (bytes, bytearray, memoryview), _ab_binary),
    ),
    TypeCode.STRING: (b"\xb1", _array_typed("string", str, _ab_string)),
    TypeCode.SYMBOL: (b"\xb3", _array_typed("symbol", str, _ab_symbol)),
    TypeCode.LIST: (b"\xd0", _array_typed("list", (list, tuple), _enc_list32_body)),
    TypeCode.MAP: (b"\xd1", _array_typed("map", dict, _enc_map32_body)),
    TypeCode.ARRAY: (b"\xf0", _array_typed("array", Array, _enc_array32_body)),
}


def encode_into(buf: bytearray, value: Any) -> None:
    """Append the AMQP encoding of ``value`` to ``buf`` (so that several values, or a frame
    around them, can be built in one buffer without copies)."""
    if _c_encode is not None:
        # The C fast path (amqscale/_ccodec.c): the same bytes in a fraction of the time, or
        # None for what it does not handle, errors included; the Python code then runs.
        b = _c_encode(value)
        if b is not None:
            buf += b
            return
    _py_encode_into(buf, value)


def encode(value: Any) -> bytes:
    """The AMQP encoding of ``value``, byte for byte what ``proton.Data`` gives for it."""
    if _c_encode is not None:
        b = _c_encode(value)  # the C fast path, as in encode_into
        if b is not None:
            return b
    return _py_encode(value)


def _py_encode_into(buf: bytearray, value: Any) -> None:
    """encode_into in pure Python: the reference, and the fallback of the C fast path."""
    try:
        _ENC_get(type(value), _enc_other)(buf, value)
    except RecursionError:
        raise ValueError("value is nested too deeply (or contains itself)") from None


def _py_encode(value: Any) -> bytes:
    """encode in pure Python."""
    buf = bytearray()
    _py_encode_into(buf, value)
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

_Decoder = Callable[[bytes, int], tuple[Any, int]]

_unpack_H = struct.Struct(">H").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from
_unpack_II = _S_II.unpack_from

# Decoded arrays of zero-width elements (null, true, false, uint0, ulong0, list0) take no
# input bytes per element, so their count is bounded here rather than by the input's size.
MAX_ZERO_WIDTH_ARRAY = 1 << 20


def _truncated(what: str, pos: int) -> DecodeError:
    return DecodeError(f"truncated {what}", pos)


def _uuid_from_bytes(b: bytes) -> UUID:
    # UUID(bytes=...) validates its arguments in Python; this is what UUID.__setstate__ does.
    u = _new_object(UUID)
    _uuid_set_int(u, _int_from_bytes(b, "big"))
    _uuid_set_is_safe(u, _SAFE_UNKNOWN)
    return u


_SAFE_UNKNOWN = UUID(int=0).is_safe
_uuid_set_int = UUID.__dict__["int"].__set__
_uuid_set_is_safe = UUID.__dict__["is_safe"].__set__
_int_from_bytes = int.from_bytes


def _d_null(d: bytes, p: int) -> tuple[Any, int]:
    return None, p


def _d_true(d: bytes, p: int) -> tuple[Any, int]:
    return True, p


def _d_false(d: bytes, p: int) -> tuple[Any, int]:
    return False, p


def _d_uint0(d: bytes, p: int) -> tuple[Any, int]:
    return _UINT0, p


def _d_ulong0(d: bytes, p: int) -> tuple[Any, int]:
    return _ULONG0, p


def _d_list0(d: bytes, p: int) -> tuple[Any, int]:
    return [], p


_UINT0 = _new_int(uint, 0)
_ULONG0 = _new_int(ulong, 0)


def _d_boolean(d: bytes, p: int) -> tuple[Any, int]:
    try:
        b = d[p]
    except IndexError:
        raise _truncated("boolean", p) from None
    if b == 1:
        return True, p + 1
    if b == 0:
        return False, p + 1
    raise DecodeError(f"invalid boolean value 0x{b:02x}", p)


def _one_byte(name: str, cls: type, signed: bool) -> _Decoder:
    def decode_one_byte(d: bytes, p: int) -> tuple[Any, int]:
        try:
            b = d[p]
        except IndexError:
            raise _truncated(name, p) from None
        if signed and b > 127:
            b -= 256
        return (_new_int(cls, b) if cls is not int else b), p + 1

    return decode_one_byte


def _fixed(
    name: str, unpack: Callable[[bytes, int], tuple[Any]], width: int, cls: type
) -> _Decoder:
    if cls is int:

        def decode_plain(d: bytes, p: int) -> tuple[Any, int]:
            try:
                return unpack(d, p)[0], p + width
            except struct.error:
                raise _truncated(name, p) from None

        return decode_plain
    new = _new_float if issubclass(cls, float) else _new_int

    def decode_fixed(d: bytes, p: int) -> tuple[Any, int]:
        try:
            return new(cls, unpack(d, p)[0]), p + width
        except struct.error:
            raise _truncated(name, p) from None

    return decode_fixed


def _d_float64(d: bytes, p: int) -> tuple[Any, int]:
    try:
        return _unpack_d(d, p)[0], p + 8
    except struct.error:
        raise _truncated("double", p) from None


def _d_char(d: bytes, p: int) -> tuple[Any, int]:
    try:
        c = _unpack_I(d, p)[0]
    except struct.error:
        raise _truncated("char", p) from None
    try:
        return _new_str(char, chr(c)), p + 4
    except (ValueError, OverflowError):
        raise DecodeError(f"invalid char code point 0x{c:x}", p) from None


def _d_decimal128(d: bytes, p: int) -> tuple[Any, int]:
    e = p + 16
    b = d[p:e]
    if len(b) != 16:
        raise _truncated("decimal128", p)
    return _new_bytes(decimal128, b), e


def _d_uuid(d: bytes, p: int) -> tuple[Any, int]:
    e = p + 16
    b = d[p:e]
    if len(b) != 16:
        raise _truncated("uuid", p)
    return _uuid_from_bytes(b), e


def _d_vbin8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = d[p]
    except IndexError:
        raise _truncated("binary", p) from None
    p += 1
    e = p + n
    b = d[p:e]
    if len(b) != n:
        raise _truncated("binary", p)
    return b, e


def _d_vbin32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = _unpack_I(d, p)[0]
    except struct.error:
        raise _truncated("binary", p) from None
    p += 4
    e = p + n
    b = d[p:e]
    if len(b) != n:
        raise _truncated("binary", p)
    return b, e


def _utf8(d: bytes, p: int, e: int) -> str:
    b = d[p:e]
    if len(b) != e - p:
        raise _truncated("string", p)
    try:
        return b.decode()
    except UnicodeDecodeError as x:
        raise DecodeError(f"invalid UTF-8 in string ({x.reason})", p + x.start) from None


def _d_str8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = d[p]
    except IndexError:
        raise _truncated("string", p) from None
    p += 1
    e = p + n
    b = d[p:e]
    if len(b) == n:
        try:
            return b.decode(), e
        except UnicodeDecodeError:
            pass
    return _utf8(d, p, e), e


def _d_str32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = _unpack_I(d, p)[0]
    except struct.error:
        raise _truncated("string", p) from None
    p += 4
    return _utf8(d, p, p + n), p + n


def _ascii(d: bytes, p: int, e: int) -> str:
    b = d[p:e]
    if len(b) != e - p:
        raise _truncated("symbol", p)
    try:
        return _new_str(symbol, b.decode("ascii"))
    except UnicodeDecodeError as x:
        raise DecodeError("symbol is not ASCII", p + x.start) from None


def _d_sym8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = d[p]
    except IndexError:
        raise _truncated("symbol", p) from None
    p += 1
    return _ascii(d, p, p + n), p + n


def _d_sym32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        n = _unpack_I(d, p)[0]
    except struct.error:
        raise _truncated("symbol", p) from None
    p += 4
    return _ascii(d, p, p + n), p + n


def _items(d: bytes, p: int, end: int, count: int, what: str) -> list[Any]:
    """Decode ``count`` consecutive values from ``p``; they must end exactly at ``end``."""
    if end > len(d):
        raise _truncated(what, p)
    if count > end - p:
        raise DecodeError(f"{what} count {count} exceeds its size", p)
    out: list[Any] = []
    append = out.append
    dec = _DEC
    try:
        for _ in range(count):
            c = d[p]
            if c == 0xA1:
                e = p + 2 + d[p + 1]
                if e > end:
                    raise _truncated("string", p)
                append(d[p + 2 : e].decode())
                p = e
            else:
                f = dec[c]
                if f is None:
                    raise DecodeError(f"invalid format code 0x{c:02x}", p)
                v, p = f(d, p + 1)
                append(v)
    except IndexError:
        raise _truncated(what, p) from None
    except UnicodeDecodeError as x:
        raise DecodeError(f"invalid UTF-8 in string ({x.reason})", p + 2 + x.start) from None
    if p != end:
        raise DecodeError(f"{what} elements end at {p}, not at its declared end {end}", p)
    return out


def _d_list8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size = d[p]
        count = d[p + 1]
    except IndexError:
        raise _truncated("list", p) from None
    if size < 1:
        raise DecodeError("list8 size too small", p)
    end = p + 1 + size
    return _items(d, p + 2, end, count, "list"), end


def _d_list32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size, count = _unpack_II(d, p)
    except struct.error:
        raise _truncated("list", p) from None
    if size < 4:
        raise DecodeError("list32 size too small", p)
    end = p + 4 + size
    return _items(d, p + 8, end, count, "list"), end


def _map_items(d: bytes, p: int, end: int, count: int) -> dict[Any, Any]:
    """Decode ``count`` values (alternating keys and values) from ``p`` into a dict."""
    if end > len(d):
        raise _truncated("map", p)
    if count > end - p:
        raise DecodeError(f"map count {count} exceeds its size", p)
    if count & 1:
        raise DecodeError(f"map has an odd number of elements ({count})", p)
    out: dict[Any, Any] = {}
    dec = _DEC
    k: Any = None
    try:
        for _ in range(count >> 1):
            c = d[p]
            if c == 0xA1:
                e = p + 2 + d[p + 1]
                if e > end:
                    raise _truncated("string", p)
                k = d[p + 2 : e].decode()
                p = e
            else:
                f = dec[c]
                if f is None:
                    raise DecodeError(f"invalid format code 0x{c:02x}", p)
                k, p = f(d, p + 1)
            c = d[p]
            if c == 0xA1:
                e = p + 2 + d[p + 1]
                if e > end:
                    raise _truncated("string", p)
                out[k] = d[p + 2 : e].decode()
                p = e
            elif c == 0x55:
                v = d[p + 1]
                out[k] = v - 256 if v > 127 else v
                p += 2
            elif c == 0x41:
                out[k] = True
                p += 1
            elif c == 0x42:
                out[k] = False
                p += 1
            else:
                f = dec[c]
                if f is None:
                    raise DecodeError(f"invalid format code 0x{c:02x}", p)
                out[k], p = f(d, p + 1)
    except IndexError:
        raise _truncated("map", p) from None
    except UnicodeDecodeError as x:
        raise DecodeError(f"invalid UTF-8 in string ({x.reason})", p + 2 + x.start) from None
    except TypeError:
        raise DecodeError(
            f"map key of type {type(k).__name__} cannot be a Python dict key", p
        ) from None
    if p != end:
        raise DecodeError(f"map elements end at {p}, not at its declared end {end}", p)
    if len(out) != count >> 1:
        raise DecodeError("map has duplicate keys", p)
    return out


def _d_map8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size = d[p]
        count = d[p + 1]
    except IndexError:
        raise _truncated("map", p) from None
    if size < 1:
        raise DecodeError("map8 size too small", p)
    end = p + 1 + size
    return _map_items(d, p + 2, end, count), end


def _d_map32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size, count = _unpack_II(d, p)
    except struct.error:
        raise _truncated("map", p) from None
    if size < 4:
        raise DecodeError("map32 size too small", p)
    end = p + 4 + size
    return _map_items(d, p + 8, end, count), end


def _array_body(d: bytes, p: int, end: int, count: int) -> tuple[Any, int]:
    if end > len(d):
        raise _truncated("array", p)
    descriptor: Any = UNDESCRIBED
    try:
        code = d[p]
        if code == 0:
            descriptor, p = _decode_at(d, p + 1)
            code = d[p]
    except IndexError:
        raise _truncated("array", p) from None
    f = _DEC[code]
    if f is None or code == 0:
        raise DecodeError(f"invalid array element constructor 0x{code:02x}", p)
    type_code = _TYPE_CODE[code]
    p += 1
    if code in _ZERO_WIDTH:
        if count > MAX_ZERO_WIDTH_ARRAY:
            raise DecodeError(f"array of {count} zero-width elements is too large", p)
    elif count > end - p:
        raise DecodeError(f"array count {count} exceeds its size", p)
    elements: list[Any] = []
    append = elements.append
    try:
        for _ in range(count):
            v, p = f(d, p)
            append(v)
    except IndexError:
        raise _truncated("array", p) from None
    if p != end:
        raise DecodeError(f"array elements end at {p}, not at its declared end {end}", p)
    return Array(descriptor, type_code, *elements), end


def _d_array8(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size = d[p]
        count = d[p + 1]
    except IndexError:
        raise _truncated("array", p) from None
    if size < 2:
        raise DecodeError("array8 size too small", p)
    return _array_body(d, p + 2, p + 1 + size, count)


def _d_array32(d: bytes, p: int) -> tuple[Any, int]:
    try:
        size, count = _unpack_II(d, p)
    except struct.error:
        raise _truncated("array", p) from None
    if size < 5:
        raise DecodeError("array32 size too small", p)
    return _array_body(d, p + 8, p + 4 + size, count)


def _d_described(d: bytes, p: int) -> tuple[Any, int]:
    descriptor, p = _decode_at(d, p)
    value, p = _decode_at(d, p)
    return Described(descriptor, value), p


def _decode_at(d: bytes, p: int) -> tuple[Any, int]:
    try:
        code = d[p]
    except IndexError:
        raise _truncated("input: expected a value", p) from None
    f = _DEC[code]
    if f is None:
        raise DecodeError(f"invalid format code 0x{code:02x}", p)
    return f(d, p + 1)


_DEC: list[_Decoder | None] = [None] * 256
_TYPE_CODE: list[int] = [0] * 256
_ZERO_WIDTH = frozenset((0x40, 0x41, 0x42, 0x43, 0x44, 0x45))


def _register(code: int, type_code: int, f: _Decoder) -> None:
    _DEC[code] = f
    _TYPE_CODE[code] = int(type_code)


_register(0x00, TypeCode.DESCRIBED, _d_described)
_register(0x40, TypeCode.NULL, _d_null)
_register(0x41, TypeCode.BOOL, _d_true)
_register(0x42, TypeCode.BOOL, _d_false)
_register(0x56, TypeCode.BOOL, _d_boolean)
_register(0x50, TypeCode.UBYTE, _one_byte("ubyte", ubyte, False))
_register(0x51, TypeCode.BYTE, _one_byte("byte", byte, True))
_register(0x60, TypeCode.USHORT, _fixed("ushort", _unpack_H, 2, ushort))
_register(0x61, TypeCode.SHORT, _fixed("short", _unpack_h, 2, short))
_register(0x43, TypeCode.UINT, _d_uint0)
_register(0x52, TypeCode.UINT, _one_byte("uint", uint, False))
_register(0x70, TypeCode.UINT, _fixed("uint", _unpack_I, 4, uint))
_register(0x54, TypeCode.INT, _one_byte("int", int32, True))
_register(0x71, TypeCode.INT, _fixed("int", _unpack_i, 4, int32))
_register(0x44, TypeCode.ULONG, _d_ulong0)
_register(0x53, TypeCode.ULONG, _one_byte("ulong", ulong, False))
_register(0x80, TypeCode.ULONG, _fixed("ulong", _unpack_Q, 8, ulong))
_register(0x55, TypeCode.LONG, _one_byte("long", int, True))
_register(0x81, TypeCode.LONG, _fixed("long", _unpack_q, 8, int))
_register(0x72, TypeCode.FLOAT, _fixed("float", _unpack_f, 4, float32))
_register(0x82, TypeCode.DOUBLE, _d_float64)
_register(0x74, TypeCode.DECIMAL32, _fixed("decimal32", _unpack_I, 4, decimal32))
_register(0x84, TypeCode.DECIMAL64, _fixed("decimal64", _unpack_Q, 8, decimal64))
_register(0x94, TypeCode.DECIMAL128, _d_decimal128)
_register(0x73, TypeCode.CHAR, _d_char)
_register(0x83, TypeCode.TIMESTAMP, _fixed("timestamp", _unpack_q, 8, timestamp))
_register(0x98, TypeCode.UUID, _d_uuid)
_register(0xA0, TypeCode.BINARY, _d_vbin8)
_register(0xB0, TypeCode.BINARY, _d_vbin32)
_register(0xA1, TypeCode.STRING, _d_str8)
_register(0xB1, TypeCode.STRING, _d_str32)
_register(0xA3, TypeCode.SYMBOL, _d_sym8)
_register(0xB3, TypeCode.SYMBOL, _d_sym32)
_register(0x45, TypeCode.LIST, _d_list0)
_register(0xC0, TypeCode.LIST, _d_list8)
_register(0xD0, TypeCode.LIST, _d_list32)
_register(0xC1, TypeCode.MAP, _d_map8)
_register(0xD1, TypeCode.MAP, _d_map32)
_register(0xE0, TypeCode.ARRAY, _d_array8)
_register(0xF0, TypeCode.ARRAY, _d_array32)


def as_bytes(data: Buffer) -> bytes:
    """``data`` as ``bytes``: decoding slices it, and slices of ``bytes`` are ``bytes``."""
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview):
        return data.tobytes()
    return bytes(data)


def decode_from(
    data: Buffer, offset: int = 0, datetimes: bool = False, decimals: bool = False
) -> tuple[Any, int]:
    """Decode one value at ``offset``; returns it and the offset just past it.
    ``datetimes`` and ``decimals`` as in :func:`decode`."""
    if _c_decode_from is not None:
        # The C fast path: the same values, or None for anything it does not handle,
        # malformed input included, so that the errors are the Python code's own.
        r = _c_decode_from(data, offset)
        if r is not None:
            return (natives(r[0], datetimes, decimals), r[1]) if datetimes or decimals else r
    v, end = _py_decode_from(data, offset)
    return natives(v, datetimes, decimals), end


def decode(data: Buffer, datetimes: bool = False, decimals: bool = False) -> Any:
    """Decode exactly one value: trailing bytes are an error (they would be silently lost).

    By default every value comes back as the class that re-encodes to it (a timestamp as
    proton's ``timestamp``, decimals as proton's raw ``decimal32/64/128``). Opt-ins:
    ``datetimes=True`` gives timestamps as UTC-aware ``datetime`` (``ValueError`` for one
    outside years 1..9999), ``decimals=True`` gives decimal32/64/128 as ``decimal.Decimal``;
    both reach into lists, maps (keys too), arrays and described values."""
    # The options are not keyword-only: on CPython 3.11 a call to a function with keyword-only
    # defaults skips the specialised call path and costs ~40 ns, a tenth of a decode.
    if _c_decode is not None:
        v = _c_decode(data)  # the C fast path, as in decode_from
        if v is not _C_NOT_HANDLED:
            return natives(v, datetimes, decimals) if datetimes or decimals else v
    return natives(_py_decode(data), datetimes, decimals)


def natives(value: Any, datetimes: bool, decimals: bool) -> Any:
    """``value`` (as decoded) with its timestamps as ``datetime`` when ``datetimes`` and its
    decimals as ``Decimal`` when ``decimals``; lists are converted in place. A pass after
    decoding, so that the default decoding (C or Python) pays nothing for the options."""
    if not (datetimes or decimals):
        return value
    convert: dict[type, Callable[[Any], Any]] = {}
    if datetimes:
        convert[timestamp] = to_datetime
    if decimals:
        convert[decimal32] = convert[decimal64] = convert[decimal128] = to_decimal
    return _natives(value, convert)


def _natives(v: Any, convert: dict[type, Callable[[Any], Any]]) -> Any:
    t = type(v)
    f = convert.get(t)
    if f is not None:
        return f(v)
    if isinstance(v, list):  # list, and the body forms AmqpSequence, SequenceSections
        for i, x in enumerate(v):
            v[i] = _natives(x, convert)
        return v
    if t is dict:
        return _native_map(v, convert)
    if t is Described:
        return Described(_natives(v.descriptor, convert), _natives(v.value, convert))
    if t is Array:
        d = v.descriptor
        if d is not UNDESCRIBED:
            d = _natives(d, convert)
        return Array(d, v.type, *[_natives(x, convert) for x in v.elements])
    return v


def _native_map(v: dict[Any, Any], convert: dict[type, Callable[[Any], Any]]) -> dict[Any, Any]:
    try:
        out = {_natives(k, convert): _natives(x, convert) for k, x in v.items()}
    except TypeError:  # a key that became unhashable: Decimal('sNaN')
        raise ValueError("a map key converted to Decimal is a signalling NaN") from None
    if len(out) != len(v):
        # Decimal('1.0') == Decimal('1.00') == 1: distinct AMQP keys, one Python key.
        raise ValueError(
            "map keys that differ in AMQP are equal once converted (e.g. Decimal('1.0') and "
            "Decimal('1.00')); decode without decimals=True to keep them apart"
        )
    return out


def _py_decode_from(data: Buffer, offset: int = 0) -> tuple[Any, int]:
    """decode_from in pure Python: the reference, and the fallback of the C fast path."""
    d = as_bytes(data)
    try:
        return _decode_at(d, offset)
    except RecursionError:
        raise DecodeError("value is nested too deeply", offset) from None


def _py_decode(data: Buffer) -> Any:
    """decode in pure Python."""
    d = as_bytes(data)
    value, end = _py_decode_from(d)
    if end != len(d):
        raise DecodeError(f"{len(d) - end} trailing bytes after the value", end)
    return value


# ---------------------------------------------------------------------------------------------
# The C fast path


def _load_ccodec() -> Any:
    """``amqscale._ccodec``, handed this module's classes, or None for pure Python: when
    ``AMQSCALE_PURE_PYTHON`` is set (to anything but 0) at import, or when the extension is
    not built or does not fit this interpreter."""
    if os.environ.get("AMQSCALE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        # By name: a static `from . import _ccodec` reads, to the layering check, as an
        # import of the whole package (the extension has no source it can see).
        _ccodec = importlib.import_module("amqscale._ccodec")
        _ccodec.setup(
            {
                "ulong": ulong,
                "uint": uint,
                "ushort": ushort,
                "ubyte": ubyte,
                "byte": byte,
                "short": short,
                "int32": int32,
                "timestamp": timestamp,
                "decimal32": decimal32,
                "decimal64": decimal64,
                "float32": float32,
                "symbol": symbol,
                "char": char,
                "decimal128": decimal128,
                "UUID": UUID,
                "Described": Described,
                "Array": Array,
                "AnnotationDict": AnnotationDict,
                "PropertyDict": PropertyDict,
                "SymbolList": SymbolList,
                "TypeCode": TypeCode,
                "UNDESCRIBED": UNDESCRIBED,
                "uint0": _UINT0,
                "ulong0": _ULONG0,
                "safe_unknown": _SAFE_UNKNOWN,
                "type_codes": _TYPE_CODE,
                "array_constructors": {int(t): c[0] for t, (c, _) in _ARRAY_ELEMENTS.items()},
                "max_zero_width_array": MAX_ZERO_WIDTH_ARRAY,
                "datetime": datetime,
                "Decimal": Decimal,
                "timestamp_of": timestamp_of,
                "decimal32_of": decimal32_of,
                "decimal64_of": decimal64_of,
                "decimal128_of": decimal128_of,
            }
        )
    except Exception:  # ImportError, or a setup() that does not recognise the classes
        return None
    return _ccodec


_ccodec = _load_ccodec()
_c_encode = None if _ccodec is None else _ccodec.encode
_c_decode = None if _ccodec is None else _ccodec.decode
_c_decode_from = None if _ccodec is None else _ccodec.decode_from
_C_NOT_HANDLED = None if _ccodec is None else _ccodec.NOT_HANDLED
