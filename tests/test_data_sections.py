"""What send_many sends and Deliveries.bodies gives, a list at a time (links.encode_payloads,
links.data_bodies).

The C versions must agree with the one-message Python functions they stand in for.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale import codec
from amqscale.codec import DecodeError
from amqscale.core import DECODE_AHEAD, Arrival, decode_messages
from amqscale.links import (
    _py_data_bodies,
    _py_encode_payloads,
    data_bodies,
    data_body,
    decode_body,
    encode_body,
    encode_payloads,
)
from amqscale.message import Message


@given(st.lists(st.binary(max_size=600), max_size=20))
def test_bodies_round_trip_and_match_the_one_message_encoding(bodies: list[bytes]) -> None:
    payloads = encode_payloads(bodies, 1 << 20)
    assert payloads == [encode_body(body) for body in bodies]
    assert data_bodies(payloads) == bodies
    for payload, body in zip(payloads, bodies, strict=True):
        assert Message.decode(payload).body == body
        assert data_body(payload) == decode_body(payload) == body


def test_the_boundary_between_the_short_and_long_forms() -> None:
    for size in (0, 255, 256, 65536):
        [payload] = encode_payloads([b"x" * size], 1 << 20)
        assert payload[3] == (0xA0 if size < 256 else 0xB0)
        assert data_bodies([payload]) == [b"x" * size]


@pytest.mark.parametrize("items", [
    [b"ok", "text"], [b"ok", bytearray(b"no")], [Message(body={1})], [Message(id=2**70)]])
def test_anything_else_is_left_to_the_caller(items: list[object]) -> None:
    assert encode_payloads(items, 1 << 20) is None
    assert _py_encode_payloads(items, 1 << 20) is None


_LONGS = st.integers(-(2**63), 2**63 - 1)
_MESSAGES = st.builds(Message, body=st.binary(max_size=300), id=st.integers(0, 2**63),
                      properties=st.dictionaries(st.text(max_size=5), _LONGS, max_size=3))


@given(st.lists(_MESSAGES, max_size=10))
def test_messages_are_encoded_as_message_encode_does(messages: list[Message]) -> None:
    items: list[object] = [*messages, b"raw"]
    payloads = encode_payloads(items, 1 << 20)
    if codec._ccodec is None and messages:
        assert payloads is None  # Messages take the one-by-one path
    else:
        assert payloads == [m.encode() for m in messages] + [encode_body(b"raw")]


@pytest.mark.parametrize("convert", [encode_payloads, _py_encode_payloads])
def test_a_body_over_the_limit_is_left_to_the_caller(convert: Any) -> None:
    assert convert([b"a", b"x" * 300], 300) is None
    assert convert([b"a", b"x" * 300], 400) is not None


def test_payloads_that_are_not_one_data_section_give_none() -> None:
    other = [
        Message(body="text").encode(),  # amqp-value
        Message(body=b"x", id=1).encode(),  # a properties section first
        encode_body(b"abc")[:-1],  # truncated
        encode_body(b"abc") + b"\x00",  # trailing byte
        b"",
        encode_body(b"abc")[:4],  # a header cut short: no size byte
        encode_body(b"x" * 300)[:6],  # and no whole 4-byte size
    ]
    assert data_bodies(other) == [None] * len(other)
    assert _py_data_bodies(other) == [decode_body(p) for p in other] == [None] * len(other)
    assert [data_body(p) for p in other] == [None] * len(other)


def test_messages_decode_a_list_at_a_time_or_leave_it_to_the_caller() -> None:
    payloads = [Message(id=f"m{i}", body=b"x", properties={"k": i}).encode() for i in range(5)]
    decoded = decode_messages(payloads)
    if codec._ccodec is None:
        assert decoded is None
    else:
        assert decoded is not None
        assert [m.encode() for m in decoded] == payloads
    assert decode_messages([*payloads, b"\x00Sw\xa1"]) is None  # truncated: the caller's


def test_bulk_decoded_messages_are_left_to_the_collector() -> None:
    # The C decoder hides messages from the collector while it builds the list; each must
    # be tracked again, or a cycle through one would never be freed.
    payloads = [Message(id=i, body=b"x", properties={"k": i}).encode() for i in range(2000)]
    decoded = decode_messages(payloads)
    if decoded is None:
        pytest.skip("the C fast path is off")
    assert all(gc.is_tracked(m) for m in decoded)
    cycle = decoded[0]
    sentinel = _Sentinel()
    cycle.properties.update(self=cycle, sentinel=sentinel)  # type: ignore[union-attr]
    alive = weakref.ref(sentinel)
    del decoded, cycle, sentinel
    gc.collect()
    assert alive() is None


class _Sentinel:
    """Dies with the cycle it is put in."""


def test_one_at_a_time_an_arrival_decodes_ahead_and_a_bad_payload_raises_alone() -> None:
    payloads = [Message(id=i, body=b"x").encode() for i in range(DECODE_AHEAD + 8)]
    payloads[DECODE_AHEAD + 3] = b"\x00Sw\xa1"  # truncated
    arrival = Arrival(None, 0, payloads, None)  # type: ignore[arg-type]
    assert arrival.message(0).id == 0
    assert arrival.messages is not None
    decoded_ahead = sum(m is not None for m in arrival.messages)
    assert decoded_ahead == (DECODE_AHEAD if codec._ccodec is not None else 1)
    for i in range(1, DECODE_AHEAD + 3):
        assert arrival.message(i).id == i
    with pytest.raises(DecodeError):
        arrival.message(DECODE_AHEAD + 3)  # the bad one, and only it, raises
    assert [arrival.message(i).id for i in range(DECODE_AHEAD + 4, DECODE_AHEAD + 8)] == [
        DECODE_AHEAD + 4 + k for k in range(4)]
    assert arrival.message(5) is arrival.message(5)  # decoded once, kept


def test_an_arrival_decodes_in_bulk_once_and_a_bad_payload_raises_at_the_call() -> None:
    payloads = [Message(id=f"m{i}", body=b"x").encode() for i in range(4)]
    arrival = Arrival(None, 10, [*payloads, b"\x00Sw\xa1"], None)  # type: ignore[arg-type]
    first = arrival.messages_in(0, 2)
    assert [m.id for m in first] == ["m0", "m1"]
    assert arrival.message(1) is first[1]  # decoded once, kept
    assert [m.id for m in arrival.messages_in(1, 4)] == ["m1", "m2", "m3"]
    with pytest.raises(DecodeError):
        arrival.messages_in(3, 5)
    assert arrival.message(3).id == "m3"
