"""Lost, duplicated and out-of-order messages, counted per producer.

A consumer keeps, for each producer it hears from, one byte per sequence number seen (a
bytearray that grows) and the highest sequence so far: a sequence seen twice is a
duplicate, one below the highest is out of order. Consumers that share a queue each see a
part, so the exact counts come from merging their maps: `Seen.merge` ORs them, and lost is
what a producer sent that no consumer saw.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np


class ProducerSeen:
    """One producer's sequence numbers as one consumer saw them."""

    def __init__(self) -> None:
        self.seen = np.zeros(1024, dtype=np.uint8)
        self.received = self.duplicates = self.out_of_order = self.unique = 0
        self.highest = -1

    def add_many(self, seqs: np.ndarray) -> None:
        """Count a batch of sequence numbers (int64), in the order they arrived."""
        if not seqs.size:
            return
        self.received += int(seqs.size)
        top = int(seqs.max())
        if top >= self.seen.size:
            grown = np.zeros(max(top + 1, 2 * self.seen.size), dtype=np.uint8)
            grown[: self.seen.size] = self.seen
            self.seen = grown
        # the first arrival of each sequence new to this consumer; the rest are duplicates
        values, first = np.unique(seqs, return_index=True)
        new = self.seen[values] == 0
        fresh_at = np.sort(first[new])
        self.duplicates += int(seqs.size - fresh_at.size)
        fresh = seqs[fresh_at]
        self.seen[fresh] = 1
        self.unique += int(fresh.size)
        if fresh.size:
            before = np.maximum.accumulate(np.concatenate(([self.highest], fresh[:-1])))
            self.out_of_order += int(np.count_nonzero(fresh < before))
            self.highest = max(self.highest, int(fresh.max()))

    def add(self, seq: int) -> None:
        self.add_many(np.array([seq], dtype=np.int64))

    @property
    def missing(self) -> int:
        """Sequences below the highest seen that have not come (yet)."""
        return self.highest + 1 - self.unique


class Seen:
    """One consumer's view of every producer, keyed "run/producer"."""

    def __init__(self) -> None:
        self.producers: dict[str, ProducerSeen] = {}

    def producer(self, key: str) -> ProducerSeen:
        found = self.producers.get(key)
        if found is None:
            found = self.producers[key] = ProducerSeen()
        return found

    def encode(self) -> dict[str, dict[str, Any]]:
        return {key: {"seen": zlib.compress(p.seen[: p.highest + 1].tobytes(), 1),
                      "received": p.received,
                      "duplicates": p.duplicates, "out_of_order": p.out_of_order}
                for key, p in self.producers.items()}


@dataclass
class Merged:
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0


def merge(encoded: list[dict[str, dict[str, Any]]]) -> dict[str, Merged]:
    """Every consumer's map, merged per producer: a sequence two consumers both saw is a
    duplicate too."""
    maps: dict[str, np.ndarray] = {}
    totals: dict[str, Merged] = {}
    for consumer in encoded:
        for key, part in consumer.items():
            seen = np.frombuffer(zlib.decompress(part["seen"]), dtype=np.uint8)
            total = totals.setdefault(key, Merged())
            total.received += int(part["received"])
            total.out_of_order += int(part["out_of_order"])
            both = maps.get(key, np.zeros(0, dtype=np.uint8))
            if seen.size > both.size:
                both = np.concatenate([both, np.zeros(seen.size - both.size, np.uint8)])
            both[: seen.size] |= seen
            maps[key] = both
    for key, total in totals.items():
        total.unique = int(np.count_nonzero(maps[key]))
        total.duplicates = total.received - total.unique
    return totals
