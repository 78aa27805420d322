"""The stamp at the start of every bench message body, and the bodies around it.

36 bytes, little-endian: magic b"AQB1", run id (u32), producer (u32), sequence (u64), then
the intended and the actual send time (i64 microseconds since the epoch). Wall-clock
microseconds, not a monotonic clock, because sender and receiver are different processes
(on different hosts, their clocks must be in step: NTP or PTP; docs/bench.md). A producer's
last message is its end marker: sequence END and, in the intended field, how many it sent,
so a receiver on its own knows what to expect.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

STAMP = struct.Struct("<4sIIQqq")
# The same layout for numpy, to read a batch of stamps at once (consumers do).
DTYPE = np.dtype([("magic", "S4"), ("run", "<u4"), ("producer", "<u4"), ("seq", "<u8"),
                  ("intended", "<i8"), ("sent", "<i8")])
assert DTYPE.itemsize == STAMP.size
MAGIC = b"AQB1"
SIZE = STAMP.size  # 36
END = 2**64 - 1


@dataclass(frozen=True)
class Stamp:
    run: int
    producer: int
    seq: int
    intended_us: int
    sent_us: int


def read(body: bytes | bytearray | memoryview) -> Stamp | None:
    """The stamp of `body`, or None for a body that is not a bench message."""
    if len(body) < SIZE:
        return None
    magic, run, producer, seq, intended, sent = STAMP.unpack_from(body)
    if magic != MAGIC:
        return None
    return Stamp(run, producer, seq, intended, sent)


@dataclass(frozen=True)
class Sizes:
    """Body sizes: fixed ("100"), uniform in a range ("100-1000") or weighted choices
    ("100:80,1000:15,100000:5", size:weight as a distribution)."""

    choices: tuple[int, ...]
    weights: tuple[float, ...] = ()
    uniform: bool = False

    @property
    def largest(self) -> int:
        return max(self.choices)

    def drawer(self, seed: int) -> Callable[[], int]:
        """A function that draws the next size (seeded: the same run gives the same sizes)."""
        if len(self.choices) == 1:
            size = self.choices[0]
            return lambda: size
        rng = random.Random(seed)
        if self.uniform:
            low, high = self.choices
            return lambda: rng.randint(low, high)
        pool = rng.choices(self.choices, self.weights, k=4096)
        position = iter(range(2**62))
        return lambda: pool[next(position) & 4095]


def parse_sizes(text: str) -> Sizes:
    """`--size`, checked: every size must hold the stamp."""
    try:
        if "-" in text and ":" not in text:
            low, high = (int(part) for part in text.split("-", 1))
            if low > high:
                raise ValueError
            sizes = Sizes((low, high), uniform=True)
        elif ":" in text:
            pairs = [part.split(":", 1) for part in text.split(",")]
            sizes = Sizes(tuple(int(s) for s, _ in pairs), tuple(float(w) for _, w in pairs))
            if any(w < 0 for w in sizes.weights) or not sum(sizes.weights) > 0:
                raise ValueError
        else:
            sizes = Sizes((int(text),))
    except ValueError:
        raise ValueError(f"--size: {text!r} is not a size (say 100, 100-1000, or "
                         "100:80,1000:20 for weighted sizes)") from None
    if min(sizes.choices) < SIZE:
        raise ValueError(f"--size: {min(sizes.choices)} B is too small: every body starts "
                         f"with a {SIZE}-byte stamp (producer, sequence, send times)")
    return sizes


def filler(content: str, largest: int) -> bytes:
    """What follows the stamp: zeros, random bytes (incompressible), or repeated text."""
    if content == "zeros":
        return bytes(largest)
    if content == "random":
        return os.urandom(largest)
    if content == "text":
        text = b"amqscale bench "
        return (text * (largest // len(text) + 1))[:largest]
    raise ValueError(f"--body-content must be zeros, random or text, not {content!r}")
