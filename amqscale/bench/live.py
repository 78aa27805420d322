"""What a bench run shows: a line every second while it runs (with a progress bar on a
terminal) and the summary tables at the end. Units are ASCII ("us", "ms"), for logs."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .coordinator import Aggregator, Observer
from .histograms import PERCENTILES, LatencyHistogram
from .model import Interval, RunReport

LABELS = {"latency": "latency", "service": "service time", "send_delay": "send delay"}
CAPTION = ("latency: from the intended send time (coordinated omission accounted for); "
           "service time: from the actual send; send delay: actual minus intended")


def duration(us: float) -> str:
    """Microseconds, shown in the unit that keeps 3-4 digits."""
    if us < 1000:
        return f"{us:.0f} us"
    if us < 1_000_000:
        return f"{us / 1000:.3g} ms" if us < 10_000 else f"{us / 1000:.1f} ms"
    return f"{us / 1e6:.2f} s"


def cpu_by_agent(cpu_percent: dict[str, float]) -> str:
    """"producer-0 52%+88%": each agent's own process, then its workers added up."""
    own: dict[str, float] = {}
    workers: dict[str, float] = {}
    for process, percent in cpu_percent.items():
        agent, _, worker = process.partition("/")
        if worker:
            workers[agent] = workers.get(agent, 0.0) + percent
        else:
            own[agent] = percent
    return " ".join(f"{agent} {own[agent]:.0f}%+{workers.get(agent, 0.0):.0f}%"
                    for agent in own)


def interval_line(interval: Interval, in_flight: int | None) -> str:
    latency = interval.histograms["latency"]
    parts = [f"{interval.second:>4}s{'  warm-up' if interval.warmup else ''}",
             f"sent {interval.sent:>9,}/s", f"received {interval.received:>9,}/s"]
    if in_flight is not None:
        parts.append(f"in flight {in_flight:>7,}")
    if latency.count:
        parts.append(f"latency p50 {duration(latency.percentile(50))} "
                     f"p99 {duration(latency.percentile(99))} max {duration(latency.max())}")
    parts.append(f"missing {interval.missing:,}")
    if interval.cpu_percent:
        parts.append("cpu " + cpu_by_agent(interval.cpu_percent))
    return "  ".join(parts)


class LiveView(Observer):
    """A line a second and, on a terminal, a progress bar for count or duration runs."""

    def __init__(self, out: TextIO | None = None, quiet: bool = False) -> None:
        self.console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
        if not self.console.is_terminal:  # a log or a pipe: room for the widest table
            self.console.width = max(self.console.width, 120)
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None
        self.sent = self.received = 0

    def started(self, aggregator: Aggregator) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        config = aggregator.config
        total: float | None
        if config.duration is not None:
            total, what = config.warmup + config.duration, "seconds"
        else:
            total, what = aggregator.config.total_count, "messages"
        self.what = what
        self.progress = Progress(TextColumn(f"[bold]{what}"), BarColumn(),
                                 TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task(what, total=total)
        self.progress.start()

    def second(self, interval: Interval, aggregator: Aggregator) -> None:
        self.sent += interval.sent
        self.received += interval.received
        has_producers = bool(aggregator.agents("producer"))
        in_flight = max(0, self.sent - self.received) if has_producers and \
            aggregator.agents("consumer") else None
        if not self.quiet:
            self.console.print(interval_line(interval, in_flight))
        if self.progress is not None:
            done = interval.second + 1 if self.what == "seconds" else (
                self.received if aggregator.agents("consumer") else self.sent)
            self.progress.update(self.task, completed=done)

    def finished(self, report: RunReport) -> None:
        if self.progress is not None:
            self.progress.stop()
        for table in summary_tables(report):
            self.console.print(table)


def _headline(config: dict[str, Any]) -> str:
    where = config["url"] or "peer-to-peer"
    kind = "Message objects" if (config["messages"] or config["durable"] or
                                 config["properties"] or config["ttl"] is not None) else "bytes"
    rate = f"rate {config['rate']} msg/s" if config["rate"] else "all-out"
    calls = f"batches of {config['batch']}" if config["batch"] else "one per call"
    return (f"amqscale bench: {where}, {config['producers']} producer(s), "
            f"{config['consumers']} consumer(s), {config['connections']} connection(s) and "
            f"{config['workers']} worker(s) each; {config['size']} B {kind}, "
            f"{'at-most-once' if config['presettled'] else 'at-least-once'}, {rate}, {calls}")


def summary_tables(report: RunReport) -> list[Any]:
    """The end-of-run tables: counts and rates, latency percentiles, CPU, per producer."""
    summary = report.summary
    counts = Table(title=_headline(report.config), title_justify="left", show_header=False)
    counts.add_row("sent", f"{summary.sent:,}", f"{summary.send_rate:,.0f} msg/s")
    counts.add_row("received", f"{summary.received:,}",
                   f"{summary.receive_rate:,.0f} msg/s, {summary.megabytes_per_s:,.1f} MB/s")
    counts.add_row("outcomes", ", ".join(f"{k} {v:,}" for k, v in summary.outcomes.items())
                   or "-", "")
    links = report.config["connections"] > 1 or report.config["addresses"] > 1
    notes = [f"stale {summary.stale:,}" if summary.stale else "",
             "order is kept per link; a producer here has several" if links else ""]
    counts.add_row("lost / duplicated / out of order",
                   f"{summary.lost:,} / {summary.duplicates:,} / {summary.out_of_order:,}",
                   "; ".join(note for note in notes if note))
    counts.add_row("seconds", f"{summary.seconds:.2f}", "")
    tables: list[Any] = [counts, latency_table(summary.histograms)]
    if summary.cpu_us_per_msg:
        cpu = Table("process", "CPU per message", title="CPU", title_justify="left")
        for process, us in summary.cpu_us_per_msg.items():
            cpu.add_row(process, f"{us:.2f} us")
        tables.append(cpu)
    if len(summary.producers) > 1 or any(p.lost or p.duplicates or p.out_of_order
                                         for p in summary.producers):
        per = Table("producer", "sent", "received", "lost", "duplicated", "out of order",
                    title="per producer", title_justify="left")
        for p in summary.producers:
            per.add_row(p.producer, f"{p.sent:,}", f"{p.received:,}", f"{p.lost:,}",
                        f"{p.duplicates:,}", f"{p.out_of_order:,}")
        tables.append(per)
    rate = summary.receive_rate or summary.send_rate
    tables.append(f"sent {summary.sent:,}  received {summary.received:,}  lost {summary.lost:,}  "
                  f"duplicates {summary.duplicates:,}  out of order {summary.out_of_order:,}  "
                  f"at {rate:,.0f} msg/s")  # the old bench's last line, for scripts
    tables.append("result: passed" if summary.passed else
                  "result: FAILED: " + "; ".join(summary.failures))
    return tables


def latency_table(histograms: dict[str, LatencyHistogram]) -> Table:
    table = Table("", "count", *(f"p{p:g}" for p in PERCENTILES), "max",
                  title="latency, warm-up excluded", title_justify="left",
                  caption=CAPTION, caption_justify="left")
    for name, histogram in histograms.items():
        if not histogram.count:
            continue
        table.add_row(LABELS[name], f"{histogram.count:,}",
                      *(duration(histogram.percentile(p)) for p in PERCENTILES),
                      duration(histogram.max()))
    return table
