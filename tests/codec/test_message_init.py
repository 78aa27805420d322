"""Message(...) builds the same object whether the C fast path (_ccodec.init_message) or
the Python code does it; a subclass always takes the Python code, so it is the reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale import codec
from amqscale.message import Message


class PythonBuilt(Message):
    __slots__ = ()


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(0, 255), st.text(max_size=5),
                    st.binary(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                           max_size=2))
_NAMES = st.sampled_from([
    "durable", "priority", "first_acquirer", "delivery_count", "instructions", "annotations",
    "id", "user_id", "address", "subject", "reply_to", "correlation_id", "content_type",
    "content_encoding", "group_id", "group_sequence", "reply_to_group_id", "properties",
    "footer", "ttl", "expiry_time", "creation_time"])
_TIMES = {"ttl", "expiry_time", "creation_time"}


@given(st.dictionaries(_NAMES, _VALUES, max_size=6), _VALUES)
def test_every_field_is_the_same_either_way(fields: dict[str, Any], body: Any) -> None:
    for name in _TIMES & set(fields):  # times must be numbers
        fields[name] = 1.5
    ours, reference = Message(body, **fields), PythonBuilt(body, **fields)
    for slot in Message.__slots__:
        assert getattr(ours, slot) == getattr(reference, slot), slot
        assert type(getattr(ours, slot)) is type(getattr(reference, slot)), slot


@pytest.mark.parametrize("cls", [Message, PythonBuilt])
def test_unknown_names_raise_and_name_them(cls: type[Message]) -> None:
    with pytest.raises(TypeError, match="'bogus'"):
        cls(b"x", id=1, bogus=2)


def test_the_c_path_is_taken_when_it_is_on() -> None:
    if codec._ccodec is None:
        pytest.skip("the C fast path is off")
    message = Message.__new__(Message)
    assert codec._ccodec.init_message(message, b"x", {"id": 7}) is True
    assert (message.id, message.body, message.priority) == (7, b"x", 4)
    assert codec._ccodec.init_message(message, b"x", {"ttl": 1.0}) is False
