"""AMQP 1.0 types for amqscale users.

The scalar and composite types are proton's own classes, re-exported, so that code written for
python-qpid-proton (AMQ Python) keeps working and values can be passed between proton and
amqscale unchanged: ``symbol("x")`` from one is the same class as from the other.

amqscale adds the body-section wrappers. AMQP 1.0 has three kinds of body section (one or more
``data`` sections, one or more ``amqp-sequence`` sections, or a single ``amqp-value``), and
proton folds them into a single ``body`` plus an ``inferred`` flag, which loses information
(several data sections, a binary amqp-value). amqscale keeps ``Message.body`` lossless with
these rules:

====================================  =============================================
``Message.body``                      encoded as
====================================  =============================================
``None``                              no body section
``bytes`` (or bytearray/memoryview)   one ``data`` section
``DataSections([b1, b2, ...])``       one ``data`` section per item
``AmqpSequence([...])``               one ``amqp-sequence`` section
``SequenceSections([[..], [..]])``    one ``amqp-sequence`` section per item
``AmqpValue(v)``                      one ``amqp-value`` section holding ``v``
anything else                         one ``amqp-value`` section holding the value
====================================  =============================================

Decoding gives back the form that     re-encodes to the same bytes: a single data section gives
``bytes``; several give ``DataSect    ions``; one amqp-sequence gives ``AmqpSequence``; several give
``SequenceSections``; an amqp-valu    e gives the plain value, except that a binary or null value
is wrapped in ``AmqpValue`` (other    wise it would re-encode as a data section, or as no body).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum
from typing import Any, NamedTuple

from proton import (
    UNDESCRIBED,
    AnnotationDict,
    Array,
    Data,
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

__all__ = [
    "UNDESCRIBED",
    "AmqpSequence",
    "AmqpValue",
    "AnnotationDict",
    "Array",
    "DataSections",
    "Described",
    "PropertyDict",
    "SequenceSections",
    "SymbolList",
    "TypeCode",
    "byte",
    "char",
    "decimal32",
    "decimal32_of",
    "decimal64",
    "decimal64_of",
    "decimal128",
    "decimal128_of",
    "float32",
    "int32",
    "short",
    "symbol",
    "timestamp",
    "timestamp_of",
    "to_datetime",
    "to_decimal",
    "ubyte",
    "uint",
    "ulong",
    "ushort",
]


class TypeCode(IntEnum):
    """AMQP type codes for ``Array(descriptor, type, *elements)``.

    The values are proton's ``Data.INT``, ``Data.STRING``, ... so either spelling works and
    arrays compare equal whichever was used; decoded arrays carry the plain int, as proton's.
    """

    NULL = Data.NULL
    BOOL = Data.BOOL
    UBYTE = Data.UBYTE
    BYTE = Data.BYTE
    USHORT = Data.USHORT
    SHORT = Data.SHORT
    UINT = Data.UINT
    INT = Data.INT
    CHAR = Data.CHAR
    ULONG = Data.ULONG
    LONG = Data.LONG
    TIMESTAMP = Data.TIMESTAMP
    FLOAT = Data.FLOAT
    DOUBLE = Data.DOUBLE
    DECIMAL32 = Data.DECIMAL32
    DECIMAL64 = Data.DECIMAL64
    DECIMAL128 = Data.DECIMAL128
    UUID = Data.UUID
    BINARY = Data.BINARY
    STRING = Data.STRING
    SYMBOL = Data.SYMBOL
    DESCRIBED = Data.DESCRIBED
    ARRAY = Data.ARRAY
    LIST = Data.LIST
    MAP = Data.MAP


class AmqpValue:
    """Forces an ``amqp-value`` body section for a value that would otherwise map to another
    section kind: ``AmqpValue(b"...")`` is a binary amqp-value (plain ``bytes`` is a data
    section) and ``AmqpValue(None)`` is a null amqp-value (plain ``None`` is no body).

    Only equal to another ``AmqpValue`` with an equal value, so that ``Message`` equality
    tells a data section from a binary amqp-value.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if type(other) is not AmqpValue:
            return NotImplemented
        return bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AmqpValue({self.value!r})"


class AmqpSequence(list[Any]):
    """A body sent as one ``amqp-sequence`` section (a plain ``list`` body is an amqp-value
    holding a list). It is a ``list``: the items are the sequence's elements."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AmqpSequence({list.__repr__(self)})"


class DataSections(list[Any]):
    """A body of several ``data`` sections, one per item (each ``bytes``). A message with a
    single data section decodes to plain ``bytes`` instead."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"DataSections({list.__repr__(self)})"


class SequenceSections(list[Any]):
    """A body of several ``amqp-sequence`` sections, one per item (each a ``list``). A message
    with a single amqp-sequence section decodes to ``AmqpSequence`` instead."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SequenceSections({list.__repr__(self)})"


# ---------------------------------------------------------------------------------------------
# Python-native values: datetime <-> timestamp, Decimal <-> decimal32/64/128 (docs/types.md)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def timestamp_of(value: datetime, field: str = "") -> timestamp:
    """The AMQP timestamp of an aware ``datetime``: milliseconds since the Unix epoch, the
    sub-millisecond part floored (as Java's ``Instant.toEpochMilli``), so the timestamp
    names the millisecond the instant falls in. A naive datetime raises ``TypeError``: its
    instant is unknown. ``field``, when given, names the value in the error."""
    where = f"{field}: " if field else ""
    if not isinstance(value, datetime):
        raise TypeError(f"{where}expected a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
        raise TypeError(
            f"{where}cannot send the naive datetime {value.isoformat()} as an AMQP "
            "timestamp: attach a tzinfo (e.g. .replace(tzinfo=datetime.timezone.utc))"
        )
    # Exact integer arithmetic: timedelta // timedelta floors. Every datetime fits int64 ms.
    return timestamp((value - _EPOCH) // _MILLISECOND)


def to_datetime(value: int) -> datetime:
    """The UTC-aware ``datetime`` of an AMQP timestamp (milliseconds since the epoch).
    ``ValueError`` when it is outside datetime's years 1 to 9999."""
    try:
        return _EPOCH + timedelta(milliseconds=int(value))
    except OverflowError:
        raise ValueError(
            f"timestamp {int(value)} ms is outside the range of datetime (years 1 to 9999); "
            "decode it without datetimes=True to keep it as a timestamp"
        ) from None


class _Bid(NamedTuple):
    """An IEEE 754-2008 decimal interchange format in its BID (binary integer decimal)
    encoding, the one the AMQP 1.0 type definitions name (see docs/types.md)."""

    name: str
    bits: int  # k: 32, 64, 128
    digits: int  # p: the coefficient's precision in decimal digits
    exponent_bits: int  # w + 2: the biased exponent's width
    bias: int

    @property
    def max_exponent(self) -> int:
        # The biased exponent's two top bits are never 11 (that pattern marks the wide
        # coefficient form and the specials), so it stays below 3 * 2**(w + 2 - 2).
        return 3 * (1 << (self.exponent_bits - 2)) - 1 - self.bias


_DECIMAL32 = _Bid("decimal32", 32, 7, 8, 101)
_DECIMAL64 = _Bid("decimal64", 64, 16, 10, 398)
_DECIMAL128 = _Bid("decimal128", 128, 34, 14, 6176)


def _bid_bits(fmt: _Bid, value: Decimal) -> int:
    """``value`` as ``fmt``'s bit pattern, exactly: its sign, digits and exponent (the
    cohort: 1.0 is not 1.00), or ``ValueError``; never rounded or clamped."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{fmt.name}: expected a decimal.Decimal, not {type(value).__name__}")
    sign, digits, exponent = value.as_tuple()
    k = fmt.bits
    word = sign << (k - 1)
    coefficient = int("".join(map(str, digits))) if digits else 0
    if exponent == "F":
        return word | 0b11110 << (k - 6)
    if exponent in ("n", "N"):
        if coefficient >= 10 ** (fmt.digits - 1):
            raise ValueError(
                f"{value!r} has a NaN payload of {len(digits)} digits; AMQP {fmt.name} "
                f"holds at most {fmt.digits - 1}"
            )
        signalling = 1 if exponent == "N" else 0
        return word | 0b11111 << (k - 6) | signalling << (k - 7) | coefficient
    assert isinstance(exponent, int)
    if coefficient >= 10**fmt.digits:
        raise ValueError(
            f"{value!r} has {len(digits)} significant digits; AMQP {fmt.name} holds at most "
            f"{fmt.digits} (round it first, e.g. with Decimal.quantize)"
        )
    if not -fmt.bias <= exponent <= fmt.max_exponent:
        raise ValueError(
            f"{value!r} has exponent {exponent}; AMQP {fmt.name} takes {-fmt.bias} to "
            f"{fmt.max_exponent}"
        )
    biased = exponent + fmt.bias
    narrow = k - 1 - fmt.exponent_bits  # coefficient bits in the usual form
    if coefficient < 1 << narrow:
        return word | biased << narrow | coefficient
    # A coefficient of narrow + 1 bits starts 100: the form "11 exponent rest" implies it.
    wide = narrow - 2
    return word | 0b11 << (k - 3) | biased << wide | (coefficient & ((1 << wide) - 1))


def _bid_value(fmt: _Bid, word: int) -> Decimal:
    """The Decimal of ``fmt``'s bit pattern ``word``; non-canonical coefficients (above the
    format's precision) read as zero, as IEEE 754-2008 says."""
    k = fmt.bits
    sign = "-" if word >> (k - 1) else ""
    top = (word >> (k - 6)) & 0b11111
    if top == 0b11111:
        # The payload is the trailing significand: the bits after the w + 5 combination bits.
        payload = word & ((1 << (k - 4 - fmt.exponent_bits)) - 1)
        if payload >= 10 ** (fmt.digits - 1):
            payload = 0
        nan = "sNaN" if (word >> (k - 7)) & 1 else "NaN"
        return Decimal(f"{sign}{nan}{payload or ''}")
    if top == 0b11110:
        return Decimal(f"{sign}Infinity")
    narrow = k - 1 - fmt.exponent_bits
    exponent_mask = (1 << fmt.exponent_bits) - 1
    if top >> 3 == 0b11:
        wide = narrow - 2
        biased = (word >> wide) & exponent_mask
        coefficient = 1 << (wide + 2) | (word & ((1 << wide) - 1))
    else:
        biased = (word >> narrow) & exponent_mask
        coefficient = word & ((1 << narrow) - 1)
    if coefficient >= 10**fmt.digits:
        coefficient = 0
    # The string constructor is exact: no context, no rounding.
    return Decimal(f"{sign}{coefficient}E{biased - fmt.bias}")


def decimal32_of(value: Decimal) -> decimal32:
    """``value`` as an AMQP decimal32 (IEEE 754-2008 BID): 7 digits, exponents -101..90.
    Exact or ``ValueError``: never rounded."""
    return decimal32(_bid_bits(_DECIMAL32, value))


def decimal64_of(value: Decimal) -> decimal64:
    """``value`` as an AMQP decimal64 (IEEE 754-2008 BID): 16 digits, exponents
    -398..369. Exact or ``ValueError``: never rounded."""
    return decimal64(_bid_bits(_DECIMAL64, value))


def decimal128_of(value: Decimal) -> decimal128:
    """``value`` as an AMQP decimal128 (IEEE 754-2008 BID, 16 bytes in network order): 34
    digits, exponents -6176..6111. Exact or ``ValueError``: never rounded. A ``Decimal``
    sent as a value is encoded this way."""
    return decimal128(_bid_bits(_DECIMAL128, value).to_bytes(16, "big"))


def to_decimal(value: decimal32 | decimal64 | decimal128) -> Decimal:
    """The ``decimal.Decimal`` of an AMQP decimal32, decimal64 or decimal128 (proton's raw
    classes, as decoded): sign, digits, exponent, infinities and NaNs exactly."""
    if isinstance(value, decimal128):
        if len(value) != 16:
            raise ValueError(f"AMQP decimal128 must be 16 bytes, not {len(value)}")
        return _bid_value(_DECIMAL128, int.from_bytes(value, "big"))
    if isinstance(value, decimal64):
        return _bid_value(_DECIMAL64, _raw_bits(value, 64))
    if isinstance(value, decimal32):
        return _bid_value(_DECIMAL32, _raw_bits(value, 32))
    raise TypeError(
        f"expected a decimal32, decimal64 or decimal128, not {type(value).__name__}"
    )


def _raw_bits(value: int, bits: int) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{value!r} is out of range for AMQP decimal{bits} (0..2**{bits}-1)")
    return int(value)
