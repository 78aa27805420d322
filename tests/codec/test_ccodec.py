"""The C fast path (amqscale/_ccodec.c) against the pure-Python codec, its reference.

Whatever the input, the public functions (which try C first) must give what the Python code
gives: the same bytes, values of the same Python types all the way down, or the same exception
(type, message, DecodeError offset). Valid input of the common types must be handled by C (no
silent fallback), and nothing may leak a reference.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import subprocess
import sys
import tracemalloc
import uuid
from collections import OrderedDict
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import pytest
from codec_helpers import (
    SCALARS,
    _extend,
    alt_encode,
    amqp_values,
    coinciding_fields,
    message_fields,
    messages,
    proton_message,
    scalars,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from amqscale import codec
from amqscale import message as message_module
from amqscale.message import Message
from amqscale.types import (
    UNDESCRIBED,
    AmqpSequence,
    AmqpValue,
    AnnotationDict,
    Array,
    DataSections,
    Described,
    PropertyDict,
    SequenceSections,
    SymbolList,
    TypeCode,
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

cc = codec._ccodec
needs_c = pytest.mark.skipif(cc is None, reason="C fast path disabled or not built")

DIFF = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------------------------
# Comparison


def identical(a: Any, b: Any, path: str = "value") -> None:
    """The same value as the same Python objects: types all the way down (dict keys too),
    floats bit for bit (NaN payloads, -0.0), UUIDs with their is_safe, arrays' type codes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} is not {type(b).__name__}"
    if isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            identical(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), f"{path}: size {len(a)} != {len(b)}"
        for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items(), strict=True)):
            identical(ka, kb, f"{path}<key {i}>")
            identical(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, Described):
        identical(a.descriptor, b.descriptor, f"{path}<descriptor>")
        identical(a.value, b.value, f"{path}<value>")
    elif isinstance(a, Array):
        if a.descriptor is UNDESCRIBED or b.descriptor is UNDESCRIBED:
            assert a.descriptor is b.descriptor, f"{path}: array descriptors differ"
        else:
            identical(a.descriptor, b.descriptor, f"{path}<array descriptor>")
        identical(a.type, b.type, f"{path}<array type>")
        identical(a.elements, b.elements, f"{path}<elements>")
    elif isinstance(a, uuid.UUID):
        assert a.int == b.int and a.is_safe is b.is_safe, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, AmqpValue):
        identical(a.value, b.value, f"{path}<amqp-value>")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def identical_messages(a: Message, b: Message) -> None:
    for name in Message.__slots__:
        identical(getattr(a, name), getattr(b, name), name)


Outcome = tuple[Any, ...]


def outcome(f: Callable[..., Any], *args: Any) -> Outcome:
    """("ok", result) or ("raised", type, message, DecodeError offset/reason, encode path)."""
    try:
        return ("ok", f(*args))
    except Exception as e:
        return (
            "raised",
            type(e),
            str(e),
            getattr(e, "offset", None),
            getattr(e, "reason", None),
            getattr(e, "amqp_path", None),
            getattr(e, "amqp_reason", None),
        )


def assert_same_outcome(fast: Outcome, slow: Outcome) -> None:
    assert fast[0] == slow[0], f"C path: {fast!r}\nPython: {slow!r}"
    if fast[0] == "raised":
        assert fast[1:] == slow[1:]
    elif isinstance(fast[1], Message):
        identical_messages(fast[1], slow[1])
    else:
        identical(fast[1], slow[1])


# ---------------------------------------------------------------------------------------------
# Strategies: odd values (what C must leave to Python) and damaged input


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


class MyUUID(uuid.UUID):
    pass


class Color(IntEnum):
    RED = 1


class Opaque:
    pass


def _raw(cls: type, v: int) -> Any:
    """A proton int class instance without its __init__ check (any value, negatives too)."""
    return int.__new__(cls, v)


def _released() -> memoryview:
    m = memoryview(b"abc")
    m.release()
    return m


_INT_CLASSES = [ulong, uint, ushort, ubyte, byte, short, int32, timestamp, decimal32, decimal64]

odd_scalars = st.one_of(
    st.sampled_from(
        [
            Opaque,
            lambda: {1, 2},
            lambda: 1j,
            lambda: Color.RED,
            lambda: MyStr("x"),
            lambda: MyInt(3),
            lambda: MyUUID(int=5),
            lambda: memoryview(b"abcdef")[::2],  # not contiguous
            lambda: memoryview(b"abcdef").cast("B", (2, 3)),
            lambda: memoryview(struct.pack("3i", 1, 2, 3)).cast("i"),
            _released,
            lambda: bytearray(b"\x00\xff"),
            lambda: memoryview(b"mv"),
            lambda: float32(1e300),
            lambda: float32(float("inf")),
            lambda: char("ab"),
            lambda: char(""),
            lambda: decimal128(b"short"),
            lambda: symbol("caf\u00e9"),
            lambda: "\ud800",
            lambda: "a\udfffb" * 100,
            lambda: symbol("x") * 300,
            lambda: b"x" * 70000,
            lambda: 2**64,
            lambda: -(2**63) - 1,
            lambda: 2**63,
            lambda: OrderedDict(a=1),
            lambda: AnnotationDict({"a": 1}),
            lambda: PropertyDict({"a": 1}),
            lambda: SymbolList(["a", "b"]),
            lambda: MyList([1]),
            lambda: AmqpSequence([1, "x"]),
            lambda: DataSections([b"x"]),
            lambda: AmqpValue(1),
            lambda: Described(ulong(1), Opaque()),
            lambda: Array(UNDESCRIBED, TypeCode.DESCRIBED, 1),
            lambda: Array(UNDESCRIBED, 99, 1),
            lambda: Array(UNDESCRIBED, True, None),  # == TypeCode.NULL as a dict key
            lambda: Array(UNDESCRIBED, 1.0, None),
            lambda: Array(UNDESCRIBED, TypeCode.INT, "x"),
            lambda: Array(UNDESCRIBED, TypeCode.INT, True),
            lambda: Array(UNDESCRIBED, TypeCode.INT, 2**31),
            lambda: Array(UNDESCRIBED, TypeCode.UBYTE, Color.RED),
            lambda: Array(UNDESCRIBED, TypeCode.FLOAT, 1, 2.5, float32(1.5)),
            lambda: Array(UNDESCRIBED, TypeCode.FLOAT, 1e300),
            lambda: Array(UNDESCRIBED, TypeCode.DOUBLE, 2**2000),
            lambda: Array(UNDESCRIBED, TypeCode.DOUBLE, MyInt(2)),
            lambda: Array(UNDESCRIBED, TypeCode.BINARY, memoryview(b"ab"), bytearray(b"c")),
            lambda: Array(UNDESCRIBED, TypeCode.BINARY, decimal128(b"x" * 16)),
            lambda: Array(UNDESCRIBED, TypeCode.STRING, symbol("s"), MyStr("m")),
            lambda: Array(UNDESCRIBED, TypeCode.SYMBOL, "caf\u00e9"),
            lambda: Array(UNDESCRIBED, TypeCode.CHAR, "ab"),
            lambda: Array(UNDESCRIBED, TypeCode.CHAR, "a", symbol("b")),
            lambda: Array(UNDESCRIBED, TypeCode.DECIMAL128, b"x" * 16, b"y"),
            lambda: Array(UNDESCRIBED, TypeCode.UUID, MyUUID(int=1)),
            lambda: Array(UNDESCRIBED, TypeCode.LIST, (1,), [], MyList()),
            lambda: Array(UNDESCRIBED, TypeCode.MAP, {}, OrderedDict()),
            lambda: Array(UNDESCRIBED, TypeCode.ARRAY, Array(UNDESCRIBED, TypeCode.NULL)),
            lambda: Array(UNDESCRIBED, TypeCode.NULL, None, 0),
            lambda: Array(UNDESCRIBED, TypeCode.BOOL, True, 1),
            lambda: Array(symbol("d"), TypeCode.LONG, 1, 2**63),
            lambda: Array(Opaque(), TypeCode.LONG, 1),
        ]
    ).map(lambda make: make()),
    st.integers(-(2**70), 2**70),
    st.builds(_raw, st.sampled_from(_INT_CLASSES), st.integers(-(2**70), 2**70)),
    st.builds(_raw, st.sampled_from(_INT_CLASSES), st.integers(-300, 300)),
    st.floats().map(float32),
    st.text(alphabet=st.characters(categories=["Cs", "Ll"]), max_size=5),
    st.text(max_size=5).map(symbol),
    st.text(max_size=3).map(char),
    st.binary(max_size=20).map(decimal128),
)


def _odd_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        _extend(children, True),
        st.lists(children, max_size=4).map(tuple),
        st.lists(children, max_size=4).map(MyList),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), children, max_size=3).map(
            OrderedDict
        ),
        st.builds(Described, children, children),
        st.builds(
            lambda t, d, elements: Array(d, t, *elements),
            st.sampled_from([int(t) for t in TypeCode]),
            st.one_of(st.just(UNDESCRIBED), children),
            st.lists(children, max_size=3),
        ),
    )


odd_values = st.recursive(st.one_of(scalars, odd_scalars), _odd_containers, max_leaves=8)


@st.composite
def damaged(draw: st.DrawFn, wire: bytes) -> bytes:
    """wire truncated, extended, or with a few bytes changed."""
    b = bytearray(wire)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "append", "set", "flip"]))
        if how == "truncate":
            del b[draw(st.integers(0, len(b))) :]
        elif how == "append":
            b += draw(st.binary(min_size=1, max_size=4))
        elif b:
            i = draw(st.integers(0, len(b) - 1))
            if how == "set":
                b[i] = draw(st.sampled_from([0x00, 0x01, 0x40, 0x45, 0x53, 0xA1, 0xC0, 0xFF]))
            else:
                b[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(b)


def _as(kind: str, b: bytes) -> Any:
    return {"bytes": b, "bytearray": bytearray(b), "memoryview": memoryview(b)}[kind]


buffer_kinds = st.sampled_from(["bytes", "bytearray", "memoryview"])

# ---------------------------------------------------------------------------------------------
# The switch


def _probe(env: dict[str, str]) -> str:
    code = (
        "from amqscale import codec, message; from amqscale.message import Message;"
        "m = Message(body=b'x', id=1, properties={'k': 1});"
        "assert Message.decode(m.encode()) == m;"
        "print(codec._ccodec is not None, message._c_encode_message is not None)"
    )
    full = {k: v for k, v in os.environ.items() if k != "AMQSCALE_PURE_PYTHON"}
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_pure_python_switch_disables_the_c_path() -> None:
    assert _probe({"AMQSCALE_PURE_PYTHON": "1"}) == "False False"


@needs_c
def test_c_path_is_on_by_default_and_with_zero() -> None:
    assert _probe({}) == "True True"
    assert _probe({"AMQSCALE_PURE_PYTHON": "0"}) == "True True"


def test_c_path_is_built_unless_disabled() -> None:
    """A silent fallback to pure Python would pass every other test: say so here."""
    if os.environ.get("AMQSCALE_PURE_PYTHON", "") not in ("", "0"):
        assert cc is None
    else:
        assert cc is not None, "amqscale._ccodec is not built: pip install -e . builds it"
        assert message_module._c_encode_message is not None


# ---------------------------------------------------------------------------------------------
# Values: encoding


@needs_c
@DIFF
@given(amqp_values)
def test_encode_valid_values_in_c_byte_for_byte(value: Any) -> None:
    expected = codec._py_encode(value)
    assert cc.encode(value) == expected  # handled: not None
    assert codec.encode(value) == expected
    buf = bytearray(b"head")
    codec.encode_into(buf, value)
    assert buf == b"head" + expected


@DIFF
@given(odd_values)
def test_encode_odd_values_as_python_does(value: Any) -> None:
    assert_same_outcome(outcome(codec.encode, value), outcome(codec._py_encode, value))
    if cc is not None:
        fast = cc.encode(value)
        if fast is not None:
            assert fast == codec._py_encode(value)


@needs_c
@pytest.mark.parametrize("depth", [1, 50, 98, 99, 100, 101, 150, 5000])
@pytest.mark.parametrize("kind", ["list", "map", "described", "array"])
def test_nesting_depth_either_side_of_the_c_limit(depth: int, kind: str) -> None:
    value: Any = 1
    for _ in range(depth):
        if kind == "list":
            value = [value]
        elif kind == "map":
            value = {"k": value}
        elif kind == "described":
            value = Described(ulong(1), value)
        else:
            value = Array(UNDESCRIBED, TypeCode.LIST, [value])
    assert_same_outcome(outcome(codec.encode, value), outcome(codec._py_encode, value))
    wire = outcome(codec._py_encode, value)
    if wire[0] == "ok":
        assert_same_outcome(outcome(codec.decode, wire[1]), outcome(codec._py_decode, wire[1]))


def test_self_referential_values_raise_as_in_python() -> None:
    a: list[Any] = []
    a.append(a)
    d: dict[str, Any] = {}
    d["d"] = d
    for v in (a, d):
        assert_same_outcome(outcome(codec.encode, v), outcome(codec._py_encode, v))


# ---------------------------------------------------------------------------------------------
# Values: decoding


@needs_c
@DIFF
@given(amqp_values, buffer_kinds)
def test_decode_valid_values_in_c_type_for_type(value: Any, kind: str) -> None:
    wire = codec._py_encode(value)
    expected = codec._py_decode(wire)
    fast = cc.decode(_as(kind, wire))
    assert fast is not cc.NOT_HANDLED
    identical(fast, expected)
    identical(codec.decode(_as(kind, wire)), expected)
    identical(codec.decode_from(_as(kind, b"xy" + wire), 2), (expected, 2 + len(wire)))


@needs_c
@DIFF
@given(st.data())
def test_decode_every_valid_encoding_in_c(data: st.DataObject) -> None:
    """Peers pick other encodings (list8, str32, uint0, array8, ...): C reads them all."""
    wire = alt_encode(data.draw(amqp_values), data.draw)
    fast = cc.decode(wire)
    assert fast is not cc.NOT_HANDLED
    identical(fast, codec._py_decode(wire))


@DIFF
@given(st.data())
def test_decode_damaged_input_as_python_does(data: st.DataObject) -> None:
    wire = data.draw(damaged(codec._py_encode(data.draw(amqp_values))))
    kind = data.draw(buffer_kinds)
    assert_same_outcome(outcome(codec.decode, _as(kind, wire)), outcome(codec._py_decode, wire))
    offset = data.draw(st.integers(-2, len(wire) + 1))
    assert_same_outcome(
        outcome(codec.decode_from, _as(kind, wire), offset),
        outcome(codec._py_decode_from, wire, offset),
    )


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=48))
@example(b"\xe0\x02\x0a\x40")
@example(b"\xf0\x00\x00\x00\x05\xff\xff\xff\xff\x40")
@example(b"\xf0\x00\x00\x00\x05\x00\x10\x00\x01\x40")  # 2**20 + 1 zero-width elements
@example(b"\xf0\x00\x00\x00\x05\x00\x10\x00\x00\x41")  # exactly 2**20
@example(b"\xc1\x05\x02\x45\x45\x40")
@example(b"\xc1\x05\x04\x40\x40\x40\x40")
@example(b"\xc1\x05\x04\x41\x40\x55\x01")  # True and 1 are the same key
@example(b"\xc1\x07\x04\x00\x53\x01\x40\x40\x40")  # a described (unhashable) key
@example(b"\x73\x00\x00\xd8\x00")  # char: a lone surrogate (chr() allows it)
@example(b"\x73\x00\x11\x00\x00")  # char beyond U+10FFFF
@example(b"\xa1\x02\xc3\x28")  # invalid UTF-8
@example(b"\xa1\x03\xed\xa0\x80")  # UTF-8 of a surrogate
@example(b"\xa3\x01\x80")  # symbol, not ASCII
@example(b"\xb0\xff\xff\xff\xff")
@example(b"\xd0\xff\xff\xff\xff\x00\x00\x00\x01")
@example(b"\x56\x02")
@example(b"\xe0\x03\x01\x00\x53\x01\x00")  # described array, no constructor
@example(b"\xe0\x04\x01\x00\x40\x00\x40")  # 0x00 as the element constructor
@example(b"\xc0\x00\x00")
@example(b"\xe0\x01\x00")
def test_decode_arbitrary_bytes_as_python_does(wire: bytes) -> None:
    assert_same_outcome(outcome(codec.decode, wire), outcome(codec._py_decode, wire))
    for offset in (0, 1, len(wire)):
        assert_same_outcome(
            outcome(codec.decode_from, wire, offset), outcome(codec._py_decode_from, wire, offset)
        )


def test_decode_from_odd_arguments_as_python_does() -> None:
    wire = codec.encode(["a", 1])
    for offset in (True, -1, -len(wire), 2**70, 1.0, None):
        assert_same_outcome(
            outcome(codec.decode_from, wire, offset), outcome(codec._py_decode_from, wire, offset)
        )
    for data in ("text", None, 5, array_of_ints(), memoryview(wire)[::2]):
        assert_same_outcome(outcome(codec.decode, data), outcome(codec._py_decode, data))


def array_of_ints() -> Any:
    import array

    return array.array("B", codec.encode([1, "x"]))


@needs_c
def test_map_keys_are_equal_whether_cached_or_not() -> None:
    keys = ["k", "", "x" * 48, "y" * 49, "caf\u00e9", "\u20ac" * 20]
    keys += [f"key{i}" for i in range(2000)]
    wire = codec.encode({k: i for i, k in enumerate(keys)})
    for _ in range(3):  # the second and third decodes hit the cache
        identical(codec.decode(wire), codec._py_decode(wire))
    # keys of the same length and hash bucket, decoded alternately, never mix
    for i in range(200):
        k = f"{i:08d}"
        identical(codec.decode(codec.encode({k: 1})), {k: 1})


# ---------------------------------------------------------------------------------------------
# Messages: encoding


@needs_c
@DIFF
@given(messages)
def test_encode_valid_messages_in_c_byte_for_byte(m: Message) -> None:
    expected = m._encode_python()
    assert cc.encode_message(m) == expected  # handled: not None
    assert m.encode() == expected


REFERENCE = [
    Message(
        body=bytes(range(100)),
        id=mid,
        properties={"sequence": 42, "source": "sensor-7", "urgent": True},
    )
    for mid in (uuid.UUID("6f1c1b8e-3c0e-4d8a-9a55-0d7c9b1e2f3a"), "msg-000000042")
]


@needs_c
@pytest.mark.parametrize("m", REFERENCE, ids=["uuid", "str"])
def test_the_reference_message_takes_the_c_path(m: Message) -> None:
    wire = m._encode_python()
    assert cc.encode_message(m) == wire
    decoded = cc.decode_message(Message, wire)
    assert decoded is not None
    identical_messages(decoded, Message._decode_python(wire))


# Field values the C path must leave to Python (and a few it takes), set on the slots.
ODD_FIELDS: dict[str, list[Callable[[], Any]]] = {
    "durable": [lambda: 0, lambda: 1, lambda: None, lambda: "yes", lambda: True],
    "priority": [
        lambda: 4.0,
        lambda: -1,
        lambda: 256,
        lambda: True,
        lambda: "4",
        lambda: 2**70,
        lambda: MyInt(4),
        lambda: 0,
        lambda: 255,
    ],
    "_ttl": [lambda: -1, lambda: 2**32, lambda: 1.5, lambda: "x", lambda: True, lambda: 0],
    "first_acquirer": [lambda: 0, lambda: None, lambda: True],
    "delivery_count": [lambda: -1, lambda: 2**32, lambda: 2.0, lambda: MyInt(1), lambda: 7],
    "id": [
        lambda: True,
        lambda: -1,
        lambda: 2**64,
        lambda: 1.5,
        lambda: MyStr("x"),
        lambda: symbol("s"),
        lambda: char("c"),
        lambda: memoryview(b"ab"),
        lambda: memoryview(b"abcd")[::2],
        lambda: bytearray(b"ab"),
        lambda: decimal128(bytes(16)),
        lambda: Color.RED,
        lambda: ulong(5),
        lambda: uint(7),
        lambda: "\ud800",
        lambda: "x" * 100,
        lambda: "\u20ac" * 63,
        lambda: "\u20ac" * 64,
        lambda: MyUUID(int=3),
        lambda: 0,
        lambda: 2**64 - 1,
    ],
    "user_id": [
        lambda: "str",
        lambda: memoryview(b"u"),
        lambda: bytearray(b"u"),
        lambda: 5,
        lambda: b"u" * 300,
    ],
    "address": [
        lambda: symbol("a"),
        lambda: char("c"),
        lambda: MyStr("m"),
        lambda: 5,
        lambda: "\udc00",
        lambda: "x" * 300,
        lambda: "",
    ],
    "correlation_id": [lambda: 2**64, lambda: b"", lambda: uuid.UUID(int=7), lambda: [1]],
    "content_type": [
        lambda: "caf\u00e9",
        lambda: symbol("a"),
        lambda: 5,
        lambda: "x" * 300,
        lambda: MyStr("t"),
    ],
    "_expiry_time": [
        lambda: 2**63,
        lambda: 1.5,
        lambda: "x",
        lambda: True,
        lambda: int32(5),
        lambda: -(2**63),
    ],
    "group_sequence": [
        lambda: -1,
        lambda: 2**32,
        lambda: True,
        lambda: ulong(3),
        lambda: 1.5,
        lambda: 0,
    ],
    "reply_to_group_id": [lambda: b"bytes", lambda: "r"],
    "instructions": [
        lambda: {},
        lambda: [],
        lambda: 0,
        lambda: "s",
        lambda: {5: 1},
        lambda: {"caf\u00e9": 1},
        lambda: {char("c"): 1},
        lambda: {MyStr("m"): 1},
        lambda: {_raw(ulong, 2**64): 1},
        lambda: AnnotationDict({"a": 1}),
        lambda: OrderedDict(a=1),
        lambda: {"a": Opaque()},
        lambda: {ulong(1): [1, {"x": None}]},
    ],
    "annotations": [lambda: {symbol("x-opt"): "v"}, lambda: {"x" * 300: 1}, lambda: ()],
    "properties": [
        lambda: {},
        lambda: [],
        lambda: {"k": [1]},
        lambda: {"k": (1,)},
        lambda: {"k": {}},
        lambda: {"k": Array(UNDESCRIBED, TypeCode.INT)},
        lambda: {"k": AmqpSequence()},
        lambda: {symbol("s"): 1},
        lambda: {char("c"): 1},
        lambda: {MyStr("m"): 1},
        lambda: {5: 1},
        lambda: {"k": Opaque()},
        lambda: {"\ud800": 1},
        lambda: {"k": "\ud800"},
        lambda: OrderedDict(k=1),
        lambda: PropertyDict({"k": 1}),
        lambda: {"k": 2**63},
        lambda: {"k": -129},
        lambda: {"k": 127},
        lambda: {"k": None},
        lambda: {"k": Described(ulong(1), 2)},
        lambda: {"k": symbol("v")},
    ],
    "body": [
        lambda: {1, 2},
        lambda: memoryview(b"abcd")[::2],
        lambda: memoryview(b"abcd"),
        lambda: DataSections([b"a", "str"]),
        lambda: DataSections([]),
        lambda: DataSections([decimal128(bytes(16))]),
        lambda: DataSections([bytearray(b"x")]),
        lambda: SequenceSections([[1], (2,)]),
        lambda: SequenceSections([AmqpSequence([1])]),
        lambda: SequenceSections([5]),
        lambda: SequenceSections([]),
        lambda: AmqpSequence([]),
        lambda: AmqpValue(Opaque()),
        lambda: AmqpValue(b"x"),
        lambda: AmqpValue(None),
        lambda: Opaque(),
        lambda: bytearray(b""),
        lambda: Color.RED,
        lambda: MyList([1]),
        lambda: b"x" * 300,
        lambda: "text",
        lambda: [1, 2],
        lambda: (1,),
    ],
    "footer": [lambda: {"f": 1}, lambda: None, lambda: {"f": Opaque()}],
}


@DIFF
@given(message_fields(), st.data())
def test_encode_odd_messages_as_python_does(fields: dict[str, Any], data: st.DataObject) -> None:
    m = Message(**fields)
    for name in data.draw(st.sets(st.sampled_from(sorted(ODD_FIELDS)), min_size=1, max_size=3)):
        setattr(m, name, data.draw(st.sampled_from(ODD_FIELDS[name]))())
    assert_same_outcome(outcome(m.encode), outcome(m._encode_python))
    if cc is not None:
        fast = cc.encode_message(m)
        if fast is not None:
            assert fast == m._encode_python()


def _full_message() -> Message:
    return Message(
        body=AmqpSequence([1, "a"]),
        durable=True,
        priority=7,
        ttl=1.5,
        first_acquirer=True,
        delivery_count=3,
        instructions={"i": 1},
        annotations={ulong(1): "a"},
        id=ulong(9),
        user_id=b"u",
        address="a",
        subject="s",
        reply_to="r",
        correlation_id=b"c",
        content_type=symbol("t"),
        content_encoding="e",
        expiry_time=1.5,
        creation_time=2.5,
        group_id="g",
        group_sequence=4,
        reply_to_group_id="rg",
        properties={"k": 1},
        footer={"f": None},
    )


@pytest.mark.parametrize(
    ("name", "make"),
    [(name, make) for name, makers in ODD_FIELDS.items() for make in makers],
    ids=[f"{name}-{i}" for name, makers in ODD_FIELDS.items() for i in range(len(makers))],
)
@pytest.mark.parametrize("base", ["empty", "reference", "full"])
def test_encode_each_odd_field_as_python_does(
    name: str, make: Callable[[], Any], base: str
) -> None:
    m = {"empty": Message, "reference": lambda: REFERENCE[0], "full": _full_message}[base]()
    if base == "reference":
        m = Message(body=m.body, id=m.id, properties=dict(m.properties or {}))
    setattr(m, name, make())
    assert_same_outcome(outcome(m.encode), outcome(m._encode_python))


class MyMessage(Message):
    __slots__ = ()


def test_subclasses_and_unset_fields_take_the_python_path() -> None:
    m = MyMessage(body=b"x", id="i")
    assert m.encode() == m._encode_python()
    back = MyMessage.decode(m.encode())
    assert type(back) is MyMessage
    identical_messages(back, MyMessage._decode_python(m.encode()))
    if cc is not None:
        assert cc.encode_message(m) is None
        assert cc.decode_message(MyMessage, m.encode()) is None
    bare = Message.__new__(Message)
    assert_same_outcome(outcome(bare.encode), outcome(bare._encode_python))


# ---------------------------------------------------------------------------------------------
# Messages: decoding


@needs_c
@DIFF
@given(messages, buffer_kinds)
def test_decode_valid_messages_in_c_type_for_type(m: Message, kind: str) -> None:
    wire = m._encode_python()
    fast = cc.decode_message(Message, _as(kind, wire))
    assert fast is not None
    identical_messages(fast, Message._decode_python(wire))
    identical_messages(Message.decode(_as(kind, wire)), Message._decode_python(wire))


@needs_c
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(coinciding_fields())
def test_decode_protons_encoding_in_c(fields: dict[str, Any]) -> None:
    """proton always writes a header and a properties section, with its own choices."""
    wire = bytes(proton_message(fields).encode())
    fast = cc.decode_message(Message, wire)
    assert fast is not None
    identical_messages(fast, Message._decode_python(wire))


def _sections(wire: bytes) -> list[Described]:
    out, p = [], 0
    while p < len(wire):
        v, p = codec._py_decode_from(wire, p)
        out.append(v)
    return out


_SECTION_SYMBOLS = {
    0x70: "amqp:header:list",
    0x71: "amqp:delivery-annotations:map",
    0x72: "amqp:message-annotations:map",
    0x73: "amqp:properties:list",
    0x74: "amqp:application-properties:map",
    0x75: "amqp:data:binary",
    0x76: "amqp:amqp-sequence:list",
    0x77: "amqp:amqp-value:*",
    0x78: "amqp:footer:map",
}


@DIFF
@given(messages, st.data())
def test_decode_other_encodings_of_messages_as_python_does(m: Message, data: st.DataObject) -> None:
    """Sections re-encoded as another peer might (list32 headers, str32, symbolic or wide
    descriptors, ...): C reads what it knows and leaves the rest to Python."""
    parts = []
    for section in _sections(m._encode_python()):
        d = section.descriptor
        how = data.draw(st.sampled_from(["alt", "alt", "symbol", "ulong64"]))
        if how == "symbol":
            d = symbol(_SECTION_SYMBOLS[int(d)])
        elif how == "ulong64":
            d = None  # 0x80 form
        v = alt_encode(section.value, data.draw)
        if d is None:
            parts.append(b"\x00\x80" + struct.pack(">Q", int(section.descriptor)) + v)
        else:
            parts.append(b"\x00" + alt_encode(d, data.draw) + v)
    wire = b"".join(parts)
    assert_same_outcome(outcome(Message.decode, wire), outcome(Message._decode_python, wire))


@DIFF
@given(messages, st.data())
def test_decode_damaged_messages_as_python_does(m: Message, data: st.DataObject) -> None:
    wire = data.draw(damaged(m._encode_python()))
    kind = data.draw(buffer_kinds)
    assert_same_outcome(
        outcome(Message.decode, _as(kind, wire)), outcome(Message._decode_python, wire)
    )


# Field values of the header and properties lists: each field of its own type, or None, or
# (less often) of another type.
_WRONG_FIELDS = [
    True,
    False,
    ubyte(4),
    uint(7),
    ulong(1),
    int32(2),
    5,
    1.5,
    "s",
    symbol("y"),
    b"b",
    uuid.UUID(int=1),
    timestamp(12),
    char("c"),
    decimal32(3),
    [],
    {},
    None,
]
_wrong_field = st.sampled_from(_WRONG_FIELDS)
_ids = st.sampled_from(["i", ulong(3), uuid.UUID(int=2), b"id"])
_HEADER_FIELDS = [
    st.booleans(),
    st.sampled_from([ubyte(0), ubyte(4), ubyte(9)]),
    st.sampled_from([uint(0), uint(1000)]),
    st.booleans(),
    st.sampled_from([uint(0), uint(3)]),
]
_PROPERTY_FIELDS = [
    _ids,
    st.just(b"u"),
    st.just("a"),
    st.just("s"),
    st.just("r"),
    _ids,
    st.just(symbol("t")),
    st.just(symbol("e")),
    st.just(timestamp(-5)),
    st.just(timestamp(7)),
    st.just("g"),
    st.just(uint(4)),
    st.just("rg"),
]


@st.composite
def _field_list(draw: st.DrawFn, fields: list[st.SearchStrategy[Any]]) -> list[Any]:
    n = draw(st.integers(0, len(fields) + 1))
    out = []
    for i in range(n):
        right = fields[i] if i < len(fields) else _wrong_field
        out.append(draw(st.one_of(st.none(), right, right, right, _wrong_field)))
    return out


def _section_value(code: int) -> st.SearchStrategy[Any]:
    if code == 0x70:
        return _field_list(_HEADER_FIELDS)
    if code == 0x73:
        return _field_list(_PROPERTY_FIELDS)
    if code in (0x71, 0x72, 0x74, 0x78):
        return st.dictionaries(
            st.one_of(SCALARS[TypeCode.SYMBOL], SCALARS[TypeCode.STRING], st.just(ulong(3))),
            scalars,
            max_size=3,
        )
    if code == 0x75:
        return st.binary(max_size=8)
    if code == 0x76:
        return st.lists(scalars, max_size=3)
    return scalars


@st.composite
def section_sequences(draw: st.DrawFn) -> list[tuple[int, Any]]:
    """Mostly in the specification's order (so that the checks past the order run)."""
    if draw(st.integers(0, 3)):
        codes = sorted(draw(st.lists(st.integers(0x70, 0x78), unique=True, max_size=5)))
        codes += [c for c in codes if c in (0x75, 0x76) and draw(st.booleans())]
        codes.sort()
    else:
        codes = draw(st.lists(st.integers(0x6E, 0x79), max_size=6))
    out = []
    for code in codes:
        typed = draw(st.integers(0, 5)) > 0  # mostly the section's own kind of value
        out.append((code, draw(_section_value(code) if typed else scalars)))
    return out


@DIFF
@given(section_sequences(), st.data())
def test_decode_arbitrary_section_sequences_as_python_does(
    sections: list[tuple[int, Any]], data: st.DataObject
) -> None:
    """Sections in any order, repeated, holding any type: each rule gives Python's error."""
    wire = b"".join(b"\x00\x53" + bytes((code,)) + alt_encode(v, data.draw) for code, v in sections)
    assert_same_outcome(outcome(Message.decode, wire), outcome(Message._decode_python, wire))


# One well-typed example of each section, by code (0x6F and 0x79: unknown sections).
_SECTION_EXAMPLES = {
    0x6F: [],
    0x70: [True, ubyte(5)],
    0x71: {symbol("d"): 1},
    0x72: {ulong(7): "m"},
    0x73: ["id", None, "to"],
    0x74: {"k": 1},
    0x75: b"data",
    0x76: [1, "s"],
    0x77: "value",
    0x78: {symbol("f"): None},
    0x79: None,
}


def test_decode_every_short_sequence_of_sections_as_python_does() -> None:
    """Order, repeats and mixed body kinds: every sequence of up to three sections."""
    import itertools

    codes = sorted(_SECTION_EXAMPLES)
    for n in range(1, 4):
        for seq in itertools.product(codes, repeat=n):
            wire = b"".join(
                b"\x00\x53" + bytes((c,)) + codec._py_encode(_SECTION_EXAMPLES[c]) for c in seq
            )
            assert_same_outcome(
                outcome(Message.decode, wire), outcome(Message._decode_python, wire)
            )


@pytest.mark.parametrize("code", [0x70, 0x73])
def test_decode_each_field_type_of_header_and_properties_as_python_does(code: int) -> None:
    """Each field of the header and properties lists, of every type, alone and with its
    list padded to its full length, in list8 and list32."""
    n = 5 if code == 0x70 else 13
    for i in range(n + 1):
        for v in _WRONG_FIELDS:
            for fields in ([None] * i + [v], [None] * i + [v] + [None] * (n - 1 - i)):
                body = b"".join(codec._py_encode(f) for f in fields)
                for lst in (
                    bytes((0xC0, len(body) + 1, len(fields))) + body,
                    b"\xd0" + struct.pack(">II", len(body) + 4, len(fields)) + body,
                ):
                    wire = b"\x00\x53" + bytes((code,)) + lst + b"\x00\x53\x75\xa0\x01x"
                    assert_same_outcome(
                        outcome(Message.decode, wire), outcome(Message._decode_python, wire)
                    )


def test_decode_declared_sizes_off_by_a_few_as_python_does() -> None:
    """The size of a list or map that is not where its elements end: always an error."""
    for section in (b"\x00\x53\x73", b"\x00\x53\x70", b"\x00\x53\x74"):
        for content in ([b"\xa1\x02id"], [b"\x98" + bytes(16)], [b"\x40", b"\x41"], []):
            body = b"".join(content)
            for delta in range(-3, 4):
                for tail in (b"", b"\x40\x40\x40", b"\x00\x53\x75\xa0\x00"):
                    size = len(body) + 1 + delta
                    if not 0 <= size < 256:
                        continue
                    code = 0xC1 if section == b"\x00\x53\x74" else 0xC0  # map or list8
                    wire = section + bytes((code, size, len(content))) + body + tail
                    assert_same_outcome(
                        outcome(Message.decode, wire), outcome(Message._decode_python, wire)
                    )


@needs_c
def test_list8_list32_boundary_of_header_and_properties() -> None:
    """proton's list8 when the list fits (size <= 255), list32 from there on."""
    cases = [Message(id="x" * n) for n in range(245, 262)]
    cases += [Message(id="\u20ac" * n) for n in range(60, 90)]
    cases += [Message(id="i", subject="s" * n, group_sequence=1) for n in range(230, 262)]
    cases += [Message(user_id=b"u" * n, reply_to_group_id="r") for n in range(225, 262)]
    for m in cases:
        wire = m._encode_python()
        assert cc.encode_message(m) == wire
        fast = cc.decode_message(Message, wire)
        assert fast is not None
        identical_messages(fast, Message._decode_python(wire))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
@example(b"\x00\x53\x73\xc0\x12\x01\x98" + bytes(15))  # truncated uuid message-id
@example(b"\x00\x53\x73\xc0\x05\x01\xa1\x03ab")  # truncated str8 message-id
@example(b"\x00\x53\x73\xc0\x04\x01\xa1\x02\xc3\x28")  # invalid UTF-8 message-id
@example(b"\x00\x53\x73\xc0\x02\x01\x40")  # null message-id
@example(b"\x00\x53\x73\xc0\x02\x01\x43")  # a uint message-id
@example(b"\x00\x53\x70\x45\x00\x53\x70\x45")  # two headers
@example(b"\x00\x53\x75\xa0\x00\x00\x53\x75\xa0\x01x")  # two data sections
@example(b"\x00\x53\x77\x40\x00\x53\x75\xa0\x00")  # data after a value
@example(b"\x00\x53\x74\xd1\x00\x00\x00\x03\x00\x00\x00\x00")  # map32 size too small
@example(b"\x00\x53\x74\xd1\x00\x00")
@example(b"\x00\x53")
@example(b"\x00")
def test_decode_arbitrary_bytes_as_messages_as_python_does(wire: bytes) -> None:
    assert_same_outcome(outcome(Message.decode, wire), outcome(Message._decode_python, wire))


# ---------------------------------------------------------------------------------------------
# References and memory


def _workload() -> Callable[[], None]:
    """Every C path once per call: handled values and messages, and fallbacks and errors."""
    values = [
        {"sequence": 42, "source": "sensor-7", "urgent": True, "u": uuid.UUID(int=5)},
        [
            None,
            True,
            False,
            ulong(2**64 - 1),
            uint(0),
            ushort(5),
            ubyte(6),
            byte(-1),
            short(-2),
            int32(-70000),
            2**62,
            -5,
            1.5,
            float32(2.5),
            timestamp(-1),
            decimal32(1),
            decimal64(2),
            decimal128(bytes(16)),
            char("\u20ac"),
            symbol("s"),
            "x" * 300,
            b"y" * 300,
            bytearray(b"z"),
            memoryview(b"w"),
        ],
        Described(symbol("d"), Array(UNDESCRIBED, TypeCode.STRING, "a", "b")),
        Array(ulong(1), TypeCode.MAP, {"k": [1]}),
        Array(UNDESCRIBED, TypeCode.BINARY, b"a", memoryview(b"b")),
        (1, (2, {3: 4})),
    ]
    bad_values = [
        Opaque(),
        [1, Opaque()],
        {"k": "\ud800"},
        Array(UNDESCRIBED, 99),
        2**64,
        {symbol("caf\u00e9"): 1},
    ]
    wires = [codec._py_encode(v) for v in values]
    bad_wires = [w[:-1] for w in wires] + [
        b"\xc1\x05\x04\x40\x40\x40\x40",
        b"\xa1\x02\xc3\x28",
        b"\xc1\x05\x02\x45\x45\x40",
    ]
    msgs = [
        *REFERENCE,
        _full_message(),
        Message(body=DataSections([b"a", b"b"])),
        Message(body=SequenceSections([[1], [2]])),
        Message(body=AmqpValue(b"v")),
        Message(body=AmqpValue(None)),
        Message(body={"map": "body"}),
    ]
    bad_msgs = [
        Message(body=Opaque()),
        Message(properties={"k": [1]}),
        Message(id=2**64),
        Message(body=b"x", footer={5: 1}),
    ]
    msg_wires = [m._encode_python() for m in msgs]
    bad_msg_wires = [w[:-1] for w in msg_wires] + [b"\x00\x53\x70\x45\x00\x53\x70\x45"]

    def run() -> None:
        for v in values:
            codec.encode(v)
        for v in bad_values:
            with contextlib.suppress(TypeError, ValueError):
                codec.encode(v)
        for w in wires:
            codec.decode(w)
            codec.decode(memoryview(w))
            codec.decode_from(w, 0)
        for w in bad_wires:
            with contextlib.suppress(ValueError):
                codec.decode(w)
        for m in msgs:
            m.encode()
        for m in bad_msgs:
            with contextlib.suppress(TypeError, ValueError):
                m.encode()
        for w in msg_wires:
            Message.decode(w)
            Message.decode(bytearray(w))
        for w in bad_msg_wires:
            with contextlib.suppress(ValueError):
                Message.decode(w)

    return run


# Objects whose reference count a leak in the C code would move: the classes (every instance
# holds one), the singletons, and the inputs.
_WATCHED = [
    None,
    True,
    False,
    (),
    ulong,
    uint,
    ushort,
    ubyte,
    byte,
    short,
    int32,
    timestamp,
    decimal32,
    decimal64,
    decimal128,
    float32,
    char,
    symbol,
    uuid.UUID,
    Described,
    Array,
    UNDESCRIBED,
    Message,
    AmqpValue,
    AmqpSequence,
    DataSections,
    SequenceSections,
    codec._UINT0,
    codec._ULONG0,
    codec._SAFE_UNKNOWN,
]


@needs_c
def test_no_reference_or_memory_leaks() -> None:
    run = _workload()
    for _ in range(200):  # warm up: caches, interned strings, free lists
        run()
    gc.collect()
    before = [sys.getrefcount(o) for o in _WATCHED]
    tracemalloc.start()
    try:
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    after = [sys.getrefcount(o) for o in _WATCHED]
    moved = {repr(o): b - a for o, a, b in zip(_WATCHED, before, after, strict=True) if a != b}
    assert not moved, f"reference counts moved: {moved}"
    assert grown < 64 * 1024, f"{grown} bytes more after 2000 rounds"
