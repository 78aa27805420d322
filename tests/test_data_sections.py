"""Bytes bodies to data sections and back, a list at a time (links.data_sections/data_bodies).

The C versions must agree with the one-message Python functions they stand in for.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale.links import (
    _py_data_bodies,
    _py_data_sections,
    data_bodies,
    data_sections,
    decode_body,
    encode_body,
)
from amqscale.message import Message


@given(st.lists(st.binary(max_size=600), max_size=20))
def test_bodies_round_trip_and_match_the_one_message_encoding(bodies: list[bytes]) -> None:
    payloads = data_sections(bodies, 1 << 20)
    assert payloads == [encode_body(body) for body in bodies]
    assert data_bodies(payloads) == bodies
    for payload, body in zip(payloads, bodies, strict=True):
        assert Message.decode(payload).body == body


def test_the_boundary_between_the_short_and_long_forms() -> None:
    for size in (0, 255, 256, 65536):
        [payload] = data_sections([b"x" * size], 1 << 20)
        assert payload[3] == (0xA0 if size < 256 else 0xB0)
        assert data_bodies([payload]) == [b"x" * size]


@pytest.mark.parametrize("items", [[b"ok", "text"], [b"ok", bytearray(b"no")], [Message()]])
def test_anything_but_bytes_is_left_to_the_caller(items: list[object]) -> None:
    assert data_sections(items, 1 << 20) is None
    assert _py_data_sections(items, 1 << 20) is None


@pytest.mark.parametrize("convert", [data_sections, _py_data_sections])
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
    ]
    assert data_bodies(other) == [None] * len(other)
    assert _py_data_bodies(other) == [decode_body(p) for p in other] == [None] * len(other)
