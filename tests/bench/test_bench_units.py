"""The load generator's pure layers: batched HdrHistogram recording against hdrh's own,
the rate schedule, sizes and stamps, and the loss / duplicate / order counting merged
over consumers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from amqscale.bench import stamp
from amqscale.bench.histograms import HIGHEST_US, LatencyHistogram
from amqscale.bench.schedule import Schedule, Step, parse_rate, parse_seconds
from amqscale.bench.tracking import Seen, merge

samples = st.lists(st.integers(min_value=-10, max_value=2 * HIGHEST_US), max_size=300)


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_batched_recording_is_hdrh_s_own(first: list[int], second: list[int]) -> None:
    ours = LatencyHistogram()
    ours.record_many(np.array(first, dtype=np.int64))  # small batches: np.add.at
    ours.record_many(np.array(second * 40, dtype=np.int64))  # large ones: np.bincount
    reference = HdrHistogram(1, HIGHEST_US, 3)
    for value in first + second * 40:
        assert reference.record_value(min(max(value, 0), HIGHEST_US))
    assert list(ours.hdr.counts) == list(reference.counts)
    assert ours.count == reference.get_total_count() == len(first) + 40 * len(second)
    assert ours.out_of_range == sum(1 for v in first + second * 40
                                    if not 0 <= v <= HIGHEST_US)
    if ours.count:
        for percentile in (0, 1, 50, 90, 99, 99.9, 99.99, 100):
            assert ours.percentile(percentile) == reference.get_value_at_percentile(percentile)
        assert ours.mean() == pytest.approx(reference.get_mean_value())
        assert ours.max() == reference.get_max_value()


def test_histograms_travel_and_merge_exactly() -> None:
    parts = [LatencyHistogram() for _ in range(3)]
    for number, part in enumerate(parts):
        part.record_many(np.arange(number * 1000, number * 1000 + 5000))
        part.record_repeated(HIGHEST_US + 5, 2)  # clamped and counted
    merged = LatencyHistogram.merged(LatencyHistogram.decode(p.encode()) for p in parts)
    whole = LatencyHistogram()
    for number in range(3):
        whole.record_many(np.arange(number * 1000, number * 1000 + 5000))
    whole.record_repeated(HIGHEST_US + 5, 6)
    assert merged.summary() == whole.summary()
    assert merged.count == 15006 and merged.out_of_range == 6
    assert merged.count_above(HIGHEST_US) == 6


def test_a_schedule_is_its_rates_integrated() -> None:
    schedule = Schedule([Step(1000, 2), Step(3000, math.inf)], ramp=1)
    # the ramp: 500 messages in its second; then 1000/s for 2 s; then 3000/s
    assert schedule.intended(0) == 0
    assert schedule.intended(500) == pytest.approx(1.0)
    assert schedule.intended(1500) == pytest.approx(2.0)
    assert schedule.intended(2500) == pytest.approx(3.0)
    assert schedule.intended(5500) == pytest.approx(4.0)
    assert schedule.intended(125) == pytest.approx(0.5)  # 1000 t^2 / 2 = 125
    for index in (0, 1, 499, 500, 2501, 9999):
        assert schedule.count_before(schedule.intended(index) + 1e-9) == index + 1
    times = [schedule.intended(i) for i in range(6000)]
    assert times == sorted(times)
    assert schedule.rate_at(0.5) == 500 and schedule.rate_at(4) == 3000


def test_producers_take_turns_so_together_they_keep_the_schedule() -> None:
    producers = 3
    total = Schedule([Step(900, math.inf)])
    mine = [Schedule([Step(900, math.inf)]) for _ in range(producers)]
    merged = sorted(mine[p].intended(i * producers + p) for p in range(producers)
                    for i in range(300))
    assert merged == [total.intended(i) for i in range(900)]


@pytest.mark.parametrize(("text", "steps"), [
    ("5000", [Step(5000, math.inf)]),
    ("1000:10s,2000:1m,5000", [Step(1000, 10), Step(2000, 60), Step(5000, math.inf)]),
    ("100:500ms", [Step(100, 0.5)]),
])
def test_rates_parse(text: str, steps: list[Step]) -> None:
    assert parse_rate(text) == steps


def test_durations_parse_and_refuse() -> None:
    assert parse_seconds("2m", "--duration") == 120
    assert parse_seconds("1h", "--duration") == 3600
    with pytest.raises(ValueError, match="--duration: '-1' is not a duration"):
        parse_seconds("-1", "--duration")


def test_sizes_and_stamps() -> None:
    fixed, uniform = stamp.parse_sizes("100"), stamp.parse_sizes("40-60")
    weighted = stamp.parse_sizes("40:1,1000:3")
    assert fixed.drawer(1)() == 100
    drawn = [uniform.drawer(7)() for _ in range(200)]
    assert min(drawn) >= 40 and max(drawn) <= 60
    draw = weighted.drawer(3)
    big = sum(draw() == 1000 for _ in range(4000))
    assert 2700 < big < 3300  # three in four
    assert weighted.drawer(3)() == stamp.parse_sizes("40:1,1000:3").drawer(3)()  # seeded
    body = stamp.STAMP.pack(stamp.MAGIC, 9, 2, 41, 1000, 1005) + b"x" * 10
    assert stamp.read(body) == stamp.Stamp(9, 2, 41, 1000, 1005)
    assert stamp.read(b"short") is None and stamp.read(b"\0" * 64) is None
    assert len(stamp.filler("random", 64)) == 64
    with pytest.raises(ValueError, match="zeros, random or text"):
        stamp.filler("ones", 10)


def test_loss_duplicates_and_order_merge_over_consumers() -> None:
    first, second = Seen(), Seen()
    first.producer("1/0").add_many(np.array([0, 1, 2, 5, 4, 4], dtype=np.int64))
    second.producer("1/0").add_many(np.array([3, 5, 6, 9], dtype=np.int64))
    one = first.producer("1/0")
    assert (one.duplicates, one.out_of_order, one.missing) == (1, 1, 1)  # 4 twice; 4 < 5
    merged = merge([first.encode(), second.encode()])["1/0"]
    # 0..6 and 9 came: 8 unique of 10 (7 and 8 lost); 4 twice here, 5 in both consumers
    assert (merged.received, merged.unique, merged.duplicates) == (10, 8, 2)
    assert merged.out_of_order == 1


def test_the_line_a_second_and_the_summary_tables() -> None:
    import io

    from rich.console import Console

    from amqscale.bench.config import BenchConfig
    from amqscale.bench.live import cpu_by_agent, interval_line, summary_tables
    from amqscale.bench.model import Interval, ProducerCounts, RunReport, Summary

    interval = Interval(3, 0.0, warmup=False, sent=2000, received=1990, missing=4,
                        cpu_percent={"producer-0": 52.0, "producer-0/worker-0": 80.0,
                                     "producer-0/worker-1": 8.0, "consumer-0": 61.0})
    interval.histograms["latency"].record_many(np.array([500, 800, 12_000]))
    line = interval_line(interval, in_flight=10)
    for words in ("3s", "sent     2,000/s", "received     1,990/s", "in flight      10",
                  "p50 800 us", "max 12.0 ms", "missing 4",
                  "cpu producer-0 52%+88% consumer-0 61%+0%"):
        assert words in line, (words, line)
    assert cpu_by_agent({}) == ""
    summary = Summary(sent=10, received=9, lost=1, failures=["1 message(s) lost"],
                      producers=[ProducerCounts("producer-0", 10, 9, 1, 0, 0)],
                      cpu_us_per_msg={"producer-0": 4.5})
    summary.histograms["latency"].record_many(np.arange(1, 10))
    report = RunReport(config=BenchConfig().as_json(), summary=summary)
    out = io.StringIO()
    console = Console(file=out, width=160)
    for table in summary_tables(report):
        console.print(table)
    text = out.getvalue()
    for words in ("peer-to-peer, 1 producer(s), 1 consumer(s)", "1 / 0 / 0", "p99.99",
                  "4.50 us", "producer-0", "result: FAILED: 1 message(s) lost"):
        assert words in text, (words, text)
