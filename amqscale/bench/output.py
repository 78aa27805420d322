"""The files a bench run writes, each a pure function of its `RunReport` (amqscale.bench.model).

- `write_json`: the report itself (docs/bench.md documents the schema).
- `write_csv`: one row a second: counts, the percentiles of each histogram, CPU by process.
- `write_hdr_log`: an HdrHistogram interval log, format 1.3 as Java's `HistogramLogWriter`
  writes it, one `Tag=<histogram>` line per histogram a second, so Java's
  `HistogramLogProcessor`, HistogramLogAnalyzer and the other HdrHistogram tools read it;
  `read_hdr_log` adds a log's intervals back up by tag (Java-written logs too).
- `write_percentiles`: the whole run's latency distribution as `.hgrm` text in ms, the table
  wrk2 -L prints and hdr-plot and HdrHistogram's gnuplot scripts read.
- `plot`: a PNG of the rates and p99 per second and of the whole run's percentile curves.

Every function builds its whole output in memory first and then opens `path` once, so a
failure to render leaves no half-written file and a failure to write is the OSError of
`open`, which names the path. Recorded values are microseconds; the log's Interval_Max
column, the `.hgrm` file and the plot are in milliseconds, as the HdrHistogram tools expect.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from .histograms import HIGHEST_US, PERCENTILES, LatencyHistogram
from .model import HISTOGRAMS, Interval, RunReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PathLike = str | os.PathLike[str]

US_PER_MS = 1000.0  # the unit ratio from recorded microseconds to the tools' milliseconds
HDR_LOG_FORMAT_VERSION = "1.3"  # Java's HistogramLogWriter since tags (2.1.9)
WARMUP_TAG_PREFIX = "warmup-"  # as Artemis perf tags its warm-up intervals
UNTAGGED = ""  # read_hdr_log's key for the lines of a log that have no Tag=
INTERVAL_SECONDS = 1.0  # every Interval of a RunReport is one second
TICKS_PER_HALF_DISTANCE = 5  # the percentile iterator's resolution, HdrHistogram's default

_HDR_LEGEND = '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"'
_INTERVAL_COLUMNS = ("second", "start", "warmup", "sent", "received", "in_flight", "missing")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TITLE_KEYS = ("url", "address", "producers", "consumers", "rate", "size", "duration",
               "warmup", "workers", "presettled")


# --- JSON -----------------------------------------------------------------------------------

def write_json(report: RunReport, path: PathLike) -> None:
    """The report's `as_json()` form, indented by 2."""
    _write_text(path, json.dumps(report.as_json(), indent=2) + "\n")


# --- CSV ------------------------------------------------------------------------------------

def write_csv(report: RunReport, path: PathLike) -> None:
    """A header and one row per interval (see csv_header); a report without intervals gives
    the header alone."""
    processes = _processes(report.intervals)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(processes))
    writer.writerows(_csv_row(interval, processes) for interval in report.intervals)
    _write_text(path, buffer.getvalue())


def csv_header(processes: Iterable[str] = ()) -> list[str]:
    """The CSV's columns: the interval's counts, then per histogram of HISTOGRAMS its count,
    percentiles and max in us and its out-of-range count, then the CPU of each process."""
    columns = list(_INTERVAL_COLUMNS)
    for name in HISTOGRAMS:
        columns.append(f"{name}_count")
        columns.extend(f"{name}_p{percentile:g}_us" for percentile in PERCENTILES)
        columns.extend((f"{name}_max_us", f"{name}_out_of_range"))
    columns.extend(f"cpu_{process}_percent" for process in processes)
    return columns


def _processes(intervals: Iterable[Interval]) -> list[str]:
    # The union in order of first appearance: a process that starts late gets a column too.
    return list(dict.fromkeys(p for interval in intervals for p in interval.cpu_percent))


def _csv_row(interval: Interval, processes: list[str]) -> list[Any]:
    row: list[Any] = [interval.second, interval.start, int(interval.warmup), interval.sent,
                      interval.received, interval.in_flight, interval.missing]
    for name in HISTOGRAMS:
        row.extend(_histogram_cells(_histogram(interval.histograms, name)))
    # An empty cell, not 0, for a process that reported nothing that second.
    row.extend(interval.cpu_percent.get(process, "") for process in processes)
    return row


def _histogram_cells(histogram: LatencyHistogram) -> list[int]:
    """count, PERCENTILES, max, out_of_range: summary()'s values without its mean."""
    if not histogram.count:
        return [0] * (len(PERCENTILES) + 2) + [histogram.out_of_range]
    return [histogram.count, *histogram.percentiles(PERCENTILES), histogram.max(),
            histogram.out_of_range]


def _histogram(histograms: Mapping[str, LatencyHistogram], name: str) -> LatencyHistogram:
    return histograms.get(name) or LatencyHistogram()


# --- HdrHistogram interval log ----------------------------------------------------------------

def write_hdr_log(report: RunReport, path: PathLike) -> None:
    """An interval log with one `Tag=<name>` line (`Tag=warmup-<name>` in the warm-up) per
    non-empty histogram per second. hdrh's HistogramLogWriter is not used: it cannot write
    tags, its output_start_time raises and output_base_time sets no base."""
    base = _base_time(report)
    lines = [*hdr_log_header(base)]
    for interval in report.intervals:
        lines.extend(_interval_lines(interval, base))
    _write_text(path, "".join(lines))


def hdr_log_header(base_time: float) -> list[str]:
    """The header lines of a log whose start and base time is `base_time` (epoch s), in the
    order Java's writers put them."""
    return ["#[Logged with amqscale bench: values in us, Interval_Max in ms]\n",
            f"#[Histogram log format version {HDR_LOG_FORMAT_VERSION}]\n",
            f"#[StartTime: {base_time:.3f} (seconds since epoch), {_java_date(base_time)}]\n",
            f"#[BaseTime: {base_time:.3f} (seconds since epoch)]\n",
            _HDR_LEGEND + "\n"]


def _java_date(epoch: float) -> str:
    """Java's Date.toString in UTC, "Tue Nov 14 22:13:20 UTC 2023"; English names whatever
    the locale, as Java writes them (strftime's %a and %b follow LC_TIME)."""
    date = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return (f"{_DAYS[date.weekday()]} {_MONTHS[date.month - 1]} {date:%d %H:%M:%S} UTC "
            f"{date.year}")


def _base_time(report: RunReport) -> float:
    # The start barrier, or an earlier interval's start: a negative timestamp would be
    # skipped by Java's reader (its range starts at 0) and not even parsed by hdrh's.
    starts = [interval.start for interval in report.intervals]
    if report.start:
        starts.append(report.start)
    return min(starts, default=0.0)


def _interval_lines(interval: Interval, base: float) -> Iterator[str]:
    prefix = WARMUP_TAG_PREFIX if interval.warmup else ""
    for name in HISTOGRAMS:
        histogram = interval.histograms.get(name)
        if histogram is None or not histogram.count:
            continue
        payload = histogram.encode()["hdr"]
        # Java's format, "%.3f" throughout; the max divided, not floor-divided as hdrh does.
        yield (f"Tag={prefix}{name},{interval.start - base:.3f},{INTERVAL_SECONDS:.3f},"
               f"{histogram.max() / US_PER_MS:.3f},{payload}\n")


def read_hdr_log(path: PathLike) -> dict[str, LatencyHistogram]:
    """Every interval of an HdrHistogram interval log added up by tag (UNTAGGED for lines
    without one). The log does not carry LatencyHistogram's out_of_range, so it is 0 unless
    the log holds values above one hour (Java-written, in other units), which are clamped
    and counted as LatencyHistogram does. Raises ValueError naming the line it cannot read."""
    totals: dict[str, LatencyHistogram] = {}
    with open(path, encoding="utf-8") as log:
        for number, line in enumerate(log, 1):
            try:
                parsed = _parse_interval_line(line)
            except Exception as exc:  # hdrh raises TypeError, zlib.error, its cookie errors
                raise ValueError(f"{os.fspath(path)}:{number}: {exc}") from exc
            if parsed is not None:
                tag, decoded = parsed
                _add_decoded(totals.setdefault(tag, LatencyHistogram()), decoded)
    return totals


def _parse_interval_line(line: str) -> tuple[str, HdrHistogram] | None:
    """(tag, histogram) of an interval line, None for comments, the legend and blank lines."""
    text = line.strip()
    if not text or text[0] in '#"':
        return None
    tag = UNTAGGED
    if text.startswith("Tag="):
        tag, _, text = text[len("Tag="):].partition(",")
    fields = text.split(",")
    if len(fields) != 4:
        raise ValueError(f"not an interval line (start,length,max,histogram): {line!r}")
    for field in fields[:3]:
        float(field)  # a ValueError naming the field if it is not a number
    try:
        return tag, HdrHistogram.decode(fields[3].encode("ascii"))
    except Exception as exc:
        raise ValueError(f"not an HdrHistogram payload: {exc!r}") from exc


def _add_decoded(target: LatencyHistogram, decoded: HdrHistogram) -> None:
    if not decoded.get_total_count():
        return
    try:
        target.hdr.add(decoded)
        return
    except IndexError:  # values above our hour: hdrh refuses the whole histogram
        pass
    # Counter by counter, clamping at the top as LatencyHistogram.record_many does.
    for index in range(decoded.counts_len):
        count = decoded.get_count_at_index(index)
        if count:
            value = decoded.get_value_from_index(index)
            if value > HIGHEST_US:
                target.out_of_range += count
                value = HIGHEST_US
            target.hdr.record_value(value, count)


# --- .hgrm percentile distribution ----------------------------------------------------------

def write_percentiles(report: RunReport, path: PathLike) -> None:
    """The whole run's `latency` histogram as an .hgrm percentile table, in ms."""
    histogram = _histogram(report.summary.histograms, "latency")
    _write_text(path, percentile_distribution(histogram))


def percentile_distribution(histogram: LatencyHistogram,
                            ticks_per_half_distance: int = TICKS_PER_HALF_DISTANCE) -> str:
    """The .hgrm text of `histogram` in ms, line for line what Java's
    outputPercentileDistribution prints. hdrh's own is not used: it needs a binary file, its
    percentile ticks are not Java's (it drops the floor from the tick count, so its levels
    are 0.19, 0.271, ... instead of 0.2, 0.3, ...), its StdDeviation is not scaled to the
    output unit, it prints "TotalCount = 10000.000" where Java and C print
    "Total count = 10000", and its mean and deviation walk every counter in Python
    (0.1 s a histogram)."""
    hdr = histogram.hdr
    digits = hdr.significant_figures
    recorded = _recorded(histogram)
    lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}\n\n"]
    for value, level, total in percentile_rows(histogram, ticks_per_half_distance, recorded):
        row = (f"{_java_fixed(value / US_PER_MS, digits):>12} {_java_fixed(level / 100, 12):>2}"
               f" {total:10d}")
        if level != 100.0:
            row += f" {_java_fixed(1 / (1 - level / 100), 2):>14}"
        lines.append(row + "\n")
    mean, stddev = _mean_and_stddev(histogram, recorded)
    lines.append(f"#[Mean    = {_java_fixed(mean / US_PER_MS, digits):>12}, "
                 f"StdDeviation   = {_java_fixed(stddev / US_PER_MS, digits):>12}]\n")
    lines.append(f"#[Max     = {_java_fixed(histogram.max() / US_PER_MS, digits):>12}, "
                 f"Total count    = {histogram.count:12d}]\n")
    lines.append(f"#[Buckets = {hdr.bucket_count:12d}, "
                 f"SubBuckets     = {hdr.sub_bucket_count:12d}]\n")
    return "".join(lines)


def _recorded(histogram: LatencyHistogram) -> list[tuple[int, int]]:
    """(lowest value of the counter, count) of every non-zero counter, in value order."""
    hdr = histogram.hdr
    counts = hdr.counts
    return [(int(hdr.get_value_from_index(index)), int(counts[index]))
            for index in range(hdr.counts_len) if counts[index]]


def _mean_and_stddev(histogram: LatencyHistogram,
                     recorded: list[tuple[int, int]]) -> tuple[float, float]:
    # Java's getMean and getStdDeviation: each counter at its range's median, summed as doubles.
    total = histogram.count
    if not total:
        return 0.0, 0.0
    hdr = histogram.hdr
    medians = []
    for lowest, count in recorded:
        size = int(hdr.get_highest_equivalent_value(lowest)) - lowest + 1
        medians.append((float(lowest + (size >> 1)), count))
    mean = sum(median * count for median, count in medians) / total
    deviation = sum((median - mean) * (median - mean) * count for median, count in medians)
    return mean, math.sqrt(deviation / total)


def percentile_rows(histogram: LatencyHistogram,
                    ticks_per_half_distance: int = TICKS_PER_HALF_DISTANCE,
                    recorded: list[tuple[int, int]] | None = None,
                    ) -> Iterator[tuple[int, float, int]]:
    """(value in us, percentile level 0..100, count up to the value) at each tick of Java's
    PercentileIterator: `ticks_per_half_distance` steps in each halving of the distance to
    100%, then a last step at 100%."""
    total = histogram.count
    if not total:
        return
    hdr = histogram.hdr
    level = 0.0
    cumulative = 0
    for lowest, count in _recorded(histogram) if recorded is None else recorded:
        cumulative += count
        value = int(hdr.get_highest_equivalent_value(lowest))
        while 100.0 * cumulative / total >= level:
            yield value, level, cumulative
            if cumulative == total:
                yield value, 100.0, cumulative
                return
            level = _next_level(level, ticks_per_half_distance)


def _next_level(level: float, ticks_per_half_distance: int) -> float:
    gap = 100.0 - level
    if gap <= 0.0:
        return level
    # Java: ticks * 2^((long) log2(100 / gap) + 1); the floor makes the ticks even steps.
    halvings = int(math.log(100.0 / gap) / math.log(2))
    return level + 100.0 / (ticks_per_half_distance * 2 ** (halvings + 1))


def _java_fixed(number: float, decimals: int) -> str:
    """`number` as Java's %.<decimals>f prints it: the shortest decimal of the double
    rounded half up, where Python's % rounds the binary value half to even."""
    if not math.isfinite(number):
        return "Infinity" if number > 0 else ("-Infinity" if number < 0 else "NaN")
    quantum = Decimal(1).scaleb(-decimals)
    return format(Decimal(repr(number)).quantize(quantum, rounding=ROUND_HALF_UP), "f")


# --- PNG ------------------------------------------------------------------------------------

def plot(report: RunReport, path: PathLike) -> None:
    """A PNG: rates and latency p99 per second (warm-up shaded) over the whole run's latency
    percentile curves. Drawn on an Agg canvas of its own, so pyplot's global backend and
    figure list are left alone. A report without intervals or samples still plots, with a
    note in the empty panel."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError("amqscale bench plot needs matplotlib: "
                           "pip install amqscale[bench]") from exc
    figure = Figure(figsize=(10, 9), layout="constrained")
    rates, distribution = figure.subplots(2, 1)
    _plot_rates(rates, report.intervals)
    _plot_distribution(distribution, report.summary.histograms)
    figure.suptitle(plot_title(report.config))
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    _write_bytes(path, buffer.getvalue())


def plot_title(config: Mapping[str, Any]) -> str:
    """The run's main options, `key=value`, wrapped; any scalar options if none is known."""
    items = [(key, config[key]) for key in _TITLE_KEYS if config.get(key) is not None]
    if not items:
        items = [(key, value) for key, value in config.items()
                 if isinstance(value, str | int | float | bool)][:8]
    text = "amqscale bench" + (": " + ", ".join(f"{k}={v}" for k, v in items) if items else "")
    return "\n".join(textwrap.wrap(text, 100))


def _plot_rates(axes: Axes, intervals: list[Interval]) -> None:
    axes.set_title("Rate and latency p99 per second")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("msg/s")
    if not intervals:
        _note(axes, "no intervals")
        return
    # Steps over [second, second + 1): a last point closes the last second.
    seconds = [interval.second for interval in intervals] + [intervals[-1].second + 1]
    for label, counts in (("sent", [i.sent for i in intervals]),
                          ("received", [i.received for i in intervals])):
        axes.plot(seconds, counts + counts[-1:], drawstyle="steps-post", label=f"{label}/s")
    for index, (first, last) in enumerate(_warmup_spans(intervals)):
        axes.axvspan(first, last + 1, color="0.88", zorder=0,
                     label=None if index else "warm-up")
    # Headroom above the rates, so a steady rate is not drawn on the frame; the x axis is
    # exactly the run.
    axes.set_ylim(0, max(max(i.sent for i in intervals), max(i.received for i in intervals),
                         1) * 1.15)
    axes.set_xlim(seconds[0], seconds[-1])
    latency = axes.twinx()
    p99 = [_p99_ms(interval) for interval in intervals]
    latency.plot(seconds, p99 + p99[-1:], drawstyle="steps-post", color="C3",
                 label="latency p99")
    latency.set_ylabel("latency p99 (ms)")
    latency.set_ylim(0, max((v for v in p99 if not math.isnan(v)), default=1.0) * 1.15 or 1.0)
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = latency.get_legend_handles_labels()
    axes.legend(handles + more_handles, labels + more_labels, loc="lower right")


def _warmup_spans(intervals: list[Interval]) -> list[tuple[int, int]]:
    """(first, last) second of each run of consecutive warm-up intervals."""
    spans: list[tuple[int, int]] = []
    for interval in intervals:
        if not interval.warmup:
            continue
        if spans and spans[-1][1] == interval.second - 1:
            spans[-1] = (spans[-1][0], interval.second)
        else:
            spans.append((interval.second, interval.second))
    return spans


def _p99_ms(interval: Interval) -> float:
    histogram = interval.histograms.get("latency")
    if histogram is None or not histogram.count:
        return math.nan  # a gap in the line, not a fake 0 ms
    return histogram.percentile(99.0) / US_PER_MS


def _plot_distribution(axes: Axes, histograms: Mapping[str, LatencyHistogram]) -> None:
    axes.set_title("Latency by percentile, whole run")
    axes.set_xscale("log")
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms)")
    right = 10.0 ** 5  # 99.999% at least, further if the run has the samples for it
    plotted = False
    for name in HISTOGRAMS:
        histogram = histograms.get(name)
        if histogram is None or not histogram.count:
            continue
        xs, ys = _percentile_curve(histogram)
        axes.plot(xs, ys, label=f"{name} (max {histogram.max() / US_PER_MS:.3f} ms)")
        right = max(right, xs[-1])
        plotted = True
    decades = range(0, math.ceil(math.log10(right)) + 1)
    axes.set_xlim(1, 10.0 ** decades[-1])
    axes.set_xticks([10.0 ** k for k in decades], [_percentile_label(k) for k in decades])
    axes.minorticks_off()
    axes.set_ylim(bottom=0)
    axes.grid(True, which="major", alpha=0.3)
    if plotted:
        axes.legend(loc="lower right")
    else:
        _note(axes, "no samples")


def _percentile_curve(histogram: LatencyHistogram) -> tuple[list[float], list[float]]:
    """x = 1/(1 - percentile), y = ms, at the .hgrm file's ticks; 100% has no x, the legend
    gives the max instead."""
    xs: list[float] = []
    ys: list[float] = []
    for value, level, _ in percentile_rows(histogram):
        if level < 100.0:
            xs.append(1.0 / (1.0 - level / 100.0))
            ys.append(value / US_PER_MS)
    return xs, ys


def _percentile_label(decade: int) -> str:
    """0% for 1 (x = 1/(1-0)), 90% for 10, 99% for 100, 99.9% for 1000, ..."""
    if decade < 2:
        return ("0%", "90%")[decade]
    return "99" + ("." + "9" * (decade - 2) if decade > 2 else "") + "%"


def _note(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="0.4")


# --- files ----------------------------------------------------------------------------------

def _write_text(path: PathLike, text: str) -> None:
    # newline="": "\n" as written, the line ending Java's log writer and csv readers expect.
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(text)


def _write_bytes(path: PathLike, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
