"""Python-native types in the codec: aware datetime <-> timestamp, decimal.Decimal <->
decimal32/64/128 (IEEE 754-2008 BID), the decode opt-ins, interop with proton, pymongo's
BID decimal128 as the oracle, and the C and Python codecs agreeing (docs/types.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import proton
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqscale import codec
from amqscale.message import Message, convert_natives
from amqscale.types import (
    UNDESCRIBED,
    AmqpSequence,
    Array,
    Described,
    TypeCode,
    decimal32,
    decimal32_of,
    decimal64,
    decimal64_of,
    decimal128,
    decimal128_of,
    symbol,
    timestamp,
    timestamp_of,
    to_datetime,
    to_decimal,
)

bson_decimal128 = pytest.importorskip("bson.decimal128")

UTC = timezone.utc
C_BUILT = codec._ccodec is not None

# (constructor, digits, lowest exponent, highest exponent) of each width
WIDTHS = {
    "decimal32": (decimal32_of, 7, -101, 90),
    "decimal64": (decimal64_of, 16, -398, 369),
    "decimal128": (decimal128_of, 34, -6176, 6111),
}


def same_decimal(a: Decimal, b: Decimal) -> bool:
    """Equal as IEEE values: sign, digits, exponent (cohort), NaN kind and payload."""
    return a.as_tuple() == b.as_tuple()


def finite_decimals(digits: int, lo: int, hi: int) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda sign, coefficient, exponent: Decimal((sign, tuple(map(int, str(coefficient))),
                                                     exponent)),
        st.integers(0, 1),
        st.integers(0, 10**digits - 1),
        st.integers(lo, hi),
    )


aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                               timezone(-timedelta(hours=11))]),
)


# ---------------------------------------------------------------------------------------------
# datetime -> timestamp


def test_datetime_encodes_as_its_millisecond_timestamp() -> None:
    dt = datetime(2011, 7, 26, 18, 21, 3, 521000, tzinfo=UTC)  # the specification's example
    assert codec.encode(dt) == codec.encode(timestamp(1311704463521))
    assert codec.encode(dt)[0] == 0x83


def test_sub_millisecond_part_is_floored() -> None:
    assert timestamp_of(datetime(2011, 7, 26, 18, 21, 3, 521999, tzinfo=UTC)) == 1311704463521
    # before the epoch floor goes down, as Java's Instant.toEpochMilli (not toward zero)
    assert timestamp_of(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1
    assert timestamp_of(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def test_offset_is_honoured() -> None:
    plus2 = datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp_of(plus2) == timestamp_of(datetime(2024, 1, 1, tzinfo=UTC))


def test_extreme_datetimes_fit() -> None:
    far = datetime.max.replace(tzinfo=timezone(-timedelta(hours=23)))
    assert codec.decode(codec.encode(far)) == timestamp_of(far)
    assert timestamp_of(datetime.min.replace(tzinfo=UTC)) == -62135596800000


def test_naive_datetime_is_refused_with_its_place() -> None:
    naive = datetime(2024, 1, 1)
    with pytest.raises(TypeError, match=r"at \[1\]\['k'\]: cannot send the naive datetime.*tzinfo"):
        codec.encode([1, {"k": naive}])
    with pytest.raises(TypeError, match="creation_time: cannot send the naive datetime"):
        Message(creation_time=naive)
    m = Message()
    with pytest.raises(TypeError, match="expiry_time: .*attach a tzinfo"):
        m.expiry_time = naive
    with pytest.raises(TypeError, match="application property 'k': .*naive"):
        Message(properties={"k": naive}).encode()
    with pytest.raises(TypeError, match=r"at \[0\]: cannot send the naive"):
        codec.encode(Array(UNDESCRIBED, TypeCode.TIMESTAMP, naive))


def test_timestamp_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="expected a datetime"):
        timestamp_of(1.5)  # type: ignore[arg-type]


def test_datetime_subclass_encodes_as_datetime() -> None:
    class MyDatetime(datetime):
        pass

    dt = MyDatetime(2024, 1, 1, tzinfo=UTC)
    assert codec.encode([dt]) == codec.encode([timestamp(1704067200000)])


@given(aware_datetimes)
def test_datetime_round_trips_to_the_floored_utc_instant(dt: datetime) -> None:
    wire = codec.encode({"t": dt})
    floored = dt - timedelta(microseconds=dt.microsecond % 1000)
    assert codec.decode(wire) == {"t": timestamp_of(dt)}
    back = codec.decode(wire, datetimes=True)["t"]
    assert back == floored and back.tzinfo is UTC
    assert codec.encode({"t": back}) == wire  # lossless at millisecond precision


@given(aware_datetimes)
def test_proton_reads_the_datetime_as_its_timestamp(dt: datetime) -> None:
    data = proton.Data()
    data.decode(codec.encode(dt))
    got = data.get_object()
    assert type(got) is proton.timestamp and got == (dt - datetime(1970, 1, 1, tzinfo=UTC)) // (
        timedelta(milliseconds=1))


def test_message_times_take_datetimes_and_proton_agrees() -> None:
    created = datetime(2024, 5, 6, 7, 8, 9, 123999, tzinfo=UTC)
    expires = created + timedelta(hours=1)
    m = Message(body="x", creation_time=created)
    m.expiry_time = expires
    assert m.creation_time == 1714979289.123  # still seconds outside
    theirs = proton.Message()
    theirs.decode(m.encode())
    assert theirs.creation_time == 1714979289.123
    assert theirs.expiry_time == 1714979289.123 + 3600
    assert Message.decode(m.encode())._creation_time == 1714979289123


def test_message_times_still_take_seconds() -> None:
    m = Message(creation_time=1714979289.5, expiry_time=10)
    assert (m.creation_time, m.expiry_time) == (1714979289.5, 10.0)
    with pytest.raises(TypeError, match="creation_time: expected .* or an aware datetime, not str"):
        Message(creation_time="now")
    with pytest.raises(ValueError, match="expiry_time.*out of range"):
        Message(expiry_time=2**63)


def test_array_of_datetimes() -> None:
    a, b = datetime(2024, 1, 1, tzinfo=UTC), datetime(1960, 6, 1, 12, tzinfo=UTC)
    wire = codec.encode(Array(UNDESCRIBED, TypeCode.TIMESTAMP, a, timestamp(5), b))
    assert wire == codec.encode(
        Array(UNDESCRIBED, TypeCode.TIMESTAMP, timestamp_of(a), timestamp(5), timestamp_of(b))
    )
    back = codec.decode(wire, datetimes=True)
    assert list(back.elements) == [a, to_datetime(5), b]
    assert codec.encode(back) == wire


def test_timestamp_outside_datetime_range_is_refused_on_opt_in() -> None:
    wire = codec.encode([timestamp(2**62)])
    assert codec.decode(wire) == [timestamp(2**62)]
    with pytest.raises(ValueError, match="outside the range of datetime"):
        codec.decode(wire, datetimes=True)
    with pytest.raises(ValueError, match="outside the range of datetime"):
        to_datetime(-(2**63))


# ---------------------------------------------------------------------------------------------
# Decimal <-> decimal32/64/128


@given(finite_decimals(34, -6176, 6111))
@settings(max_examples=300)
def test_decimal128_matches_the_bid_oracle(d: Decimal) -> None:
    ours = decimal128_of(d)
    oracle = bson_decimal128.Decimal128(d).bid[::-1]  # BSON is little-endian; AMQP is not
    assert bytes(ours) == oracle
    assert same_decimal(to_decimal(ours), d)


@given(st.binary(min_size=16, max_size=16))
@settings(max_examples=300)
def test_decimal128_decoding_matches_the_oracle_on_any_bits(raw: bytes) -> None:
    ours = to_decimal(decimal128(raw))
    oracle = bson_decimal128.Decimal128.from_bid(raw[::-1]).to_decimal()
    if ours.is_nan():  # the oracle drops NaN payloads
        assert oracle.is_nan() and ours.is_snan() == oracle.is_snan()
    else:
        assert same_decimal(ours, oracle)


@pytest.mark.parametrize(
    "text",
    ["NaN", "-NaN", "sNaN", "-sNaN", "Infinity", "-Infinity", "0", "-0", "0E-6176",
     "1E+6111", "-1E-6176", "1.0", "1.00", "1E+3", "1000"],
)
def test_specials_and_cohorts_match_the_oracle(text: str) -> None:
    d = Decimal(text)
    assert bytes(decimal128_of(d)) == bson_decimal128.Decimal128(d).bid[::-1]
    assert same_decimal(to_decimal(decimal128_of(d)), d)


# Published vectors: the BID encodings in Intel's decimal floating-point library tests and
# the IEEE 754-2008 BID layout (1 has exponent bias 101/398; 9999999 takes the "11" form).
@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (decimal32(0x32800001), "1"),
        (decimal32(0xB2800001), "-1"),
        (decimal32(0x6CB8967F), "9999999"),
        (decimal32(0x77F8967F), "9.999999E+96"),
        (decimal32(0x00000001), "1E-101"),
        (decimal32(0x78000000), "Infinity"),
        (decimal32(0x7C000000), "NaN"),
        (decimal32(0x7E000000), "sNaN"),
        (decimal64(0x31C0000000000001), "1"),
        (decimal64(0x6C7386F26FC0FFFF), "9999999999999999"),
        (decimal64(0x77FB86F26FC0FFFF), "9.999999999999999E+384"),
        (decimal64(0x31A0000000000005), "0.5"),
        (decimal64(0xF800000000000000), "-Infinity"),
    ],
)
def test_decimal32_and_64_vectors(raw: Any, text: str) -> None:
    d, got = Decimal(text), to_decimal(raw)
    assert (got.is_nan(), got.is_snan()) == (d.is_nan(), d.is_snan())
    if not d.is_nan():
        assert got == d  # the same value (the vectors are written in normal form)
    of = decimal32_of if type(raw) is decimal32 else decimal64_of
    assert of(got) == raw


@pytest.mark.parametrize("width", sorted(WIDTHS))
@given(data=st.data())
def test_every_width_round_trips_exactly(width: str, data: st.DataObject) -> None:
    of, digits, lo, hi = WIDTHS[width]
    d = data.draw(finite_decimals(digits, lo, hi) | st.sampled_from(
        [Decimal(s) for s in ("NaN", "-sNaN", "Infinity", "-Infinity", "-0", "NaN12")]))
    raw = of(d)
    assert type(raw).__name__ == width
    assert same_decimal(to_decimal(raw), d)
    assert same_decimal(codec.decode(codec.encode([raw]), decimals=True)[0], d)


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_too_many_digits_and_exponent_range_refused(width: str) -> None:
    of, digits, lo, hi = WIDTHS[width]
    with pytest.raises(ValueError, match=rf"has {digits + 1} significant digits; AMQP {width}"):
        of(Decimal("1" * (digits + 1)))
    with pytest.raises(ValueError, match=rf"exponent {hi + 1}; AMQP {width} takes {lo} to {hi}"):
        of(Decimal(f"1E{hi + 1}"))
    with pytest.raises(ValueError, match=rf"exponent {lo - 1}"):
        of(Decimal(f"1E{lo - 1}"))
    with pytest.raises(ValueError, match="NaN payload"):
        of(Decimal("NaN" + "1" * digits))
    of(Decimal(f"{'9' * digits}E{hi}"))  # the extremes fit
    of(Decimal(f"-1E{lo}"))
    for nan in ("NaN", "-sNaN"):  # the largest payload, which fills the trailing significand
        d = Decimal(nan + "9" * (digits - 1))
        assert same_decimal(to_decimal(of(d)), d)


def test_value_encoding_is_decimal128_and_refuses_rounding() -> None:
    d = Decimal("123.4500")
    assert codec.encode(d) == b"\x94" + decimal128_of(d)
    with pytest.raises(ValueError, match=r"at \['price'\]: Decimal\('1{35}'\) has 35 significant"):
        codec.encode({"price": Decimal("1" * 35)})
    with pytest.raises(ValueError, match=r"application property 'p': .*exponent 7000"):
        Message(properties={"p": Decimal("1E7000")}).encode()


def test_wrong_types() -> None:
    with pytest.raises(TypeError, match="expected a decimal.Decimal, not float"):
        decimal128_of(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a decimal32, decimal64 or decimal128, not int"):
        to_decimal(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 bytes"):
        to_decimal(decimal128(b"abc"))
    with pytest.raises(ValueError, match="out of range for AMQP decimal32"):
        to_decimal(decimal32(2**32))
    with pytest.raises(TypeError, match="an array of decimal128 cannot hold an object of type str"):
        codec.encode(Array(UNDESCRIBED, TypeCode.DECIMAL128, "1.5"))


def test_decoding_to_decimal_is_opt_in() -> None:
    wire = codec.encode([Decimal("1.50"), decimal32_of(Decimal("-2.5")), decimal64_of(
        Decimal("7E-3"))])
    plain = codec.decode(wire)
    assert [type(x) for x in plain] == [decimal128, decimal32, decimal64]
    assert codec.encode(plain) == wire  # lossless by default
    natives = codec.decode(wire, decimals=True)
    assert [str(x) for x in natives] == ["1.50", "-2.5", "0.007"]
    # without datetimes, timestamps stay; without decimals, decimals stay
    mixed = codec.encode([timestamp(1), Decimal(1)])
    assert codec.decode(mixed, decimals=True) == [timestamp(1), Decimal(1)]
    assert type(codec.decode(mixed, datetimes=True)[1]) is decimal128


def test_arrays_of_decimals() -> None:
    for code, of in ((TypeCode.DECIMAL32, decimal32_of), (TypeCode.DECIMAL64, decimal64_of),
                     (TypeCode.DECIMAL128, decimal128_of)):
        wire = codec.encode(Array(UNDESCRIBED, code, Decimal("1.5"), of(Decimal("-0"))))
        assert wire == codec.encode(Array(UNDESCRIBED, code, of(Decimal("1.5")),
                                          of(Decimal("-0"))))
        back = codec.decode(wire, decimals=True)
        assert [str(x) for x in back.elements] == ["1.5", "-0"]
    with pytest.raises(ValueError, match=r"at \[0\]: .*decimal32 holds at most 7"):
        codec.encode(Array(UNDESCRIBED, TypeCode.DECIMAL32, Decimal("12345678")))


def test_map_keys_equal_once_converted_are_refused() -> None:
    wire = codec.encode({decimal128_of(Decimal("1.0")): "a", decimal128_of(Decimal("1.00")): "b"})
    assert len(codec.decode(wire)) == 2
    with pytest.raises(ValueError, match="equal once converted"):
        codec.decode(wire, decimals=True)
    with pytest.raises(ValueError, match="signalling NaN"):
        codec.decode(codec.encode({decimal128_of(Decimal("sNaN")): 1}), decimals=True)


def test_conversion_reaches_described_values_keys_and_descriptors() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    value = Described(symbol("d"), {t: [Decimal("2.0")]})
    back = codec.decode(codec.encode(value), datetimes=True, decimals=True)
    assert back == Described(symbol("d"), {t: [Decimal("2.0")]})
    v, end = codec.decode_from(b"\x00" + codec.encode([t]), 1, datetimes=True)
    assert (v, end) == ([t], 19)


# ---------------------------------------------------------------------------------------------
# Message decode opt-ins


def test_message_decode_opt_ins() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    m = Message(
        body=AmqpSequence([t, Decimal("0.10")]),
        properties={"t": t},
        annotations={symbol("x-d"): Decimal("5")},
        instructions={symbol("x-t"): t},
        footer={symbol("f"): t},
        creation_time=t,
    )
    wire = m.encode()
    plain = Message.decode(wire)
    assert plain.properties == {"t": timestamp_of(t)} and type(plain.body[1]) is decimal128
    assert plain.encode() == wire
    got = Message.decode(wire, datetimes=True, decimals=True)
    assert got.properties == {"t": t}
    assert type(got.body) is AmqpSequence and got.body == [t, Decimal("0.10")]
    assert got.annotations == {symbol("x-d"): Decimal("5")}
    assert got.instructions == {symbol("x-t"): t} and got.footer == {symbol("f"): t}
    assert got.creation_time == t.timestamp()  # the property stays seconds
    assert got.encode() == wire
    assert Message.decode(wire, decimals=True).properties == {"t": timestamp_of(t)}


def test_convert_natives_after_a_batch_decode() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    payloads = [Message(body={"t": t}).encode(), Message(body=b"raw").encode()]
    batch = codec._ccodec.decode_messages(payloads) if C_BUILT else None
    messages = batch if batch is not None else [Message.decode(p) for p in payloads]
    converted = [convert_natives(m, datetimes=True) for m in messages]
    assert converted[0].body == {"t": t} and converted[1].body == b"raw"


# ---------------------------------------------------------------------------------------------
# The C and Python codecs agree


def native_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        aware_datetimes,
        st.datetimes(max_value=datetime(2100, 1, 1)),  # naive: both must refuse
        finite_decimals(34, -6176, 6111),
        st.sampled_from([Decimal("NaN"), Decimal("-Infinity"), Decimal("1" * 35),
                         Decimal("1E9999")]),
        st.integers(-(2**63), 2**63 - 1),
        st.text(max_size=5),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=3), children, max_size=4),
            st.lists(aware_datetimes, max_size=3).map(
                lambda xs: Array(UNDESCRIBED, TypeCode.TIMESTAMP, *xs)),
            st.lists(finite_decimals(7, -101, 90), max_size=3).map(
                lambda xs: Array(UNDESCRIBED, TypeCode.DECIMAL32, *xs)),
        ),
        max_leaves=10,
    )


def outcome(f: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", f(*args, **kwargs)
    except (TypeError, ValueError) as e:
        return type(e).__name__, str(e)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built")
@given(native_values())
@settings(max_examples=300)
def test_c_and_python_encoders_agree(value: Any) -> None:
    fast = codec._ccodec.encode(value)
    slow = outcome(codec._py_encode, value)
    if fast is not None:
        assert slow == ("ok", fast)
    assert outcome(codec.encode, value) == slow  # the public path words errors as Python
    if slow[0] == "ok":
        wire = slow[1]
        for kw in ({}, {"datetimes": True}, {"decimals": True},
                   {"datetimes": True, "decimals": True}):
            c = codec.natives(codec._ccodec.decode(wire), kw.get("datetimes", False),
                              kw.get("decimals", False))
            p = codec.natives(codec._py_decode(wire), kw.get("datetimes", False),
                              kw.get("decimals", False))
            assert repr(c) == repr(p) and codec._py_encode(c) == codec._py_encode(p)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built")
def test_c_message_encoder_takes_native_values() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    m = Message(properties={"t": t, "d": Decimal("9.99")}, body=[t, Decimal(1)])
    fast = codec._ccodec.encode_message(m)
    assert fast is not None and fast == m._encode_python()
