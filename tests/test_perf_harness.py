"""The side-by-side benchmark harness (perf/compare.py) works end to end.

One smoke run of `perf/compare.py --quick` on three cheap peer-to-peer cases (proton-python,
amqscale bytes one per call and in batches; 100-byte bodies, at-least-once, tiny counts)
checks that the JSON result has its fields and sane values: every message counted, none lost
or duplicated, CPU rows per process, latency percentiles in order. No assertion depends on
how fast anything ran. The ratio and target arithmetic is checked on a made-up document.
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
COUNT = 1000
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
    assert document["schema"] == "amqscale-perf-compare/1"
    for key in ("started", "host", "settings", "cases", "micro", "ratios", "targets", "chart"):
        assert key in document, key
    assert document["settings"]["quick"] is True
    assert document["settings"]["runs"] == 1
    assert sorted(document["cases"]) == sorted(CASES)
    assert Path(document["chart"]).stat().st_size > 0
    assert "bytes >= 12x proton-python" in document["_stdout"]


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


def _case(rate: float, sender: float, receiver: float, workers: int = 0,
          worker_us: float = 0.0, own_us: float = 0.0) -> dict[str, Any]:
    return {
        "workers": workers or None, "msg_per_s": rate,
        "cpu_us_per_msg": {"sender": sender, "receiver": receiver},
        "cpu_us_per_msg_total": sender + receiver + 2 * worker_us,
        "user_us_per_msg": {"sender": sender, "receiver": receiver},
        "library_us_per_msg": {"sender": sender - own_us, "receiver": receiver - own_us},
        "workers_us_per_msg": {"sender": worker_us, "receiver": worker_us},
    }


def test_target_arithmetic() -> None:
    sys.path.insert(0, str(PERF))
    try:
        import compare_report as report
    finally:
        sys.path.remove(str(PERF))
    mode = "at-least-once"
    cases = {
        report.case_id("p2p", "proton", 100, mode): _case(20_000, 36.0, 36.0),
        report.case_id("p2p", "engine", 100, mode): _case(900_000, 1.0, 1.0),
        report.case_id("p2p", "amqscale-bytes", 100, mode, 1): _case(
            300_000, 0.8, 0.9, workers=1, worker_us=2.0),
        report.case_id("p2p", "amqscale-bytes", 100, mode, 2): _case(
            200_000, 0.8, 0.9, workers=2, worker_us=3.0),
        report.case_id("p2p", "amqscale-bytes-batch", 100, mode, 1): _case(
            310_000, 1.4, 1.6, workers=1, worker_us=2.0, own_us=0.5),
    }
    document: dict[str, Any] = {
        "settings": {"sizes": [100], "modes": [mode], "workers": [1, 2]},
        "cases": cases, "micro": {},
    }
    document["ratios"] = report.ratios(document)
    ratios = document["ratios"]["100B/at-least-once"]
    assert ratios["amqscale_bytes_workers"] == 1  # the faster worker count is compared
    assert ratios["bytes_vs_proton_rate"] == pytest.approx(15.0)
    assert ratios["bytes_pct_of_engine_limit"] == pytest.approx(100 * 300 / 900)
    assert ratios["worker_cpu_vs_proton_cpu"]["sender"] == pytest.approx(2 / 36)
    verdicts = {t["name"]: t["met"] for t in report.targets(document)}
    assert verdicts["bytes >= 12x proton-python (rate)"] is True
    assert verdicts["bytes >= 40% of the engine limit (b)"] is False
    assert verdicts["worker CPU/msg <= 1/15 of proton-python's (worse side)"] is True
    assert ratios["library_us_per_msg_bytes_batch"] == pytest.approx(
        {"sender": 0.9, "receiver": 1.1})
    assert ratios["bytes_batch_vs_proton_rate"] == pytest.approx(15.5)
    [batch_check] = [t for t in report.targets(document)
                     if t["name"].startswith("bytes, send_many/receive_many")]
    assert batch_check["value"] == pytest.approx(1.1) and batch_check["met"] is False
