"""The side-by-side benchmark harness (perf/compare.py) works end to end.

One smoke run of `perf/compare.py --quick` on three cheap peer-to-peer cases (proton-python,
amqscale bytes one per call and in batches; 100-byte bodies, at-least-once, tiny counts)
checks that the JSON result has its fields and sane values: every message counted, none lost
or duplicated, CPU rows per process, latency percentiles in order (at half peak, and at the
fixed rates with perf/pipe_chain.py's floor, or the reason a rate was skipped), and that the
summary files were written beside it. No assertion depends on how fast anything ran. The
ratio, target and summary arithmetic, and the choice of cases and counts, are checked on
made-up documents and settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "perf"
COUNT = 20_000  # enough CPU for the 10 ms ticks of /proc even on a fast machine
CASES = ["p2p/proton/100B/at-least-once", "p2p/amqscale-bytes/w1/100B/at-least-once",
         "p2p/amqscale-bytes-batch/w1/100B/at-least-once"]

pytest.importorskip("hdrh")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("perf-results")
    argv = [sys.executable, str(PERF / "compare.py"), "--quick",
            "--cases", "proton", "amqscale-bytes", "amqscale-bytes-batch", "--sizes", "100",
            "--modes", "at-least-once", "--workers", "1", "--count", str(COUNT),
            "--latency-seconds", "0.5", "--out-dir", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=420,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = out.glob("compare-*.json")
    result: dict[str, Any] = json.loads(path.read_text())
    result["_stdout"] = done.stdout
    return result


@pytest.mark.timeout(480)
def test_document_has_its_fields(document: dict[str, Any]) -> None:
    assert document["schema"] == "amqscale-perf-compare/2"
    for key in ("started", "host", "settings", "cases", "micro", "ratios", "targets", "chart",
                "latency_floor", "skipped_cases", "summary"):
        assert key in document, key
    assert document["settings"]["quick"] is True
    assert document["settings"]["runs"] == 1
    assert sorted(document["cases"]) == sorted(CASES)
    assert Path(document["chart"]).stat().st_size > 0
    assert "bytes >= 12x proton-python" in document["_stdout"]
    assert document["cases"][CASES[0]]["mb_per_s"] == pytest.approx(
        document["cases"][CASES[0]]["msg_per_s"] * 100 / 1e6)


@pytest.mark.timeout(480)
def test_summary_files(document: dict[str, Any]) -> None:
    summary_path = Path(document["summary"])
    assert summary_path.name == (f"summary-{document['started'][:10].replace('-', '')}-"
                                 f"{document['host']['git']}-quick.json")
    assert summary_path.with_suffix(".png").stat().st_size > 0
    summary = json.loads(summary_path.read_text())
    assert summary["schema"] == "amqscale-perf-compare-summary/1"
    assert sorted(summary["cases"]) == sorted(CASES)
    assert len(summary["targets"]) == len(document["targets"])
    assert {t["verdict"] for t in summary["targets"]} <= {"PASS", "MISS"}
    assert summary["verdict"]["met"] + summary["verdict"]["missed"] == len(summary["targets"])
    assert "histogram" not in json.dumps(summary)  # small: no histograms, no runs

@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", CASES)
def test_every_message_counted(document: dict[str, Any], name: str) -> None:
    case = document["cases"][name]
    assert case["errors"] == [] and case["runs_ok"] == 1
    [run] = case["runs"]
    assert run["count"] == run["received"] == run["accepted"] == run["settled_at_sender"]
    assert run["count"] == COUNT
    assert run["lost"] == run["duplicates"] == run["other_outcomes"] == 0
    assert case["lost"] == case["duplicates"] == 0
    assert case["msg_per_s"] > 0 and run["seconds"] > 0
    assert {"sender", "receiver"} <= set(case["cpu_us_per_msg"])
    assert all(value >= 0 for value in case["cpu_us_per_msg"].values())
    assert case["cpu_us_per_msg_total"] > 0


@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", CASES[1:])
def test_amqscale_workers_and_library_share_have_rows(document: dict[str, Any],
                                                       name: str) -> None:
    case = document["cases"][name]
    assert {"sender worker 1", "receiver worker 1"} <= set(case["cpu_us_per_msg"])
    assert case["workers"] == 1
    for side in ("sender", "receiver"):  # the harness's own work taken out (CPU times tick
        # in 10 ms: over this few messages the difference is all the test can rely on)
        assert case["library_us_per_msg"][side] < case["user_us_per_msg"][side]
    assert document["cases"][CASES[0]]["library_us_per_msg"] == {}  # not measured for proton


@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", CASES[:2])
def test_latency_percentiles(document: dict[str, Any], name: str) -> None:
    latency = document["cases"][name]["latency"]
    assert latency is not None and latency["count"] > 0 and latency["lost"] == 0
    assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["p99_9_us"] <= latency["max_us"]
    assert latency["target_rate"] == pytest.approx(document["cases"][name]["msg_per_s"] / 2)
    assert latency["label"].startswith("half peak")


@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", CASES[:2])
def test_latency_at_fixed_rates(document: dict[str, Any], name: str) -> None:
    fixed = document["cases"][name]["latency_fixed"]
    assert set(fixed) == {"1000", "10000"}
    hops = 3 if "amqscale" in name else 1
    for rate, latency in fixed.items():
        if latency.get("skipped"):  # above 80% of the case's peak: said so
            assert "peak" in latency["skipped"]
            continue
        assert latency["count"] > 0 and latency["lost"] == 0
        assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["max_us"]
        floor = document["latency_floor"][f"hops{hops}/{rate}"]
        assert floor["processes"] == hops + 1 and floor["count"] > 0
        assert 0 < floor["p50_us"] <= floor["p99_us"] <= floor["max_us"]


@pytest.mark.timeout(480)
def test_ratios_and_targets(document: dict[str, Any]) -> None:
    ratios = document["ratios"]["100B/at-least-once"]
    assert ratios["bytes_vs_proton_rate"] > 0
    assert ratios["bytes_vs_proton_cpu_per_msg"] > 0
    assert set(ratios["worker_cpu_vs_proton_cpu"]) == {"sender", "receiver"}
    assert set(ratios["latency_p99_us"]) == {"proton", "amqscale-bytes/w1"}
    assert document["cases"][CASES[2]].get("latency") is None  # one message per call only
    assert ratios["bytes_batch_vs_proton_rate"] > 0
    names = {t["name"] for t in document["targets"]}
    assert "bytes >= 12x proton-python (rate)" in names
    assert any(name.startswith("bytes, send_many/receive_many") for name in names)
    assert all(isinstance(t["met"], bool) for t in document["targets"])
    assert ratios["bytes_vs_proton_rate_w1"] == ratios["bytes_vs_proton_rate"]  # 1 worker ran


def _case(rate: float, sender: float, receiver: float, workers: int = 0,
          worker_us: float = 0.0, own_us: float = 0.0, size: int = 100) -> dict[str, Any]:
    return {
        "workers": workers or None, "msg_per_s": rate, "body_bytes": size,
        "mb_per_s": rate * size / 1e6,
        "cpu_us_per_msg": {"sender": sender, "receiver": receiver},
        "cpu_us_per_msg_total": sender + receiver + 2 * worker_us,
        "user_us_per_msg": {"sender": sender, "receiver": receiver},
        "library_us_per_msg": {"sender": sender - own_us, "receiver": receiver - own_us},
        "workers_us_per_msg": {"sender": worker_us, "receiver": worker_us},
    }


def _report() -> Any:
    sys.path.insert(0, str(PERF))
    try:
        import compare_report as report
    finally:
        sys.path.remove(str(PERF))
    return report


def _compare() -> Any:
    sys.path.insert(0, str(PERF))
    try:
        import compare
    finally:
        sys.path.remove(str(PERF))
    return compare


def _document() -> dict[str, Any]:
    """A made-up run: 100 B and 1 MiB at-least-once, amqscale with 1 and 2 workers."""
    report = _report()
    mode = "at-least-once"
    big = 1 << 20
    cases = {
        report.case_id("p2p", "proton", 100, mode): _case(20_000, 36.0, 36.0),
        report.case_id("p2p", "proton-msg", 100, mode): _case(10_000, 50.0, 50.0),
        report.case_id("p2p", "bare", 100, mode): _case(400_000, 2.0, 2.5),
        report.case_id("p2p", "engine-loop", 100, mode): _case(200_000, 4.0, 4.0),
        report.case_id("p2p", "rhea", 100, mode): _case(25_000, 30.0, 30.0),
        report.case_id("p2p", "amqscale-bytes", 100, mode, 1): _case(
            300_000, 0.8, 0.9, workers=1, worker_us=3.0),
        report.case_id("p2p", "amqscale-bytes", 100, mode, 2): _case(
            200_000, 0.8, 0.9, workers=2, worker_us=3.0),
        report.case_id("p2p", "amqscale-messages", 100, mode, 1): _case(
            250_000, 1.5, 1.5, workers=1, worker_us=3.0),
        report.case_id("p2p", "amqscale-bytes-batch", 100, mode, 1): _case(
            310_000, 1.4, 1.6, workers=1, worker_us=2.0, own_us=0.5),
        report.case_id("p2p", "amqscale-bytes-batch", 100, mode, 2): _case(
            360_000, 1.4, 1.6, workers=2, worker_us=2.0, own_us=0.5),
        report.case_id("p2p", "amqscale-bytes-noreconnect", 100, mode, 1): _case(
            320_000, 0.8, 0.9, workers=1, worker_us=2.5),
        report.case_id("p2p", "proton", big, mode): _case(50, 9000.0, 9000.0, size=big),
        report.case_id("p2p", "bare", big, mode): _case(500, 900.0, 900.0, size=big),
        report.case_id("p2p", "amqscale-bytes", big, mode, 1): _case(
            250, 1000.0, 1000.0, workers=1, worker_us=1000.0, size=big),
        report.case_id("proton-c-broker", "c-examples", 0, mode): _case(40_000, 5.0, 5.0,
                                                                         size=0),
        report.case_id("proton-c-broker", "amqscale-bytes", 100, mode, 1): _case(
            30_000, 1.0, 1.0, workers=1, worker_us=3.0),
        report.case_id("proton-c-broker", "amqscale-inworker", 100, mode, 1): _case(
            36_000, 1.0, 0.5, workers=1, worker_us=2.0),
    }
    cases[report.case_id("p2p", "bare", 100, mode)]["latency_fixed"] = {
        "1000": {"target_rate": 1000, "p50_us": 100.0, "p99_us": 300.0},
        "10000": {"target_rate": 10000, "p50_us": 100.0, "p99_us": 900.0}}
    cases[report.case_id("p2p", "amqscale-bytes", 100, mode, 1)]["latency_fixed"] = {
        "1000": {"target_rate": 1000, "p50_us": 200.0, "p99_us": 1000.0},
        "10000": {"target_rate": 10000, "p50_us": 300.0, "p99_us": 3000.0}}
    cases[report.case_id("p2p", "amqscale-bytes", 100, mode, 2)]["latency_fixed"] = {
        "1000": {"target_rate": 1000, "p50_us": 200.0, "p99_us": 1200.0},
        "10000": {"target_rate": 10000, "skipped": "10,000 msg/s is above 80% of the peak"}}
    floors = {"hops1/1000": {"hops": 1, "processes": 2, "rate": 1000, "p99_us": 200.0},
              "hops3/1000": {"hops": 3, "processes": 4, "rate": 1000, "p99_us": 800.0},
              "hops1/10000": {"hops": 1, "processes": 2, "rate": 10000, "p99_us": 300.0},
              "hops3/10000": {"hops": 3, "processes": 4, "rate": 10000, "p99_us": 1500.0}}
    return {"started": "2026-12-02T10:00:00", "host": {"git": "abc1234"},
            "settings": {"sizes": [100, big], "modes": [mode], "workers": [1, 2],
                         "quick": False},
            "cases": cases, "latency_floor": floors, "micro": {}}


def test_ratio_arithmetic() -> None:
    report = _report()
    document = _document()
    ratios = report.ratios(document)["100B/at-least-once"]
    assert ratios["amqscale_bytes_workers"] == 1  # the faster worker count is compared
    assert ratios["bytes_vs_proton_rate"] == pytest.approx(15.0)
    assert ratios["bytes_vs_proton_rate_w1"] == pytest.approx(15.0)
    assert ratios["bytes_pct_of_bare_pair"] == pytest.approx(75.0)
    assert ratios["bytes_pct_of_bare_pair_w1"] == pytest.approx(75.0)
    # the batch API's best is 2 workers; its like-for-like twin is the 1-worker case
    assert ratios["amqscale_bytes_batch_workers"] == 2
    assert ratios["bytes_batch_pct_of_bare_pair"] == pytest.approx(90.0)
    assert ratios["bytes_batch_pct_of_bare_pair_w1"] == pytest.approx(77.5)
    assert ratios["bytes_batch_vs_proton_rate"] == pytest.approx(18.0)
    assert ratios["bytes_batch_vs_proton_rate_w1"] == pytest.approx(15.5)
    # workers' CPU per message per side / the bare pair's process's on that side
    assert ratios["worker_cpu_vs_bare_cpu"] == pytest.approx({"sender": 1.5, "receiver": 1.2})
    assert ratios["worker_cpu_vs_bare_cpu_best"] == pytest.approx(
        {"sender": 1.5, "receiver": 1.2})
    assert ratios["worker_cpu_vs_proton_cpu"]["sender"] == pytest.approx(3 / 36)
    assert ratios["messages_vs_proton_rate"] == pytest.approx(25.0)  # vs proton-msg
    assert ratios["messages_baseline"] == "proton-msg"
    assert ratios["bytes_vs_rhea_rate"] == pytest.approx(12.0)
    assert ratios["rhea_msg_per_s"] == 25_000
    assert ratios["engine_loop_pct_of_bare_pair"] == pytest.approx(50.0)
    assert ratios["reconnect_on_vs_off_rate"] == pytest.approx(300 / 320)
    assert ratios["reconnect_on_vs_off_extra_cpu_us_per_msg"] == pytest.approx(1.0)
    assert ratios["library_us_per_msg_bytes_batch_w1"] == pytest.approx(
        {"sender": 0.9, "receiver": 1.1})
    # fixed rates: p99 over the floor's for as many processes, the skipped ones said so
    assert ratios["latency_p99_vs_floor_1k"] == pytest.approx(
        {"bare": 1.5, "amqscale-bytes/w1": 1.25, "amqscale-bytes/w2": 1.5})
    assert ratios["latency_p99_vs_floor_10k"] == pytest.approx(
        {"bare": 3.0, "amqscale-bytes/w1": 2.0})
    assert "amqscale-bytes/w2" in ratios["latency_skipped_10k"]
    assert ratios["latency_floor_p99_us_1k"] == {"hops1": 200.0, "hops3": 800.0}
    # through the C broker
    assert ratios["proton_c_broker_amqscale_vs_c_examples_rate"] == pytest.approx(0.75)
    assert ratios["proton_c_broker_inworker_vs_bytes_rate"] == pytest.approx(1.2)
    assert ratios["proton_c_broker_inworker_receiver_cpu_us_per_msg"] == pytest.approx(2.5)
    big = report.ratios(document)[f"{1 << 20}B/at-least-once"]
    assert big["bytes_vs_proton_mb_per_s"] == pytest.approx(5.0)
    assert big["bytes_vs_bare_mb_per_s"] == pytest.approx(0.5)
    assert big["amqscale_bytes_mb_per_s"] == pytest.approx(250 * (1 << 20) / 1e6)
    assert big.get("proton_c_broker_amqscale_vs_c_examples_rate") is None  # small bodies


def test_target_arithmetic() -> None:
    report = _report()
    document = _document()
    document["ratios"] = report.ratios(document)
    checks = report.targets(document)
    verdicts = {t["name"]: t["met"] for t in checks}
    assert {t["combo"] for t in checks} == {"100B/at-least-once"}  # large bodies: reported
    assert verdicts["bytes >= 12x proton-python (rate)"] is True
    assert verdicts["bytes one per call >= 60% of the bare pair (b) (rate)"] is True
    assert verdicts["bytes, batch API >= 85% of the bare pair (b) (rate)"] is True
    assert verdicts["worker CPU/msg <= 1.3x the bare pair's process (worse side, 1 worker)"
                    ] is False  # 1.5 on the sending side
    assert verdicts["worker CPU/msg <= 1/15 of proton-python's (worse side)"] is False
    assert verdicts["Message objects >= 20x proton-python (rate)"] is True
    assert verdicts["C broker: amqscale >= 1x the C send/receive examples (rate)"] is False
    by_name = {t["name"]: t for t in checks}
    batch = by_name["bytes, batch API >= 85% of the bare pair (b) (rate)"]
    assert batch["value_w1"] == pytest.approx(77.5) and batch["workers"] == 2
    floor_1k = by_name["latency p99 <= 1.5x pipe_chain's floor at 1,000 msg/s "
                       "(amqscale-bytes/w1)"]
    assert floor_1k["value"] == pytest.approx(1.25) and floor_1k["met"] is True
    floor_10k = by_name["latency p99 <= 1.5x pipe_chain's floor at 10,000 msg/s "
                        "(amqscale-bytes/w1)"]
    assert floor_10k["met"] is False
    [library] = [t for t in checks if t["name"].startswith("bytes, send_many/receive_many")]
    assert library["value"] == pytest.approx(1.1) and library["met"] is False
    document["targets"] = checks
    table = report.target_table(document)
    assert "PASS" in table and "MISS" in table


def test_summary_of_a_document() -> None:
    report = _report()
    document = _document()
    document["ratios"] = report.ratios(document)
    document["targets"] = report.targets(document)
    assert report.summary_name(document) == "summary-20261202-abc1234"
    summary = report.summary(document, "compare-20261202-100000.json")
    assert summary["result"] == "compare-20261202-100000.json"
    case = summary["cases"]["p2p/amqscale-bytes/w2/100B/at-least-once"]
    assert case["latency_fixed"]["10000"]["skipped"].startswith("10,000 msg/s")
    assert case["mb_per_s"] == pytest.approx(20.0)
    assert summary["latency_floor"]["hops3/1000"]["p99_us"] == 800.0
    assert all(v is not None for r in summary["ratios"].values() for v in r.values())
    assert summary["verdict"]["missed"] == sum(not t["met"] for t in document["targets"])
    assert [t["verdict"] for t in summary["targets"]] == [
        "PASS" if t["met"] else "MISS" for t in document["targets"]]
    json.dumps(summary)  # plain JSON


def test_cases_and_counts() -> None:
    compare = _compare()
    settings = compare.parse_args([])
    assert settings.sizes == [100, 4096, 1 << 20]
    skipped: dict[str, str] = {}
    groups = compare.build_cases(settings, skipped)
    p2p = {case.id for case in groups["p2p"]}
    # feature rows: one case each, 100 B at-least-once, 1 worker
    for family in ("amqscale-aio-bytes", "amqscale-reactor", "amqscale-bytes-noreconnect",
                   "amqscale-bytes-tls"):
        assert [c for c in p2p if f"/{family}/" in c] == [
            f"p2p/{family}/w1/100B/at-least-once"]
    assert [c for c in p2p if "/proton-tls/" in c] == ["p2p/proton-tls/100B/at-least-once"]
    assert "p2p/bare/1048576B/presettled" in p2p and "p2p/rhea/4096B/presettled" in p2p
    assert [c.id for c in groups["proton-c-broker"] if c.family == "amqscale-inworker"] == [
        "proton-c-broker/amqscale-inworker/w1/100B/at-least-once"]
    assert "p2p/engine-loop/1048576B/at-least-once" in skipped
    assert all(c.size <= compare.BROKER_MAX_BODY for c in groups["rabbitmq"])
    # named in --cases, a feature family gets the whole matrix; "engine" is engine-loop
    named = compare.parse_args(["--cases", "amqscale-aio-bytes", "engine", "--sizes", "100",
                                "--modes", "at-least-once"])
    ids = {c.id for c in compare.build_cases(named)["p2p"]}
    assert ids == {"p2p/amqscale-aio-bytes/w1/100B/at-least-once",
                   "p2p/amqscale-aio-bytes/w2/100B/at-least-once",
                   "p2p/engine-loop/100B/at-least-once"}
    # counts: the byte budget caps large bodies, at least 200 messages
    big = compare.Case("bare", "p2p", 1 << 20, False)
    assert settings.count_for(big) == 1024
    assert compare.parse_args(["--quick"]).count_for(big) == 256
    assert settings.count_for(compare.Case("bare", "p2p", 100, False)) == 1_000_000
    assert settings.count_for(compare.Case("rhea", "p2p", 100, False)) == 100_000
    assert settings.count_for(compare.Case("proton", "p2p", 4096, False)) == 12_500
    assert settings.count_for(compare.Case("proton", "p2p", 64 << 20, False)) == 200
    fixed = [c for c in groups["p2p"] if c.fixed_rate_latency]
    assert {(c.family, c.workers, c.hops) for c in fixed} == {
        ("proton", 0, 1), ("bare", 0, 1), ("amqscale-bytes", 1, 3),
        ("amqscale-bytes", 2, 3), ("amqscale-messages", 1, 3)}
