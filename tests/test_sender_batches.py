"""How a Sender keeps outcomes per batch (core.Batch) and how workers report them as runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqscale.core import ACCEPTED as _ACCEPTED
from amqscale.core import Batch as _Batch
from amqscale.core import Result as _Result
from amqscale.workers import protocol as p

_REJECTED = _Result(p.REJECTED)


def _batch(size: int) -> _Batch:
    return _Batch(None, 100, [b"m%d" % i for i in range(size)])  # type: ignore[arg-type]


def test_in_order_runs_of_one_outcome_keep_no_list() -> None:
    batch = _batch(10)
    assert batch.settle(0, 4, _ACCEPTED) == 4
    assert batch.settle(4, 10, _ACCEPTED) == 6
    assert batch.results is None and batch.pending == 0
    assert [batch.result(i) for i in range(10)] == [_ACCEPTED] * 10


def test_out_of_order_mixed_and_repeated_outcomes() -> None:
    batch = _batch(6)
    assert batch.settle(0, 2, _ACCEPTED) == 2
    assert batch.settle(4, 6, _REJECTED) == 2  # a gap: the list is made
    assert batch.settle(4, 6, _ACCEPTED) == 0  # reported twice: counted once
    assert batch.pending == 2
    assert [batch.result(i) for i in range(6)] == [
        _ACCEPTED, _ACCEPTED, None, None, _ACCEPTED, _ACCEPTED]
    assert batch.settle(2, 4, _REJECTED) == 2 and batch.pending == 0


@given(st.lists(st.tuples(st.integers(0, 19), st.integers(1, 5), st.booleans()),
                max_size=30))
def test_a_batch_agrees_with_a_plain_list(settlements: list[tuple[int, int, bool]]) -> None:
    batch = _batch(20)
    expected: list[Any] = [None] * 20
    for lo, length, accepted in settlements:
        hi = min(20, lo + length)
        result = _ACCEPTED if accepted else _REJECTED
        newly = sum(1 for x in expected[lo:hi] if x is None)
        expected[lo:hi] = [result] * (hi - lo)
        assert batch.settle(lo, hi, result) == newly
    assert [batch.result(i) for i in range(20)] == expected
    assert batch.pending == expected.count(None)


@pytest.mark.parametrize(("adds", "runs"), [
    ([(0, 1), (1, 2), (2, 5)], [0, 5]),
    ([(3, 4), (5, 6), (6, 7)], [3, 4, 5, 7]),
    ([(9, 10), (2, 3)], [9, 10, 2, 3]),
])
def test_outcome_runs(adds: list[tuple[int, int]], runs: list[int]) -> None:
    got: list[int] = []
    for start, end in adds:
        p.add_to_runs(got, start, end)
    assert got == runs
    assert p.run_length(got) == sum(end - start for start, end in adds)
