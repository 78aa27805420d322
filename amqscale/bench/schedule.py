"""The rate schedule: when the i-th message of a run is meant to be sent.

A schedule is a list of steps (rate in msg/s, seconds), optionally opened by a linear ramp
from 0 to the first step's rate; the last rate holds once the steps are over. Producer p
of P sends the run's messages p, p + P, p + 2P, ..., so the producers together follow the
schedule exactly and each carries 1/P of the rate. `intended(i)` is the send time, in
seconds from the start, that the latency with coordinated omission accounted for starts
from: a producer that falls behind still owes each message at its intended time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    rate: float  # msg/s
    seconds: float  # math.inf: the rest of the run


class Schedule:
    """The inverse of a piecewise rate curve: message index -> intended seconds."""

    def __init__(self, steps: list[Step], ramp: float = 0.0) -> None:
        if not steps:
            raise ValueError("a rate schedule needs at least one step")
        for step in steps:
            if not step.rate > 0 or not step.seconds > 0:
                raise ValueError(f"a rate step needs a positive rate and duration, not "
                                 f"{step.rate:g}:{step.seconds:g}")
        if ramp < 0:
            raise ValueError(f"--ramp must not be negative, not {ramp:g}")
        self.steps = steps
        self.ramp = ramp
        # segments: (start seconds, start count, rate at start, slope msg/s^2, seconds)
        self._segments: list[tuple[float, float, float, float, float]] = []
        t = count = 0.0
        if ramp:
            slope = steps[0].rate / ramp
            self._segments.append((0.0, 0.0, 0.0, slope, ramp))
            t, count = ramp, steps[0].rate * ramp / 2
        for step in steps[:-1]:
            self._segments.append((t, count, step.rate, 0.0, step.seconds))
            t, count = t + step.seconds, count + step.rate * step.seconds
        self._segments.append((t, count, steps[-1].rate, 0.0, math.inf))
        self._cursor = 0

    @property
    def seconds(self) -> float:
        """How long the ramp and the steps last (the last step's time included)."""
        last = self.steps[-1].seconds
        return self.ramp + sum(step.seconds for step in self.steps[:-1]) + (
            last if math.isfinite(last) else 0.0)

    def rate_at(self, t: float) -> float:
        for start, _, rate, slope, seconds in self._segments:
            if t < start + seconds:
                return rate + slope * max(0.0, t - start)
        return self.steps[-1].rate

    def intended(self, index: int) -> float:
        """Seconds from the start at which message `index` (0-based) is due. Indexes are
        asked for in increasing order, so the segment search resumes where it left off."""
        segments = self._segments
        cursor = self._cursor
        while cursor + 1 < len(segments) and index >= segments[cursor + 1][1]:
            cursor += 1
        while cursor > 0 and index < segments[cursor][1]:
            cursor -= 1
        self._cursor = cursor
        start, count, rate, slope, _ = segments[cursor]
        owed = index - count
        if slope == 0.0:
            return start + owed / rate
        # count(t) = rate*t + slope*t^2/2 within the segment: solve for t
        return start + (-rate + math.sqrt(rate * rate + 2 * slope * owed)) / slope

    def count_before(self, t: float) -> int:
        """How many messages are due before `t` seconds (the first index at or after t)."""
        for start, count, rate, slope, seconds in self._segments:
            if t < start + seconds:
                dt = max(0.0, t - start)
                return math.ceil(count + rate * dt + slope * dt * dt / 2)
        raise AssertionError("the last segment is endless")


def parse_rate(text: str) -> list[Step]:
    """`--rate`: "5000" (msg/s), or steps "1000:10s,5000:30s" (rate:duration, PerfTest's
    --variable-rate form); the last step's rate holds after the steps."""
    steps = []
    parts = text.split(",")
    for number, part in enumerate(parts, 1):
        rate_text, _, seconds_text = part.strip().partition(":")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ValueError(f"--rate: {rate_text!r} is not a rate in msg/s") from None
        seconds = parse_seconds(seconds_text, "--rate") if seconds_text else math.inf
        if not seconds_text and number < len(parts):
            raise ValueError(f"--rate: the step {part!r} needs a duration (rate:seconds)")
        steps.append(Step(rate, seconds))
    return steps


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str, option: str) -> float:
    """"10", "10s", "500ms", "2m", "1h" -> seconds."""
    body = text.strip()
    for unit in ("ms", "s", "m", "h"):
        if body.endswith(unit):
            number, scale = body[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = body, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a duration (say 10, 10s, 500ms or 2m)"
                         ) from None
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f"{option}: {text!r} is not a duration (say 10, 10s, 500ms or 2m)")
    return seconds
