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

from enum import IntEnum
from typing import Any

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
    "decimal64",
    "decimal128",
    "float32",
    "int32",
    "short",
    "symbol",
    "timestamp",
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
