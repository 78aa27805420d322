"""Message: every section, round trips, agreement with proton.Message, errors."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import proton
import pytest
from codec_helpers import (
    assert_proton_agrees,
    coinciding_fields,
    copy_binaries,
    message_fields,
    messages,
    proton_message,
    proton_values,
    same,
    same_message,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from amqscale import codec
from amqscale.codec import DecodeError
from amqscale.message import Message
from amqscale.types import (
    AmqpSequence,
    AmqpValue,
    Array,
    DataSections,
    Described,
    SequenceSections,
    TypeCode,
    symbol,
    ulong,
)

SLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# amqscale's own round trip (footer and every body form included)


@SLOW
@given(messages)
def test_round_trip_is_identity(m: Message) -> None:
    back = Message.decode(m.encode())
    same_message(m, back)  # not ==: a NaN anywhere makes == False


def test_equality() -> None:
    a = Message(body=[1, "x"], id=1, properties={"k": 1}, footer={"f": 1}, ttl=2)
    assert a == Message(body=[1, "x"], id=1, properties={"k": 1}, footer={"f": 1}, ttl=2)
    assert a != Message(body=[1, "x"], id=1, properties={"k": 1}, footer={"f": 2}, ttl=2)
    assert a != Message(body=[1, "x"], id=1, properties={"k": 1}, footer={"f": 1}, ttl=3)
    assert Message.decode(a.encode()) == a


@SLOW
@given(messages)
def test_decoded_message_re_encodes_to_the_same_bytes(m: Message) -> None:
    wire = m.encode()
    assert Message.decode(wire).encode() == wire


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_buffers(kind: type) -> None:
    m = Message(body=b"x" * 300, id=uuid.uuid4(), properties={"a": 1})
    back = Message.decode(kind(m.encode()))
    assert back == m
    assert type(back.body) is bytes


# ---------------------------------------------------------------------------------------------
# Against proton.Message


def _proton_body(pm: proton.Message) -> Any:
    return copy_binaries(pm.body)  # memoryviews into proton's buffer, at any depth


def _expected_proton_body(m: Message) -> Any:
    body = m.body
    if isinstance(body, AmqpValue):
        return body.value
    if isinstance(body, AmqpSequence):
        return list(body)
    return body


@SLOW
@given(message_fields(footer=False, values=proton_values))
def test_proton_decodes_amqscale_encoding(fields: dict[str, Any]) -> None:
    m = Message(**fields)
    assume(not isinstance(m.body, (DataSections, SequenceSections)))  # proton keeps only one
    pm = proton.Message()
    pm.decode(m.encode())
    assert_proton_agrees(m, pm)
    same(_expected_proton_body(m), _proton_body(pm), "body")


@SLOW
@given(message_fields(footer=False, values=proton_values))
def test_amqscale_decodes_proton_encoding(fields: dict[str, Any]) -> None:
    """proton encodes; both decode the same bytes and agree field by field."""
    assume(not isinstance(fields.get("body"), (DataSections, SequenceSections)))
    wire = bytes(proton_message(fields).encode())
    ours = Message.decode(wire)
    pm = proton.Message()
    pm.decode(wire)
    assert_proton_agrees(ours, pm)
    body = fields.get("body")
    if isinstance(body, AmqpValue) and body.value is None:
        body = None  # proton sends a None body as no body section at all
    same(body, ours.body, "body")
    assert ours.encode() == Message.decode(ours.encode()).encode()


@SLOW
@given(coinciding_fields())
def test_same_bytes_as_proton_where_the_encodings_coincide(fields: dict[str, Any]) -> None:
    """Byte for byte what proton writes, except for what proton cannot say:

    * proton always writes a header and a properties section (list0 when empty); amqscale
      leaves empty sections out, so the two coincide when both sections have a field;
    * proton takes 0 to mean absent for ttl, times and group_sequence, and converts seconds
      with int(s * 1000), which can lose a millisecond; amqscale keeps 0 and rounds;
    * proton cannot send several data or amqp-sequence sections, or a footer.
    """
    assert Message(**fields).encode() == bytes(proton_message(fields).encode())


def test_proton_always_writes_empty_header_and_properties() -> None:
    """The whole difference for a plain message: 8 bytes of empty sections."""
    m = Message(body=b"x", properties={"a": 1})
    pm = proton_message({"body": b"x", "properties": {"a": 1}})
    theirs = bytes(pm.encode())
    assert theirs[:8] == bytes.fromhex("0053704500537345")
    assert m.encode() == theirs[8:]


def test_quirk_proton_seconds_to_milliseconds_truncates() -> None:
    """proton converts with int(1.001 * 1000) == 1000; amqscale rounds to 1001 and keeps
    the milliseconds it decoded, so a received time re-encodes unchanged."""
    pm = proton.Message(creation_time=1.001)
    assert bytes(pm.encode()).endswith(bytes.fromhex("8300000000000003e8"))  # 1000 ms
    assert Message(creation_time=1.001).encode().endswith(bytes.fromhex("8300000000000003e9"))


def test_quirk_proton_zero_means_absent() -> None:
    """proton cannot send ttl=0, group_sequence=0 or a time of 0; amqscale can (None is
    absent), and proton reads them back as the same 0."""
    m = Message(ttl=0, group_sequence=0, creation_time=0, id="x")
    pm = proton.Message()
    pm.decode(m.encode())
    assert (pm.ttl, pm.group_sequence, pm.creation_time) == (0, 0, 0)
    back = Message.decode(m.encode())
    assert (back.ttl, back.group_sequence, back.creation_time) == (0, 0, 0)
    assert Message.decode(Message(id="x").encode()).ttl is None


def test_quirk_proton_cuts_string_properties_at_nul() -> None:
    m = Message(address="a\x00b", content_type="t\x00u")
    pm = proton.Message()
    pm.decode(m.encode())
    assert (pm.address, pm.content_type) == ("a", "t")
    back = Message.decode(m.encode())
    assert (back.address, back.content_type) == ("a\x00b", "t\x00u")


def test_quirk_proton_writes_group_sequence_with_group_id() -> None:
    """proton writes group-sequence 0 whenever group-id is set; amqscale only when
    group_sequence is set (None is absent, 0 is 0)."""
    assert bytes(proton.Message(group_id="g").encode()).endswith(b"\xa1\x01g\x43")
    assert Message(group_id="g").encode().endswith(b"\xa1\x01g")
    assert Message(group_id="g", group_sequence=0).encode().endswith(b"\xa1\x01g\x43")


def test_quirk_proton_absent_content_type_is_the_string_none() -> None:
    pm = proton.Message()
    pm.decode(Message(id="x").encode())
    assert pm.content_type == "None"
    assert Message.decode(Message(id="x").encode()).content_type is None


def test_quirk_proton_keeps_one_of_several_body_sections() -> None:
    m = Message(body=DataSections([b"a", b"b"]))
    pm = proton.Message()
    pm.decode(m.encode())
    assert bytes(pm.body) in (b"a", b"b")
    assert Message.decode(m.encode()).body == DataSections([b"a", b"b"])


def test_quirk_proton_bytes_body_is_an_amqp_value_unless_inferred() -> None:
    """proton.Message(body=b"..") sends an amqp-value (inferred is False by default);
    amqscale decodes it as AmqpValue(b"..") so that it re-encodes the same."""
    pm = proton.Message(body=b"ab")
    back = Message.decode(bytes(pm.encode()))
    assert back.body == AmqpValue(b"ab")
    assert back.encode() == bytes(pm.encode())[8:]


# ---------------------------------------------------------------------------------------------
# Body mapping


@pytest.mark.parametrize(
    "body, sections",
    [
        (None, "00537345"),  # nothing set: one empty properties section
        (b"ab", "005375a0026162"),
        (bytearray(b"ab"), "005375a0026162"),
        (AmqpValue(b"ab"), "005377a0026162"),
        (AmqpValue(None), "00537740"),
        ("ab", "005377a1026162"),
        ([1], "005377d000000006000000015501"),
        (AmqpSequence([1]), "005376d000000006000000015501"),
        (AmqpSequence([]), "00537645"),
        (DataSections([b"a", b"b"]), "005375a00161005375a00162"),
        (SequenceSections([[1], []]), "005376d00000000600000001550100537645"),
        (Described(symbol("x"), 1), "00537700a301785501"),
    ],
)
def test_body_sections(body: Any, sections: str) -> None:
    wire = Message(body=body).encode()
    assert wire.hex() == sections
    back = Message.decode(wire).body
    if isinstance(body, bytearray):
        body = bytes(body)
    same(body, back)


def test_single_data_section_decodes_to_bytes_and_one_sequence_to_amqp_sequence() -> None:
    assert type(Message.decode(Message(body=DataSections([b"a"])).encode()).body) is bytes
    seq = Message.decode(Message(body=SequenceSections([[1]])).encode()).body
    assert type(seq) is AmqpSequence and seq == [1]


def test_body_type_matters_for_equality() -> None:
    assert Message(body=[1]) != Message(body=AmqpSequence([1]))
    assert Message(body=b"a") != Message(body=AmqpValue(b"a"))
    assert Message(body=[1]) == Message(body=[1])


# ---------------------------------------------------------------------------------------------
# Sections and fields


def test_full_message_sections_in_spec_order() -> None:
    m = Message(
        body=b"b",
        durable=True,
        instructions={"i": 1},
        annotations={"a": 2},
        id=1,
        properties={"p": 3},
        footer={"f": 4},
    )
    wire = m.encode()
    order = [
        wire.index(bytes.fromhex(f"0053{c:02x}"))
        for c in range(0x70, 0x79)
        if c not in (0x76, 0x77)
    ]
    assert order == sorted(order)


def test_header_and_properties_trim_trailing_nulls() -> None:
    assert Message(durable=True).encode().hex() == "005370c0020141"
    assert Message(priority=5).encode().hex() == "005370c00402405005"
    assert Message(id="a").encode().hex() == "005373c00401a10161"
    assert Message(group_sequence=2).encode().hex() == "005373c00e0c" + "40" * 11 + "5202"


def test_properties_switch_to_list32_when_large() -> None:
    assert Message(subject="x" * 249).encode()[3] == 0xC0
    assert Message(subject="x" * 250).encode()[3] == 0xD0
    assert Message.decode(Message(subject="x" * 250).encode()).subject == "x" * 250


def test_symbolic_section_descriptors_are_accepted() -> None:
    wire = (
        b"\x00"
        + codec.encode(symbol("amqp:properties:list"))
        + codec.encode(["id-1"])
        + b"\x00"
        + codec.encode(symbol("amqp:data:binary"))
        + codec.encode(b"xy")
        + b"\x00\x80"
        + (0x78).to_bytes(8, "big")
        + codec.encode({symbol("f"): 1})
    )
    m = Message.decode(wire)
    assert (m.id, m.body, m.footer) == ("id-1", b"xy", {"f": 1})


def test_other_peers_encodings_are_accepted() -> None:
    """list8/map8 sections, wide integers and a boolean written as 0x56: what rhea and
    others may send."""
    wire = bytes.fromhex(
        "005370 c00b04 5601 5004 7000000064 41"
        "005373 c00a02 a10169 b00000000175"
        "005374 c10602 a10161 5401".replace(" ", "")
    )
    m = Message.decode(wire)
    assert (m.durable, m.priority, m.ttl, m.first_acquirer) == (True, 4, 0.1, True)
    assert (m.id, m.user_id, m.properties) == ("i", b"u", {"a": 1})


def test_times_are_seconds_outside_milliseconds_inside() -> None:
    m = Message(ttl=1.5, expiry_time=1700000000.123, creation_time=-1)
    back = Message.decode(m.encode())
    assert (back.ttl, back.expiry_time, back.creation_time) == (1.5, 1700000000.123, -1.0)
    huge = Message.decode(
        Message(creation_time=1)
        .encode()
        .replace(bytes.fromhex("8300000000000003e8"), bytes.fromhex("837fffffffffffffff"))
    )
    assert huge.encode().endswith(bytes.fromhex("837fffffffffffffff"))  # exact, not via float


def test_annotation_str_keys_become_symbols() -> None:
    """As proton's AnnotationDict does; ulong keys stay ulong."""
    back = Message.decode(Message(annotations={"x": 1, ulong(7): 2}).encode())
    assert back.annotations is not None
    assert [type(k) for k in back.annotations] == [symbol, ulong]


def test_repr_shows_set_fields() -> None:
    r = repr(Message(body=b"x", id=3, durable=True, priority=4))
    assert r == "Message(body=b'x', durable=True, id=3)"


def test_empty_sections_are_left_out() -> None:
    # Nothing is left: one empty properties section, so that the transfer has bytes.
    assert Message(properties={}, annotations={}, footer={}).encode() == b"\x00\x53\x73\x45"
    assert Message.decode(b"\x00\x53\x73\x45") == Message()
    assert Message.decode(b"") == Message()  # what a peer may still send


# ---------------------------------------------------------------------------------------------
# Errors at the call, naming the field


def test_unknown_field_names_are_rejected() -> None:
    with pytest.raises(TypeError, match="'colour', 'size'"):
        Message(b"x", colour=1, size=2)
    with pytest.raises(TypeError, match="no 'inferred'"):
        Message(b"x", inferred=True)


@pytest.mark.parametrize(
    "fields, error, text",
    [
        (
            {"properties": {"k": {1, 2}}},
            TypeError,
            "application property 'k': cannot encode object of type set",
        ),
        ({"properties": {"k": [1]}}, TypeError, "application property 'k': a list is not allowed"),
        ({"properties": {1: "v"}}, TypeError, "application property key 1: must be str"),
        ({"properties": {symbol("k"): "v"}}, TypeError, "application property key symbol('k')"),
        (
            {"properties": {"k": 2**64}},
            ValueError,
            "application property 'k': 18446744073709551616",
        ),
        ({"properties": "k=v"}, TypeError, "properties: expected dict, not str"),
        ({"annotations": {1: "v"}}, TypeError, "message annotation key 1: must be a symbol"),
        ({"annotations": {"k": [{1, 2}]}}, TypeError, "message annotation 'k'[0]: cannot encode"),
        ({"instructions": {"\u00e9": 1}}, ValueError, "delivery annotation key '\u00e9'"),
        ({"footer": {"k": object()}}, TypeError, "footer 'k': cannot encode object of type object"),
        ({"durable": 1}, TypeError, "durable: expected bool, not int"),
        ({"first_acquirer": None}, TypeError, "first_acquirer: expected bool"),
        ({"priority": 256}, ValueError, "priority: 256 is out of range 0..255"),
        ({"priority": "high"}, TypeError, "priority: expected int, not str"),
        ({"delivery_count": -1}, ValueError, "delivery_count: -1 is out of range"),
        ({"id": -1}, ValueError, "id: -1 is out of range"),
        ({"id": 1.5}, TypeError, "id: expected str, int (ulong), uuid.UUID or bytes, not float"),
        ({"correlation_id": [1]}, TypeError, "correlation_id: expected str, int"),
        ({"user_id": "me"}, TypeError, "user_id: expected bytes, not str"),
        ({"address": b"q"}, TypeError, "address: expected str, not bytes"),
        ({"content_type": "t\u00e9xt"}, ValueError, "content_type: AMQP symbol must be ASCII"),
        ({"subject": "\ud800"}, ValueError, "subject: 'utf-8' codec can't encode"),
        ({"id": "\ud800"}, ValueError, "id: 'utf-8' codec can't encode"),
        ({"properties": {"\ud800": 1}}, ValueError, "application property key '\\ud800': 'utf-8'"),
        ({"annotations": {"k": "\ud800"}}, ValueError, "message annotation 'k': 'utf-8'"),
        ({"properties": {"k": "\ud800"}}, ValueError, "application property 'k': 'utf-8'"),
        ({"group_sequence": 2**32}, ValueError, "group_sequence: 4294967296 is out of range"),
        ({"body": {1, 2}}, TypeError, "body: cannot encode object of type set"),
        ({"body": [1, [set()]]}, TypeError, "body[1][0]: cannot encode object of type set"),
        ({"body": DataSections([b"a", "b"])}, TypeError, "body[1]: expected bytes"),
        ({"body": AmqpValue(2**63)}, ValueError, "body: 9223372036854775808 is out of range"),
    ],
)
def test_invalid_fields_are_named_at_encode(fields: dict[str, Any], error: type, text: str) -> None:
    m = Message(**fields)
    with pytest.raises(error) as info:
        m.encode()
    assert text in str(info.value)


@pytest.mark.parametrize(
    "name, value, error, text",
    [
        ("ttl", -1, ValueError, "ttl: -1 seconds is out of range"),
        ("ttl", 2**32, ValueError, "ttl"),
        ("ttl", "5", TypeError, "ttl: expected seconds as int or float, not str"),
        ("ttl", float("nan"), ValueError, "ttl: nan is not a finite number"),
        ("creation_time", True, TypeError, "creation_time: expected seconds"),
        ("expiry_time", 2**62, ValueError, "expiry_time"),
    ],
)
def test_times_are_checked_when_set(name: str, value: Any, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        Message(**{name: value})
    m = Message()
    with pytest.raises(error, match=text):
        setattr(m, name, value)


def test_proton_style_keys_are_accepted() -> None:
    class Key(str):
        pass

    m = Message(properties={Key("k"): 1}, annotations={symbol("s"): 1})
    back = Message.decode(m.encode())
    assert back.properties == {"k": 1}
    assert back.properties is not None and type(next(iter(back.properties))) is str


# ---------------------------------------------------------------------------------------------
# Malformed input


@SLOW
@given(messages)
def test_every_truncation_decodes_or_raises_decode_error(m: Message) -> None:
    """A cut at a section boundary is a shorter, valid message; any other cut is an error."""
    wire = m.encode()
    boundaries = _section_starts(wire)
    for n in range(len(wire)):
        if n in boundaries:
            Message.decode(wire[:n])
        else:
            with pytest.raises(DecodeError):
                Message.decode(wire[:n])


def _section_starts(wire: bytes) -> set[int]:
    starts = set()
    p = 0
    while p < len(wire):
        starts.add(p)
        _, p = codec.decode_from(wire, p)
    return starts


@SLOW
@given(messages, st.data())
def test_corrupt_input_raises_only_decode_error(m: Message, data: st.DataObject) -> None:
    wire = bytearray(m.encode())
    assume(wire)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    try:
        Message.decode(bytes(wire))
    except DecodeError as e:
        assert 0 <= e.offset <= len(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_decode_error(wire: bytes) -> None:
    for data in (wire, b"\x00\x53\x73" + wire, b"\x00\x53\x74" + wire, b"\x00\x53\x70" + wire):
        with contextlib.suppress(DecodeError):
            Message.decode(data)


@pytest.mark.parametrize(
    "wire, text",
    [
        ("40", "expected a message section"),
        ("005379 40", "unknown message section descriptor 0x79"),
        ("00a3036162 63 40", "unknown message section descriptor symbol('abc')"),
        ("005375a00161 005370 45", "out of order"),
        ("005370 45 005370 45", "out of order or repeated"),
        ("005377 40 005377 40", "repeated"),
        ("005375 a10161", "data section is str, expected binary"),
        ("005377 40 005375 a00161", "out of order"),
        ("005375 a00161 005376 45", "amqp-sequence section after another body section"),
        ("005375 a00561", "truncated data section"),
        ("005373 c0030155 01", "properties message-id is int"),
        ("005373 c00402 405501", "properties user-id is int, expected binary"),
        ("005370 c00402 405501", "header priority is int, expected ubyte"),
        ("005370 c00706 404040404040", "header section has 6 fields"),
        ("005374 45", "application-properties is list, expected map"),
        ("005372 45", "annotations section is list, expected map"),
        ("005373 c003 01 a101", "properties list size mismatch"),
        ("005373 c0", "truncated"),
        ("005373 c00401 a102ff", "invalid UTF-8"),
    ],
)
def test_malformed_messages(wire: str, text: str) -> None:
    with pytest.raises(DecodeError, match=text.replace("(", r"\(").replace(")", r"\)")):
        Message.decode(bytes.fromhex(wire.replace(" ", "")))


def test_array_in_body_and_annotations() -> None:
    a = Array(symbol("d"), TypeCode.SYMBOL, symbol("a"), symbol("b"))
    m = Message(body=a, annotations={"x-opt": a})
    back = Message.decode(m.encode())
    same(a, back.body)
    assert back.annotations == {"x-opt": a}


def test_body_wrappers_repr_and_equality() -> None:
    assert repr(AmqpValue(b"x")) == "AmqpValue(b'x')"
    assert repr(AmqpSequence([1])) == "AmqpSequence([1])"
    assert repr(DataSections([b"a"])) == "DataSections([b'a'])"
    assert repr(SequenceSections([[1]])) == "SequenceSections([[1]])"
    assert AmqpValue(1) == AmqpValue(1) and AmqpValue(1) != AmqpValue(2)
    assert AmqpValue(1) != 1
    with pytest.raises(TypeError):
        hash(AmqpValue(1))


def test_decoded_message_pickles() -> None:
    """A decoded uuid is built without UUID.__init__: it must still pickle (for
    multiprocessing), as must the message."""
    import pickle

    m = Message.decode(Message(body=b"x", id=uuid.UUID(int=7), ttl=1.5).encode())
    assert pickle.loads(pickle.dumps(m)) == m
    assert pickle.loads(pickle.dumps(m.id)) == uuid.UUID(int=7)
