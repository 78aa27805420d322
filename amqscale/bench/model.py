"""What a bench run produces: one `RunReport`, the same in memory, in JSON and in the
other outputs (amqscale.bench.output). docs/bench.md documents the JSON schema.

Latencies are microseconds. The three histograms of a run and of each second are named by
HISTOGRAMS: `latency` from the intended send time of the rate schedule (coordinated
omission accounted for; in an all-out run the intended time is the actual one), `service`
from the actual send, and `send_delay`, actual minus intended, recorded by the producers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .histograms import LatencyHistogram

SCHEMA = "amqscale-bench/1"
HISTOGRAMS = ("latency", "service", "send_delay")


def empty_histograms() -> dict[str, LatencyHistogram]:
    return {name: LatencyHistogram() for name in HISTOGRAMS}


@dataclass
class Interval:
    """One second of the run, every agent merged. `second` 0 starts at the start barrier."""

    second: int
    start: float  # epoch seconds
    warmup: bool  # the second begins inside the warm-up
    sent: int = 0
    received: int = 0
    in_flight: int = 0  # sent minus received, from the start to the end of this second
    missing: int = 0  # messages behind the newest received from each producer, not yet in
    histograms: dict[str, LatencyHistogram] = field(default_factory=empty_histograms)
    cpu_percent: dict[str, float] = field(default_factory=dict)  # by process

    def as_json(self) -> dict[str, Any]:
        return {"second": self.second, "start": self.start, "warmup": self.warmup,
                "sent": self.sent, "received": self.received, "in_flight": self.in_flight,
                "missing": self.missing,
                **{f"{name}_us": h.summary() for name, h in self.histograms.items()},
                "cpu_percent": self.cpu_percent}


@dataclass
class ProducerCounts:
    """What one producer sent and what became of it (lost, duplicated, out of order)."""

    producer: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0


@dataclass
class Summary:
    seconds: float = 0.0  # from the start barrier to the last message received
    sent: int = 0
    received: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # accepted, rejected, ...
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    stale: int = 0  # messages of another run (left on a broker's queue), not counted
    send_rate: float = 0.0  # msg/s, warm-up excluded
    receive_rate: float = 0.0
    megabytes_per_s: float = 0.0  # received bodies, 10**6 bytes
    histograms: dict[str, LatencyHistogram] = field(default_factory=empty_histograms)
    # by process: its CPU per message of the run (producers' per message sent, consumers'
    # per message received), so that they add up to what a message cost in all
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)
    producers: list[ProducerCounts] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why the run failed, if it did

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "sent": self.sent, "received": self.received,
                "outcomes": self.outcomes, "lost": self.lost, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order, "stale": self.stale,
                "send_rate": self.send_rate, "receive_rate": self.receive_rate,
                "megabytes_per_s": self.megabytes_per_s,
                **{f"{name}_us": h.summary() for name, h in self.histograms.items()},
                "cpu_us_per_msg": self.cpu_us_per_msg,
                "producers": [vars(p) for p in self.producers],
                "passed": self.passed, "failures": self.failures}


@dataclass
class RunReport:
    config: dict[str, Any]  # the options, as the JSON's "config" (no passwords)
    start: float = 0.0  # epoch seconds of the start barrier
    intervals: list[Interval] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)

    def as_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "config": self.config, "start": self.start,
                "intervals": [interval.as_json() for interval in self.intervals],
                "summary": self.summary.as_json(),
                "histograms": {name: h.encode()
                               for name, h in self.summary.histograms.items()}}
