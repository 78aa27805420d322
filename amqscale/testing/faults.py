"""Counting what a fault run delivered: lost, duplicated, in order (tests and perf/faults.py).

Messages carry their sequence number as the body (decimal ASCII). A `Tally` counts what
arrived; `missing(n)` lists the numbers below n that never did, `duplicates` how many came
more than once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from amqscale.errors import ContainerClosed, DeliveryLost, LinkDetached


class Tally:
    """Sequence numbers seen, with how often. Thread-safe enough for one writer."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._unique: set[int] = set()
        self.duplicates = 0
        self.others = 0  # bodies that were no sequence number
        self.stop = False  # set to end count_into()

    def add(self, bodies: Iterable[Any]) -> None:
        for body in bodies:
            try:
                seq = int(body)
            except (TypeError, ValueError):  # not a numbered message: counted apart
                self.others += 1
                continue
            self.seen.append(seq)
            if seq in self._unique:
                self.duplicates += 1
            else:
                self._unique.add(seq)

    @property
    def unique(self) -> int:
        return len(self._unique)

    def missing(self, count: int) -> list[int]:
        return [i for i in range(count) if i not in self._unique]

    def summary(self, count: int) -> str:
        missing = self.missing(count)
        return (f"{self.unique} of {count} arrived, {self.duplicates} duplicates, "
                f"{len(missing)} missing (first: {missing[:10]})")


def count_into(receiver: Any, tally: Tally, idle: float = 0.2) -> None:
    """Take everything `receiver` (a blocking Receiver) gets into `tally`, accepting it,
    until `tally.stop` is set or the receiver ends. A delivery whose connection was lost
    is counted (it arrived) and left to the peer, which sends it again."""
    while not tally.stop:
        try:
            deliveries = receiver.receive_many(timeout=idle)
        except TimeoutError:
            continue
        except (LinkDetached, ContainerClosed):
            return
        tally.add(deliveries.bodies)
        with contextlib.suppress(DeliveryLost, LinkDetached):
            deliveries.accept()


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
