"""The AMQP value codec: round trips, agreement with proton's Data, errors."""

from __future__ import annotations

import struct
import uuid
from collections import OrderedDict
from enum import IntEnum
from typing import Any

import pytest
from codec_helpers import (
    SCALARS,
    alt_encode,
    amqp_values,
    proton_decode,
    proton_encode,
    proton_values,
    same,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proton import Data

from amqscale import codec
from amqscale.codec import DecodeError
from amqscale.types import (
    UNDESCRIBED,
    AnnotationDict,
    Array,
    Described,
    PropertyDict,
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

SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Round trips


@SLOW
@given(amqp_values)
def test_round_trip_is_identity(value: Any) -> None:
    """decode(encode(v)) is v, value and Python type, all the way down."""
    same(value, codec.decode(codec.encode(value)))


@SLOW
@given(amqp_values)
def test_decoded_value_re_encodes_to_the_same_bytes(value: Any) -> None:
    data = codec.encode(value)
    assert codec.encode(codec.decode(data)) == data


@SLOW
@given(amqp_values)
def test_same_bytes_as_proton(value: Any) -> None:
    """amqscale picks proton's encodings (compact scalars, list0, 32-bit composites, wide
    array elements), so the bytes are identical for every value."""
    assert codec.encode(value) == proton_encode(value)


@SLOW
@given(proton_values)
def test_proton_decodes_amqscale_encoding(value: Any) -> None:
    same(value, proton_decode(codec.encode(value)))


@SLOW
@given(amqp_values)
def test_amqscale_decodes_proton_encoding(value: Any) -> None:
    same(value, codec.decode(proton_encode(value)))


@SLOW
@given(st.data())
def test_decodes_every_valid_encoding(data: st.DataObject) -> None:
    """Other peers pick other encodings (list8, map8, array8, str32 for short strings, wide
    uints, boolean 0x56, ...): the decoder reads them all, to the same value proton reads."""
    value = data.draw(proton_values)
    wire = alt_encode(value, data.draw)
    same(value, codec.decode(wire))
    same(value, proton_decode(wire))


def test_encode_into_appends() -> None:
    buf = bytearray(b"xy")
    codec.encode_into(buf, 1)
    codec.encode_into(buf, "a")
    assert bytes(buf) == b"xy\x55\x01\xa1\x01a"


def test_decode_from_walks_concatenated_values() -> None:
    wire = codec.encode([1]) + codec.encode("a") + codec.encode(None)
    out = []
    p = 0
    while p < len(wire):
        v, p = codec.decode_from(wire, p)
        out.append(v)
    assert out == [[1], "a", None]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_buffers_and_returns_bytes(kind: type) -> None:
    wire = kind(codec.encode([b"ab", b"x" * 300]))
    value = codec.decode(wire)
    assert value == [b"ab", b"x" * 300]
    assert all(type(b) is bytes for b in value)


# ---------------------------------------------------------------------------------------------
# The Python <-> AMQP mapping, pinned


@pytest.mark.parametrize(
    "value, wire",
    [
        (None, "40"),
        (True, "41"),
        (False, "42"),
        (ubyte(7), "5007"),
        (ushort(258), "600102"),
        (uint(0), "43"),
        (uint(255), "52ff"),
        (uint(256), "7000000100"),
        (ulong(0), "44"),
        (ulong(255), "53ff"),
        (ulong(2**64 - 1), "80ffffffffffffffff"),
        (byte(-1), "51ff"),
        (short(-2), "61fffe"),
        (int32(-128), "5480"),
        (int32(128), "7100000080"),
        (5, "5505"),
        (-129, "81ffffffffffffff7f"),
        (1.5, "823ff8000000000000"),
        (float32(1.5), "723fc00000"),
        (decimal32(1), "7400000001"),
        (decimal64(2), "840000000000000002"),
        (decimal128(bytes(range(16))), "94000102030405060708090a0b0c0d0e0f"),
        (char("\U0001f600"), "730001f600"),
        (timestamp(-1), "83ffffffffffffffff"),
        (uuid.UUID(int=1), "9800000000000000000000000000000001"),
        (b"ab", "a0026162"),
        ("\u00e9", "a102c3a9"),
        (symbol("s"), "a30173"),
        ([], "45"),
        ([None], "d0000000050000000140"),
        ({}, "d10000000400000000"),
        ({"a": 1}, "d10000000900000002a101615501"),
        (Described(ulong(0x70), True), "00537041"),
        (Array(UNDESCRIBED, TypeCode.INT, int32(1)), "f000000009000000017100000001"),
        (Array(symbol("d"), TypeCode.NULL), "f0000000090000000000a3016440"),
        (Array(UNDESCRIBED, TypeCode.LIST, []), "f00000000d00000001d00000000400000000"),
    ],
)
def test_encoding_pinned(value: Any, wire: str) -> None:
    """Known encodings, including proton's asymmetry: an empty list is list0 (0x45) but an
    empty map is a full map32 (d1 00000004 00000000), and lists/maps/arrays are never the
    8-bit forms; a list element inside an array is always list32, even when empty."""
    assert codec.encode(value).hex() == wire
    assert proton_encode(value).hex() == wire
    same(value if type(value) is not tuple else list(value), codec.decode(bytes.fromhex(wire)))


@pytest.mark.parametrize(
    "value, expected",
    [
        ((1, "a"), [1, "a"]),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"ab"), b"ab"),
        (SymbolList(["a"]), [symbol("a")]),
        (AnnotationDict({"a": 1}), {symbol("a"): 1}),
        (PropertyDict({"a": 1}), {symbol("a"): 1}),
        (OrderedDict(a=1), {"a": 1}),
    ],
)
def test_other_python_containers_encode_as_their_amqp_type(value: Any, expected: Any) -> None:
    same(expected, codec.decode(codec.encode(value)))


def test_subclasses_encode_as_their_base_type() -> None:
    class Colour(IntEnum):
        RED = 1

    class Name(str):
        pass

    assert codec.encode(Colour.RED) == codec.encode(1)
    assert codec.encode(Name("x")) == codec.encode("x")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decoded_types_match_proton_get_object(data: st.DataObject) -> None:
    """Decoding gives proton's classes: a long is a plain int, the rest are wrappers."""
    t = data.draw(st.sampled_from(sorted(SCALARS)))
    value = data.draw(SCALARS[t])
    ours = codec.decode(proton_encode(value))
    theirs = proton_decode(proton_encode(value))
    assert type(ours) is type(theirs), (TypeCode(t).name, type(ours), type(theirs))


def test_type_codes_are_protons() -> None:
    for code in TypeCode:
        assert int(code) == getattr(Data, code.name)


# ---------------------------------------------------------------------------------------------
# Proton quirks, documented


def test_quirk_proton_binary_is_a_memoryview_into_its_buffer() -> None:
    """proton's Data.get_binary gives a memoryview that dies with the Data object; amqscale
    always gives bytes."""
    d = Data()
    d.decode(codec.encode(b"payload"))
    d.rewind()
    d.next()
    assert isinstance(d.get_object(), memoryview)
    assert type(codec.decode(codec.encode(b"payload"))) is bytes


def test_quirk_proton_array_elements_must_have_the_arrays_class() -> None:
    """proton writes an array element's own value with the array's type code: a Python float
    in a FLOAT array becomes 0.0. amqscale converts by the array's type."""
    a = Array(UNDESCRIBED, TypeCode.FLOAT, 1.5)
    assert proton_decode(proton_encode(a)).elements == (0.0,)
    assert codec.decode(codec.encode(a)).elements == (1.5,)


def test_quirk_proton_array_of_described_type() -> None:
    """proton accepts Array(UNDESCRIBED, DESCRIBED, ...) and writes a described array typed
    by the first element's compact encoding, which does not decode to what was put. AMQP
    has no such type: amqscale refuses it and points to the described-array form."""
    a = Array(UNDESCRIBED, TypeCode.DESCRIBED, Described(symbol("x"), 1))
    assert proton_decode(proton_encode(a)) == Array(symbol("x"), TypeCode.LONG, 1)
    with pytest.raises(TypeError, match="Array\\(descriptor, element_type"):
        codec.encode(a)


def test_quirk_proton_loses_the_sibling_of_a_doubly_described_value() -> None:
    value = [Described(ulong(1), Described(ulong(2), None)), 5]
    wire = codec.encode(value)
    assert wire == proton_encode(value)
    assert proton_decode(wire) == [Described(ulong(1), Described(ulong(2), None))]
    same(value, codec.decode(wire))


def test_quirk_proton_cannot_decode_binary_map_keys() -> None:
    wire = codec.encode({b"k": 1})
    assert wire == proton_encode({b"k": 1})
    with pytest.raises(ValueError, match="memoryview"):
        proton_decode(wire)
    same({b"k": 1}, codec.decode(wire))


def test_quirk_nan_is_not_equal_to_itself() -> None:
    nan = float("nan")
    wire = codec.encode([nan, float32(nan)])
    assert wire == proton_encode([nan, float32(nan)])
    back = codec.decode(wire)
    assert back != [nan, float32(nan)] or back[0] is nan  # plain == fails on NaN
    same([nan, float32(nan)], back)


def test_quirk_symbols_are_ascii() -> None:
    """proton raises UnicodeEncodeError for a non-ASCII symbol; amqscale a ValueError that
    says why (UnicodeEncodeError is a ValueError too)."""
    with pytest.raises(UnicodeEncodeError):
        proton_encode(symbol("\u00e9"))
    with pytest.raises(ValueError, match="ASCII"):
        codec.encode(symbol("\u00e9"))
    with pytest.raises(DecodeError, match="not ASCII"):
        codec.decode(b"\xa3\x02\xc3\xa9")


def test_quirk_char_is_a_code_point() -> None:
    assert codec.encode(char("a")) == b"\x73\x00\x00\x00\x61"
    with pytest.raises(ValueError, match="single character"):
        codec.encode(char("ab"))
    with pytest.raises(DecodeError, match="code point"):
        codec.decode(b"\x73\x00\x11\x00\x00")


# ---------------------------------------------------------------------------------------------
# Encoding errors


@pytest.mark.parametrize(
    "value, where",
    [
        ({1, 2}, "cannot encode object of type set"),
        ([1, {"a": {3}}], "at [1]['a']: cannot encode object of type set"),
        ({frozenset(): 1}, "at <map key frozenset()>: cannot encode object of type frozenset"),
        (Described(symbol("d"), object()), "at <described value>: cannot encode object"),
        (Described(1j, 1), "at <descriptor>: cannot encode object of type complex"),
        (Array(UNDESCRIBED, TypeCode.INT, int32(1), "x"), "at [1]: an array of int cannot hold"),
        (Array(UNDESCRIBED, TypeCode.LIST, [set()]), "at [0][0]: cannot encode object of type"),
        (Array(UNDESCRIBED, 99), "unknown AMQP array element type 99"),
        ({"k": "\ud800"}, "at ['k']: 'utf-8' codec can't encode"),
        ({"\ud800": 1}, "at <map key '\\ud800'>: 'utf-8' codec can't encode"),
        (["\ud800"], "at [0]: 'utf-8' codec can't encode"),
    ],
)
def test_unsupported_values_raise_type_error_naming_where(value: Any, where: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        codec.encode(value)
    assert where in str(info.value)
    if "cannot" in where:
        assert isinstance(info.value, TypeError)


def _raw(cls: type, v: int) -> Any:
    # proton's wrappers check the sign in __init__; int.__new__ builds any value.
    return int.__new__(cls, v)


@pytest.mark.parametrize(
    "value",
    [
        2**63,
        -(2**63) - 1,
        _raw(ulong, 2**64),
        _raw(uint, 2**32),
        _raw(uint, -1),
        _raw(ushort, 2**16),
        _raw(ubyte, 256),
        _raw(byte, 128),
        _raw(short, -(2**15) - 1),
        _raw(int32, 2**31),
        _raw(timestamp, 2**63),
        _raw(decimal32, 2**32),
        _raw(decimal64, -1),
        decimal128(b"short"),
        float32(1e300),
        Array(UNDESCRIBED, TypeCode.UBYTE, 256),
        Array(UNDESCRIBED, TypeCode.LONG, 2**63),
        [1, 2**64],
    ],
)
def test_out_of_range_raises_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="out of range|must be 16 bytes"):
        codec.encode(value)


def test_long_out_of_range_suggests_ulong() -> None:
    with pytest.raises(ValueError, match="use ulong"):
        codec.encode(2**64 - 1)
    assert codec.decode(codec.encode(ulong(2**64 - 1))) == 2**64 - 1


def test_self_referential_value_raises() -> None:
    v: list[Any] = []
    v.append(v)
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode(v)


# ---------------------------------------------------------------------------------------------
# Decoding errors


@SLOW
@given(amqp_values)
def test_every_truncation_is_a_decode_error(value: Any) -> None:
    """AMQP encodings are self-delimiting: no strict prefix of one is a value."""
    wire = codec.encode(value)
    for n in range(len(wire)):
        with pytest.raises(DecodeError):
            codec.decode(wire[:n])


@SLOW
@given(amqp_values, st.data())
def test_corrupt_input_raises_only_decode_error(value: Any, data: st.DataObject) -> None:
    wire = bytearray(codec.encode(value))
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] = data.draw(st.integers(0, 255))
    try:
        codec.decode(bytes(wire))
    except DecodeError as e:
        assert 0 <= e.offset <= len(wire)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
@example(b"\xe0\x02\x0a\x40")  # ten nulls in an array8: zero-width elements
@example(b"\xf0\x00\x00\x00\x05\xff\xff\xff\xff\x40")  # 4 billion zero-width elements
@example(b"\xc1\x05\x02\x45\x45\x40")  # a map keyed by a list
@example(b"\xc1\x05\x04\x40\x40\x40\x40")  # duplicate keys
def test_arbitrary_bytes_raise_only_decode_error(wire: bytes) -> None:
    try:
        codec.decode(wire)
    except DecodeError as e:
        assert 0 <= e.offset <= len(wire)


@pytest.mark.parametrize(
    "wire, reason, offset",
    [
        ("", "truncated", 0),
        ("ff", "invalid format code 0xff", 0),
        ("4040", "1 trailing bytes", 1),
        ("a105616263", "truncated string", 2),
        ("a102c328", "invalid UTF-8", 2),
        ("d0000000060000000240", "truncated list", 9),
        ("c0030240", "truncated list", 3),
        ("c003014040", "elements end at 4", 4),
        ("c1030140 40", "odd number of elements", 3),
        ("c104024545 40", "cannot be a Python dict key", 4),
        ("c105044040 4040", "duplicate keys", 7),
        ("c0010a", "count 10 exceeds its size", 3),
        ("5602", "invalid boolean value 0x02", 1),
        ("e004010040 00", "invalid array element constructor 0x00", 5),
        ("f000000005ffffffff40", "zero-width elements is too large", 10),
        ("9800", "truncated uuid", 1),
    ],
)
def test_decode_errors_name_the_offset(wire: str, reason: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(bytes.fromhex(wire.replace(" ", "")))
    assert reason in info.value.reason
    assert info.value.offset == offset
    assert f"at offset {offset}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_zero_width_array_elements() -> None:
    """An array of null, true, false, uint0, ulong0 or list0 takes no bytes per element."""
    assert codec.decode(bytes.fromhex("e0020a40")) == Array(
        UNDESCRIBED, TypeCode.NULL, *[None] * 10
    )
    assert codec.decode(bytes.fromhex("e0020341")).elements == (True, True, True)
    got = codec.decode(bytes.fromhex("e0050200530143"))
    assert got == Array(ulong(1), TypeCode.UINT, uint(0), uint(0))


def test_deep_nesting_is_a_decode_error() -> None:
    wire = b"\xc0\x02\x01" * 100_000
    with pytest.raises(DecodeError):
        codec.decode(wire)


def test_struct_sizes() -> None:
    # The precompiled structs are big-endian with no padding, as AMQP needs.
    assert codec._S_BQ.size == 9 and codec._S_II.size == 8
    assert struct.calcsize(">Bq") == 9
