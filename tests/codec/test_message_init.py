"""Message(...) builds the same object whether the C fast path (MessageBase.__init__) or the
Python reference (Message._init_python) does it."""

from __future__ import annotations

import copy
import inspect
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale import codec
from amqscale.message import Message

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(0, 255), st.text(max_size=5),
                    st.binary(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                           max_size=2))
_NAMES = st.sampled_from([
    "durable", "priority", "first_acquirer", "delivery_count", "instructions", "annotations",
    "id", "user_id", "address", "subject", "reply_to", "correlation_id", "content_type",
    "content_encoding", "group_id", "group_sequence", "reply_to_group_id", "properties",
    "footer", "ttl", "expiry_time", "creation_time"])
_TIMES = {"ttl", "expiry_time", "creation_time"}


def python_built(*args: Any, **fields: Any) -> Message:
    message = Message.__new__(Message)
    message._init_python(*args, **fields)
    return message


def assert_same(ours: Message, reference: Message) -> None:
    for slot in Message.__slots__:
        assert getattr(ours, slot) == getattr(reference, slot), slot
        assert type(getattr(ours, slot)) is type(getattr(reference, slot)), slot


@given(st.dictionaries(_NAMES, _VALUES, max_size=6), _VALUES, st.booleans())
def test_every_field_is_the_same_either_way(fields: dict[str, Any], body: Any,
                                            body_by_name: bool) -> None:
    for name in _TIMES & set(fields):  # times must be numbers
        fields[name] = 1.5
    if body_by_name:
        assert_same(Message(body=body, **fields), python_built(body=body, **fields))
    else:
        assert_same(Message(body, **fields), python_built(body, **fields))


def test_a_subclass_is_built_the_same() -> None:
    class Sub(Message):
        __slots__ = ("extra",)

    built = Sub(b"x", id=3, ttl=2)
    assert isinstance(built, Sub)
    assert (built.id, built.body, built.ttl, built.priority) == (3, b"x", 2.0, 4)
    assert_same(built, python_built(b"x", id=3, ttl=2))


def test_init_again_resets_every_field() -> None:
    message = Message(b"x", id=1, subject="s")
    message.__init__(b"y")  # type: ignore[misc]
    assert_same(message, python_built(b"y"))


@pytest.mark.parametrize("build", [Message, python_built])
def test_unknown_names_raise_and_name_them(build: Any) -> None:
    with pytest.raises(TypeError, match="'bogus'"):
        build(b"x", id=1, bogus=2)


@pytest.mark.parametrize("build", [Message, python_built])
def test_body_twice_or_too_many_arguments_raise(build: Any) -> None:
    with pytest.raises(TypeError, match="body"):
        build(b"x", body=b"y")
    with pytest.raises(TypeError, match="positional"):
        build(b"x", b"y")


def test_the_c_path_is_taken_when_it_is_on() -> None:
    if codec._ccodec is None:
        pytest.skip("the C fast path is off")
    assert isinstance(Message(), codec._ccodec.MessageBase)
    assert "__init__" not in vars(Message)  # MessageBase.__init__ is Message's


def test_the_signature_and_copies_are_those_of_the_reference() -> None:
    assert str(inspect.signature(Message)) == "(body: 'Any' = None, **fields: 'Any') -> 'None'"
    message = Message(b"x", id=1, properties={"k": 1}, ttl=2)
    for twin in (pickle.loads(pickle.dumps(message)), copy.copy(message),
                 copy.deepcopy(message)):
        assert type(twin) is Message
        assert_same(twin, message)
