"""The coordinator of a bench run: it starts the agents behind a start barrier, merges
their reports second by second, decides when the consumers have everything, and makes the
RunReport.

The barrier: consumers start first (peer-to-peer, their listeners' URLs go to the
producers), then producers; once every agent has reported "ready" (connected, links open),
all get one start time a little ahead, so they begin together whatever their start-up
took. The consumers stop when they have received as many messages as the producers sent,
or after `timeout` seconds without a new one once the producers are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .config import AgentPlan, BenchConfig, plan
from .histograms import LatencyHistogram
from .launch import Launcher, LocalLauncher
from .model import HISTOGRAMS, Interval, ProducerCounts, RunReport, Summary
from .tracking import merge

READY_TIMEOUT = 90.0
START_LEAD = 0.3  # seconds between the last "ready" and the start
LATE_REPORT_GRACE = 1.5  # a second is shown once every agent reported it, or after this


class BenchError(Exception):
    """The run could not be made: an agent failed to start, connect or finish."""


class Aggregator:
    """Every agent's reports, merged: the per-second series and the final summary."""

    def __init__(self, config: BenchConfig, plans: list[AgentPlan]) -> None:
        self.config = config
        self.plans = {p.name: p for p in plans}
        self.start = 0.0
        self.intervals: dict[int, Interval] = {}
        self.reported: dict[int, set[str]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, dict[str, tuple[int, int]]] = {}
        self.ends: dict[str, int] = {}
        self.received_by: dict[str, int] = {}  # each consumer's count so far
        self.last_progress = time.monotonic()

    def agents(self, role: str) -> list[str]:
        return [name for name, p in self.plans.items() if p.role == role]

    def interval(self, second: int) -> Interval:
        found = self.intervals.get(second)
        if found is None:
            found = self.intervals[second] = Interval(
                second, self.start + second, warmup=second < self.config.warmup)
            self.reported[second] = set()
        return found

    @property
    def received(self) -> int:
        return sum(self.received_by.values())

    def add(self, report: dict[str, Any]) -> None:
        kind, agent = report["kind"], report["agent"]
        # a consumer's count so far, in its "count" and "interval" reports
        if report.get("total", 0) > self.received_by.get(agent, 0):
            self.received_by[agent] = report["total"]
            self.last_progress = time.monotonic()
        if kind == "interval":
            self._add_interval(agent, report)
        elif kind == "done":
            self.done[agent] = report
            self.ends.update(report.get("ends", {}))

    def _add_interval(self, agent: str, report: dict[str, Any]) -> None:
        interval = self.interval(report["second"])
        self.reported[report["second"]].add(agent)
        interval.sent += report.get("sent", 0)
        interval.received += report.get("received", 0)
        for name, encoded in report["histograms"].items():
            interval.histograms[name].add(LatencyHistogram.decode(encoded))
        for process, seconds in report["cpu"].items():
            interval.cpu_percent[process] = round(100.0 * seconds, 1)
        if "progress" in report:
            self.progress[agent] = report["progress"]
            self.ends.update(report.get("ends", {}))
            interval.missing = self.missing()

    def missing(self) -> int:
        """Messages behind the newest received of each producer that no consumer has."""
        highest: dict[str, int] = {}
        unique: dict[str, int] = {}
        for progress in self.progress.values():
            for key, (top, count) in progress.items():
                highest[key] = max(highest.get(key, -1), top)
                unique[key] = unique.get(key, 0) + count
        return sum(max(0, highest[key] + 1 - unique[key]) for key in highest)

    def complete(self, second: int, running: set[str]) -> bool:
        """Whether every agent still running reported `second` (or it is late enough)."""
        if running <= self.reported.get(second, set()):
            return True
        return time.time() > self.start + second + 1 + LATE_REPORT_GRACE

    def producers_done(self) -> bool:
        return all(name in self.done for name in self.agents("producer"))

    def expected(self) -> int | None:
        """How many messages the consumers should get, when that is known yet."""
        producers = self.agents("producer")
        if producers:
            if not self.producers_done():
                return None
            return sum(self.done[name]["sent"] for name in producers)
        if self.config.count is not None:  # a receiver on its own, told how many
            return self.config.count
        if len(self.ends) >= self.config.producers:  # ... or told by the end markers
            return sum(self.ends.values())
        return None

    # -- the report ------------------------------------------------------------------------

    def report(self) -> RunReport:
        seconds = sorted(self.intervals)
        sent = received = 0
        for second in seconds:
            interval = self.intervals[second]
            sent += interval.sent
            received += interval.received
            interval.in_flight = max(0, sent - received) if self.agents("producer") else 0
        report = RunReport(config=self.config.as_json(), start=self.start,
                           intervals=[self.intervals[s] for s in seconds])
        report.summary = self._summary()
        return report

    def _summary(self) -> Summary:
        producers = [self.done[n] for n in self.agents("producer") if n in self.done]
        consumers = [self.done[n] for n in self.agents("consumer") if n in self.done]
        summary = Summary()
        summary.sent = sum(p["sent"] for p in producers)
        summary.received = sum(c["received"] for c in consumers)
        summary.stale = sum(c["stale"] for c in consumers)
        for p in producers:
            for outcome, count in p["outcomes"].items():
                summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + count
        for name in HISTOGRAMS:
            summary.histograms[name] = LatencyHistogram.merged(
                LatencyHistogram.decode(agent["histograms"][name])
                for agent in producers + consumers if name in agent["histograms"])
        self._count_producers(summary, consumers)
        self._rates(summary, producers, consumers)
        self._cpu(summary, producers, consumers)
        summary.failures = self._failures(summary, consumers)
        return summary

    def _count_producers(self, summary: Summary, consumers: list[dict[str, Any]]) -> None:
        merged = merge([c["seen"] for c in consumers])
        sent_by = {f"{self.config.seed}/{self.plans[n].index}": self.done[n]["sent"]
                   for n in self.agents("producer") if n in self.done}
        if not sent_by:  # a receiver on its own: what the end markers said
            sent_by = dict(self.ends)
        for key in sorted(set(sent_by) | set(merged), key=_producer_order):
            seen = merged.get(key)
            counts = ProducerCounts(producer=_producer_name(key, self.config.seed),
                                    sent=sent_by.get(key, 0))
            if seen is not None:
                counts.received, counts.duplicates = seen.received, seen.duplicates
                counts.out_of_order = seen.out_of_order
            unique = seen.unique if seen else 0
            counted = key in sent_by and bool(self.agents("consumer"))  # send alone: unknown
            counts.lost = max(0, counts.sent - unique) if counted else 0
            summary.producers.append(counts)
        summary.lost = sum(p.lost for p in summary.producers)
        if not sent_by and self.config.count is not None:  # told only how many in all
            summary.lost = max(0, self.config.count - sum(
                m.unique for m in merged.values()))
        summary.duplicates = sum(p.duplicates for p in summary.producers)
        summary.out_of_order = sum(p.out_of_order for p in summary.producers)

    def _rates(self, summary: Summary, producers: list[dict[str, Any]],
               consumers: list[dict[str, Any]]) -> None:
        opened = self.start + self.config.warmup
        if producers:
            last = max(p["last_sent"] for p in producers)
            measured = sum(p["measured"] for p in producers)
            summary.send_rate = _rate(measured, last - opened)
        if consumers:
            last = max(c["last_measured"] for c in consumers)
            measured = sum(c["measured"] for c in consumers)
            if not producers:  # on its own, the receiver measures from its first message
                firsts = [c["first_measured"] for c in consumers if c["measured"]]
                opened = min(firsts) if firsts else opened
            summary.receive_rate = _rate(measured, last - opened)
            summary.seconds = round(max(0.0, last - self.start), 3) if measured else 0.0
            received = sum(c["received"] for c in consumers)
            average = sum(c["bytes"] for c in consumers) / received if received else 0.0
            summary.megabytes_per_s = round(summary.receive_rate * average / 1e6, 3)
        elif producers:
            summary.seconds = round(max(p["last_sent"] for p in producers) - self.start, 3)

    def _cpu(self, summary: Summary, producers: list[dict[str, Any]],
             consumers: list[dict[str, Any]]) -> None:
        for agents, messages in ((producers, summary.sent), (consumers, summary.received)):
            for agent in agents:
                for process, seconds in agent["cpu"].items():
                    summary.cpu_us_per_msg[process] = round(
                        seconds / max(messages, 1) * 1e6, 2)

    def _failures(self, summary: Summary, consumers: list[dict[str, Any]]) -> list[str]:
        config, failures = self.config, []
        if summary.lost:
            failures.append(f"{summary.lost} message(s) lost")
        if summary.duplicates:
            failures.append(f"{summary.duplicates} message(s) duplicated")
        if consumers and not summary.received:
            failures.append("nothing was received")
        refused = {k: v for k, v in summary.outcomes.items()
                   if k not in ("accepted", "presettled") and v}
        if refused:
            failures.append("outcomes other than accepted: " + ", ".join(
                f"{v} {k}" for k, v in sorted(refused.items())))
        p99 = summary.histograms["latency"].percentile(99.0)
        if config.max_p99 is not None and consumers and p99 > config.max_p99:
            failures.append(f"latency p99 {_ms(p99)} is above --max-p99 "
                            f"{_ms(config.max_p99)}")
        rate = summary.receive_rate if consumers else summary.send_rate
        if config.min_rate is not None and rate < config.min_rate:
            failures.append(f"rate {rate:,.0f} msg/s is below --min-rate "
                            f"{config.min_rate:,.0f}")
        return failures


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 and count else 0.0


def _ms(us: float) -> str:
    return f"{us / 1000:.3f} ms"


def _producer_order(key: str) -> tuple[int, int]:
    run, _, producer = key.partition("/")
    return int(run), int(producer)


def _producer_name(key: str, seed: int) -> str:
    run, _, producer = key.partition("/")
    return f"producer-{producer}" if int(run) == seed else f"run-{run}/producer-{producer}"


# -- the run ---------------------------------------------------------------------------------


class Observer:
    """What a live display is told (amqscale.bench.live); all of it is optional."""

    def started(self, aggregator: Aggregator) -> None: ...

    def second(self, interval: Interval, aggregator: Aggregator) -> None: ...

    def finished(self, report: RunReport) -> None: ...


def run(config: BenchConfig, *, roles: tuple[str, ...] = ("consumer", "producer"),
        launcher: Launcher | None = None, observer: Observer | None = None,
        on_ready: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> RunReport:
    """Run the agents of `config` for `roles`; returns the merged RunReport. Raises
    ValueError for a bad option, BenchError when an agent fails."""
    plans = plan(config, roles)
    for agent in plans:
        agent.any_run = roles == ("consumer",)
    launcher = launcher or LocalLauncher()
    observer = observer or Observer()
    aggregator = Aggregator(config, plans)
    try:
        ready = _start_agents(launcher, plans)
        if on_ready is not None:
            on_ready(ready)
        aggregator.start = time.time() + START_LEAD
        launcher.set_start(aggregator.start)
        observer.started(aggregator)
        _follow(launcher, aggregator, observer)
    finally:
        launcher.close()
    report = aggregator.report()
    observer.finished(report)
    return report


def _start_agents(launcher: Launcher, plans: list[AgentPlan]) -> dict[str, dict[str, Any]]:
    """Start every agent and wait until each is ready. Through a broker they all start at
    once; peer-to-peer the producers start once the consumers listen, to get their URLs."""
    ready: dict[str, dict[str, Any]] = {}
    consumers = [p for p in plans if p.role == "consumer"]
    producers = [p for p in plans if p.role == "producer"]
    if all(producer.url is not None for producer in producers):
        launcher.start(plans)
        _await_ready(launcher, plans, ready)
        return ready
    launcher.start(consumers)
    _await_ready(launcher, consumers, ready)
    urls = [ready[c.name]["url"] for c in consumers]
    for producer in producers:
        producer.url = urls[producer.index % len(urls)]  # to a consumer's listener, in turn
    launcher.start(producers)
    _await_ready(launcher, producers, ready)
    return ready


def _await_ready(launcher: Launcher, plans: list[AgentPlan],
                 ready: dict[str, dict[str, Any]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = {p.name for p in plans}
    while waiting:
        report = launcher.next_report(0.2)
        if report is not None:
            if report["kind"] == "error":
                raise BenchError(report["error"])
            if report["kind"] == "ready":
                ready[report["agent"]] = report
                waiting.discard(report["agent"])
            continue
        gone = waiting & set(launcher.exited())
        if gone:
            raise BenchError(f"{', '.join(sorted(gone))} ended before it was ready")
        if time.monotonic() > deadline:
            raise BenchError(f"{', '.join(sorted(waiting))} not ready in "
                             f"{READY_TIMEOUT:g} s")


def _follow(launcher: Launcher, aggregator: Aggregator, observer: Observer) -> None:
    """Merge reports until every agent is done; stop the consumers when it is time."""
    config = aggregator.config
    names = set(aggregator.plans)
    shown = 0
    stopped = False
    while len(aggregator.done) < len(names):
        report = launcher.next_report(0.1)
        if report is not None:
            if report["kind"] == "error":
                raise BenchError(report["error"])
            aggregator.add(report)
        running = names - set(aggregator.done)
        while shown in aggregator.intervals and aggregator.complete(shown, running):
            observer.second(aggregator.intervals[shown], aggregator)
            shown += 1
        if not stopped and _consumers_finished(aggregator, config):
            launcher.stop_consumers()
            stopped = True
        if report is None:
            gone = running & set(launcher.exited())
            if gone:
                raise BenchError(f"{', '.join(sorted(gone))} ended without a report")
    for second in sorted(aggregator.intervals):
        if second >= shown:
            observer.second(aggregator.intervals[second], aggregator)


def _consumers_finished(aggregator: Aggregator, config: BenchConfig) -> bool:
    expected = aggregator.expected()
    if expected is not None and aggregator.received >= expected:
        return True
    idle = time.monotonic() - aggregator.last_progress
    if not aggregator.agents("producer"):  # a receiver on its own
        if config.duration is not None and \
                time.time() > aggregator.start + config.warmup + config.duration:
            return True
        return idle > config.timeout  # the first message included
    return aggregator.producers_done() and idle > config.timeout
