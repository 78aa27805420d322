"""amqscale.bench.output: the JSON, CSV, HdrHistogram log, .hgrm and PNG of a RunReport.

The reports are built by hand from amqscale.bench.model with known samples: this tests the
output layer alone. The HdrHistogram log and the .hgrm are also checked against Java's
HdrHistogram (Debian's libhdrhistogram-java, scripts/setup.sh): its HistogramLogProcessor
must read our log and print our .hgrm line for line, and a log Java's HistogramLogWriter
writes must read back here.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amqscale.bench import output
from amqscale.bench.histograms import HIGHEST_US, PERCENTILES, LatencyHistogram
from amqscale.bench.model import HISTOGRAMS, Interval, RunReport, Summary

START = 1_700_000_000.25  # epoch s of the start barrier
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JARS = ("/usr/share/java/hdrhistogram.jar", "/usr/share/java/HdrHistogram.jar")
JAVA_TIMEOUT = 60


def make_report(seconds: int = 4, warmup: int = 1, samples: int = 1000) -> RunReport:
    """`seconds` intervals, the first `warmup` of them warm-up, each histogram with `samples`
    values (500 us + 3 ms per second + noise); the summary merges the measured seconds."""
    rng = np.random.default_rng(7)
    intervals = []
    for second in range(seconds):
        interval = Interval(second=second, start=START + second, warmup=second < warmup,
                            sent=samples, received=samples - second, in_flight=second,
                            missing=second % 2,
                            cpu_percent={"agent-0": 50.0 + second})
        if second % 2:  # a process seen in some seconds only: a column, empty elsewhere
            interval.cpu_percent["broker"] = 12.5
        for offset, name in enumerate(HISTOGRAMS):
            values = 500 + 3000 * second + 100 * offset + rng.integers(0, 2000, samples)
            interval.histograms[name].record_many(values)
        intervals.append(interval)
    measured = [i for i in intervals if not i.warmup]
    summary = Summary(
        seconds=float(len(measured)), sent=sum(i.sent for i in intervals),
        received=sum(i.received for i in intervals),
        histograms={name: LatencyHistogram.merged(i.histograms[name] for i in measured)
                    for name in HISTOGRAMS})
    return RunReport(config={"rate": samples, "size": 100, "producers": 2, "consumers": 2,
                             "url": "amqp://localhost:5672", "password": None},
                     start=START, intervals=intervals, summary=summary)


def empty_report() -> RunReport:
    return RunReport(config={}, start=START)


# --- JSON -----------------------------------------------------------------------------------

def test_json_round_trips_with_the_histograms_percentiles(tmp_path: Path) -> None:
    report = make_report()
    path = tmp_path / "run.json"
    output.write_json(report, path)
    text = path.read_text()
    assert text.startswith('{\n  "schema"')  # indent 2
    loaded = json.loads(text)
    assert loaded == json.loads(json.dumps(report.as_json()))
    assert len(loaded["intervals"]) == len(report.intervals)
    for name, histogram in report.summary.histograms.items():
        summary = loaded["summary"][f"{name}_us"]
        assert summary["count"] == histogram.count == 3000
        for percentile in PERCENTILES:
            assert summary[f"p{percentile:g}"] == histogram.percentile(percentile)
        assert summary["max"] == histogram.max()
        decoded = LatencyHistogram.decode(loaded["histograms"][name])
        assert decoded.count == histogram.count
        assert decoded.percentile(99.9) == histogram.percentile(99.9)


# --- CSV ------------------------------------------------------------------------------------

def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as source:
        reader = csv.DictReader(source)
        return list(reader.fieldnames or []), list(reader)


def test_csv_has_a_row_a_second_with_every_column(tmp_path: Path) -> None:
    report = make_report()
    report.intervals[2].histograms["service"] = LatencyHistogram()  # an empty one: zeros
    path = tmp_path / "run.csv"
    output.write_csv(report, path)
    header, rows = read_csv(path)
    assert header[:7] == ["second", "start", "warmup", "sent", "received", "in_flight",
                          "missing"]
    assert header[7:15] == ["latency_count", "latency_p50_us", "latency_p90_us",
                            "latency_p99_us", "latency_p99.9_us", "latency_p99.99_us",
                            "latency_max_us", "latency_out_of_range"]
    assert header[-2:] == ["cpu_agent-0_percent", "cpu_broker_percent"]
    assert len(header) == 7 + 8 * len(HISTOGRAMS) + 2
    assert header == output.csv_header(["agent-0", "broker"])
    assert len(rows) == len(report.intervals)
    for row, interval in zip(rows, report.intervals, strict=True):
        assert int(row["second"]) == interval.second
        assert float(row["start"]) == interval.start
        assert row["warmup"] == ("1" if interval.warmup else "0")
        assert int(row["received"]) == interval.received
        assert int(row["missing"]) == interval.missing
        for name in HISTOGRAMS:
            histogram = interval.histograms[name]
            assert int(row[f"{name}_count"]) == histogram.count
            for percentile in PERCENTILES:
                assert int(row[f"{name}_p{percentile:g}_us"]) == histogram.percentile(percentile)
            assert int(row[f"{name}_max_us"]) == histogram.max()
            assert int(row[f"{name}_out_of_range"]) == histogram.out_of_range
        assert float(row["cpu_agent-0_percent"]) == interval.cpu_percent["agent-0"]
        assert row["cpu_broker_percent"] == (
            "12.5" if "broker" in interval.cpu_percent else "")
    assert rows[2]["service_count"] == rows[2]["service_p99_us"] == "0"
    assert rows[1]["latency_p50_us"] == str(report.intervals[1].histograms["latency"]
                                            .summary()["p50"])


def test_csv_counts_out_of_range_samples(tmp_path: Path) -> None:
    report = make_report(seconds=1, warmup=0, samples=10)
    report.intervals[0].histograms["latency"].record_many([-5, HIGHEST_US + 1])
    output.write_csv(report, tmp_path / "run.csv")
    _, rows = read_csv(tmp_path / "run.csv")
    assert rows[0]["latency_count"] == "12"
    assert rows[0]["latency_out_of_range"] == "2"


# --- HdrHistogram interval log --------------------------------------------------------------

def test_hdr_log_reads_back_per_tag(tmp_path: Path) -> None:
    report = make_report()
    path = tmp_path / "run.hlog"
    output.write_hdr_log(report, path)
    lines = path.read_text().splitlines()
    assert "#[Histogram log format version 1.3]" in lines
    assert f"#[StartTime: {START:.3f} (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]" \
        in lines
    assert f"#[BaseTime: {START:.3f} (seconds since epoch)]" in lines
    assert lines[4] == ('"StartTimestamp","Interval_Length","Interval_Max",'
                        '"Interval_Compressed_Histogram"')
    intervals = lines[5:]
    assert len(intervals) == len(report.intervals) * len(HISTOGRAMS)
    first = intervals[0].split(",")
    assert first[:3] == ["Tag=warmup-latency", "0.000", "1.000"]
    assert float(first[3]) == report.intervals[0].histograms["latency"].max() / 1000
    assert intervals[3].startswith("Tag=latency,1.000,1.000,")

    totals = output.read_hdr_log(path)
    assert set(totals) == {*HISTOGRAMS, *(f"warmup-{name}" for name in HISTOGRAMS)}
    for name in HISTOGRAMS:
        assert totals[f"warmup-{name}"].count == 1000
        expected = report.summary.histograms[name]
        assert totals[name].count == expected.count == 3000
        for percentile in (*PERCENTILES, 100.0):
            assert totals[name].percentile(percentile) == expected.percentile(percentile)


def test_hdr_log_skips_empty_histograms(tmp_path: Path) -> None:
    report = make_report(seconds=2, warmup=0)
    report.intervals[1].histograms["send_delay"] = LatencyHistogram()
    output.write_hdr_log(report, tmp_path / "run.hlog")
    totals = output.read_hdr_log(tmp_path / "run.hlog")
    assert {name: h.count for name, h in totals.items()} == {
        "latency": 2000, "service": 2000, "send_delay": 1000}


def test_read_hdr_log_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.hlog"
    path.write_text('"StartTimestamp","Interval_Length","Interval_Max","x"\n'
                    "Tag=a,0.000,1.000,1.000,HISTnotbase64\n")
    with pytest.raises(ValueError, match=r"bad\.hlog:2"):
        output.read_hdr_log(path)
    path.write_text("0.000,1.000\n")
    with pytest.raises(ValueError, match="not an interval line"):
        output.read_hdr_log(path)


# --- Java's HdrHistogram --------------------------------------------------------------------

@pytest.fixture(scope="module")
def hdr_jar() -> str:
    if shutil.which("java") is None:
        pytest.skip("no java on PATH (scripts/setup.sh installs default-jre-headless)")
    for jar in JARS:
        if Path(jar).is_file():
            return jar
    pytest.skip(f"no HdrHistogram jar at {' or '.join(JARS)} "
                "(scripts/setup.sh installs libhdrhistogram-java)")


def log_processor(jar: str, *args: str) -> str:
    done = subprocess.run(["java", "-cp", jar, "org.HdrHistogram.HistogramLogProcessor", *args],
                          capture_output=True, text=True, timeout=JAVA_TIMEOUT, check=True)
    return done.stdout


def test_java_log_processor_reads_the_log(tmp_path: Path, hdr_jar: str) -> None:
    report = make_report()
    log = tmp_path / "run.hlog"
    output.write_hdr_log(report, log)
    tags = log_processor(hdr_jar, "-i", str(log), "-listtags").split()
    assert {*HISTOGRAMS, "warmup-latency"} <= set(tags)

    # Values in us, so the unit ratio to ms is 1000 (its default, 10^6, assumes ns).
    printed = log_processor(hdr_jar, "-i", str(log), "-tag", "latency",
                            "-outputValueUnitRatio", "1000")
    latency = report.summary.histograms["latency"]
    assert f"Total count    = {latency.count:12d}]" in printed
    rows = {fields[1]: fields for line in printed.splitlines()
            if len(fields := line.split()) == 4 and not line.startswith("#")}
    assert float(rows["0.900000000000"][0]) == latency.percentile(90) / 1000
    assert int(rows["0.900000000000"][2]) >= 2700
    # Its whole .hgrm is ours, line for line (it adds the log's StartTime before it).
    table = [line for line in printed.splitlines() if not line.startswith("#[StartTime")]
    assert table == output.percentile_distribution(latency).splitlines()

    warmup = log_processor(hdr_jar, "-i", str(log), "-tag", "warmup-latency",
                           "-outputValueUnitRatio", "1000")
    assert f"Total count    = {1000:12d}]" in warmup


JAVA_WRITER = """
import org.HdrHistogram.Histogram;
import org.HdrHistogram.HistogramLogWriter;

public class WriteLog {
    public static void main(String[] args) throws Exception {
        HistogramLogWriter writer = new HistogramLogWriter(args[0]);
        long start = 1700000000000L;
        writer.outputLogFormatVersion();
        writer.outputStartTime(start);
        writer.setBaseTime(start);
        writer.outputBaseTime(start);
        writer.outputLegend();
        for (int second = 0; second < 3; second++) {
            Histogram send = new Histogram(3);  // auto-resizing, as Artemis records
            Histogram transfer = new Histogram(1, 3600000000L, 3);
            Histogram untagged = new Histogram(3);
            for (int i = 1; i <= 1000; i++) {
                send.recordValue(i * (second + 1));
            }
            transfer.recordValueWithCount(5000, 10);
            untagged.recordValue(7);
            if (second == 2) {
                send.recordValue(10000000000000L);  // above an hour: clamped by the reader
            }
            send.setTag("send");
            transfer.setTag("transfer");
            for (Histogram h : new Histogram[] {send, transfer, untagged}) {
                h.setStartTimeStamp(start + second * 1000L);
                h.setEndTimeStamp(start + second * 1000L + 1000L);
                writer.outputIntervalHistogram(h);
            }
        }
        writer.close();
    }
}
"""


def test_read_hdr_log_reads_a_java_written_log(tmp_path: Path, hdr_jar: str) -> None:
    if shutil.which("javac") is None:
        pytest.skip("no javac (a JDK) to compile a Java HistogramLogWriter; the JRE alone "
                    "has no writer of logs and HistogramLogProcessor writes none")
    (tmp_path / "WriteLog.java").write_text(JAVA_WRITER)
    subprocess.run(["javac", "-cp", hdr_jar, "-d", str(tmp_path),
                    str(tmp_path / "WriteLog.java")], check=True, timeout=JAVA_TIMEOUT)
    log = tmp_path / "java.hlog"
    subprocess.run(["java", "-cp", f"{hdr_jar}:{tmp_path}", "WriteLog", str(log)],
                   check=True, timeout=JAVA_TIMEOUT)
    text = log.read_text()
    assert "#[Histogram log format version 1.3]" in text and "Tag=send," in text

    totals = output.read_hdr_log(log)
    assert set(totals) == {"send", "transfer", output.UNTAGGED}
    expected = LatencyHistogram()
    for second in range(3):
        expected.record_many(np.arange(1, 1001) * (second + 1))
    expected.record_many([10**13])  # clamped to an hour, counted out of range
    send = totals["send"]
    assert send.count == expected.count == 3001
    assert send.out_of_range == 1
    for percentile in (50.0, 90.0, 99.0, 99.9):
        assert send.percentile(percentile) == expected.percentile(percentile)
    assert totals["transfer"].count == 30
    assert totals["transfer"].percentile(50) == LatencyHistogram().hdr \
        .get_highest_equivalent_value(5000)
    assert totals[output.UNTAGGED].count == 3


# --- .hgrm ----------------------------------------------------------------------------------

def test_percentiles_file_is_the_latency_distribution_in_ms(tmp_path: Path) -> None:
    report = make_report()
    path = tmp_path / "latency.hgrm"
    output.write_percentiles(report, path)
    lines = path.read_text().splitlines()
    latency = report.summary.histograms["latency"]
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert f"#[Max     = {latency.max() / 1000:12.3f}, Total count    = {3000:12d}]" in lines
    rows = [line.split() for line in lines[2:] if not line.startswith("#")]
    assert rows[0][1] == "0.000000000000" and rows[1][1] == "0.100000000000"
    assert rows[-1][1:] == ["1.000000000000", "3000"]  # 100%: no 1/(1-p) column
    assert float(rows[-1][0]) == latency.max() / 1000
    mean = next(line for line in lines if line.startswith("#[Mean"))
    assert abs(float(mean.split()[2].rstrip(",")) - latency.mean() / 1000) < 0.001


# --- PNG ------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [1, 0], ids=["with-warmup", "no-warmup"])
def test_plot_writes_a_png(tmp_path: Path, warmup: int) -> None:
    image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "run.png"
    output.plot(make_report(warmup=warmup), path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert image.imread(path).shape[:2] == (900, 1000)  # 10 x 9 in at 100 dpi


def test_plot_of_an_empty_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    output.plot(empty_report(), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(RuntimeError, match=r"pip install amqscale\[bench\]"):
        output.plot(make_report(), tmp_path / "run.png")
    assert not (tmp_path / "run.png").exists()


def test_plot_title_names_the_main_options() -> None:
    title = output.plot_title(make_report().config)
    assert title == ("amqscale bench: url=amqp://localhost:5672, producers=2, consumers=2, "
                     "rate=1000, size=100")
    assert output.plot_title({"custom": 3, "nested": {"a": 1}}) == "amqscale bench: custom=3"


# --- failures -------------------------------------------------------------------------------

WRITERS = {"json": output.write_json, "csv": output.write_csv, "hlog": output.write_hdr_log,
           "hgrm": output.write_percentiles, "png": output.plot}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_unwritable_path_raises_oserror_naming_it(tmp_path: Path, kind: str) -> None:
    if kind == "png":
        pytest.importorskip("matplotlib")
    path = tmp_path / "no-such-dir" / f"run.{kind}"
    with pytest.raises(OSError, match="no-such-dir"):
        WRITERS[kind](make_report(seconds=2), path)


def test_empty_report_gives_headers_only(tmp_path: Path) -> None:
    report = empty_report()
    output.write_csv(report, tmp_path / "run.csv")
    assert (tmp_path / "run.csv").read_text().splitlines() == [",".join(output.csv_header())]
    output.write_hdr_log(report, tmp_path / "run.hlog")
    lines = (tmp_path / "run.hlog").read_text().splitlines()
    assert len(lines) == 5 and all(line[0] in '#"' for line in lines)
    assert output.read_hdr_log(tmp_path / "run.hlog") == {}
    output.write_percentiles(report, tmp_path / "run.hgrm")
    assert f"Total count    = {0:12d}]" in (tmp_path / "run.hgrm").read_text()
    output.write_json(report, tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text())["intervals"] == []

