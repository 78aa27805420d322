"""`amqscale bench` runs end to end: the rate schedule, every output, several agents and
addresses through a broker, separate send and receive commands, loss and duplicates a real
broker makes, thresholds, and the bad options it refuses before anything starts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from amqscale import cli
from amqscale.bench.histograms import LatencyHistogram
from amqscale.bench.output import read_hdr_log
from amqscale.testing.brokers import RabbitMQ, SpecBroker, fetch_stats
from amqscale.testing.certs import make_certificates

BENCH = [sys.executable, "-m", "amqscale.cli", "bench"]


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _run(tmp_path: Path, *args: str, status: int = 0) -> dict[str, Any]:
    out = tmp_path / f"run-{time.monotonic_ns()}.json"
    done = _bench("-q", "--json", str(out), *args)
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _histogram(result: dict[str, Any], name: str) -> LatencyHistogram:
    return LatencyHistogram.decode(result["histograms"][name])


def test_a_rate_schedule_with_every_output(tmp_path: Path) -> None:
    outputs = {option: tmp_path / name for option, name in [
        ("--csv", "run.csv"), ("--hdr-log", "run.hlog"), ("--percentiles", "run.hgrm"),
        ("--plot", "run.png")]}
    result = _run(tmp_path, "--rate", "1500:1,3000", "--ramp", "0.5", "--warmup", "0.5",
                  "--count", "4000", "-x", "2", "-y", "2", "--size", "50-500",
                  "--body-content", "random", "-P", "color=red", "-P", "n=3",
                  *[str(part) for pair in outputs.items() for part in pair])
    summary, config = result["summary"], result["config"]
    assert summary["sent"] == summary["received"] == 4000
    assert summary["lost"] == summary["duplicates"] == 0
    assert [p["sent"] for p in summary["producers"]] == [2000, 2000]
    assert config["properties"] == {"color": "red", "n": 3} and config["size"] == "50-500"
    # The schedule's last message is due at 2.21 s: 375 in the ramp, 1,500 in the next
    # second at 1,500/s, the other 2,125 at 3,000/s. A run cannot be faster than that.
    assert summary["seconds"] >= 2.2
    # Each second's histograms hold every message, the warm-up's too; the summary's leave
    # the warm-up (the 375 of the ramp, give or take the one on its edge) out.
    assert sum(i["latency_us"]["count"] for i in result["intervals"]) == 4000
    assert 3624 <= summary["latency_us"]["count"] <= 3626
    assert summary["send_delay_us"]["count"] == summary["latency_us"]["count"]
    assert result["intervals"][0]["warmup"] and not result["intervals"][1]["warmup"]
    rows = outputs["--csv"].read_text().splitlines()
    assert len(rows) == 1 + len(result["intervals"]) and "latency_p99_us" in rows[0]
    logged = read_hdr_log(outputs["--hdr-log"])
    assert logged["latency"].count + logged["warmup-latency"].count == 4000
    assert "Total count" in outputs["--percentiles"].read_text()
    assert outputs["--plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_duration_at_a_rate_sends_what_the_schedule_says(tmp_path: Path) -> None:
    """1.5 s at 2,000/s is exactly 3,000 messages (those due before the end), here as
    Message objects of weighted sizes in batches, to a consumer listening on IPv6."""
    result = _run(tmp_path, "--duration", "1.5", "--rate", "2000", "--size", "40:3,400:1",
                  "--listen-host", "::1", "--messages", "--batch", "50", "-P", "k=v")
    summary = result["summary"]
    assert summary["sent"] == summary["received"] == 3000
    assert summary["lost"] == summary["duplicates"] == 0
    assert result["config"]["listen_host"] == "::1"
    assert 40 * 3000 < summary["megabytes_per_s"] * 1e6 * summary["seconds"] < 400 * 3000


def test_agents_over_numbered_queues_of_a_broker(tmp_path: Path, spec_broker: SpecBroker,
                                                 unique_name: str) -> None:
    address = f"{unique_name}-%d"
    result = _run(tmp_path, "--url", spec_broker.url, "--address", address,
                  "--addresses", "2", "-x", "2", "-y", "2", "--connections", "2",
                  "--workers", "2", "--batch", "500", "--count", "10000")
    summary = result["summary"]
    assert summary["sent"] == summary["received"] == 10000
    assert summary["lost"] == summary["duplicates"] == 0
    assert summary["outcomes"] == {"accepted": 10000}
    stats = fetch_stats(spec_broker.url, timeout=10)
    targets = [link["target_address"] for c in stats["connections"] for link in c["links"]
               if str(link["target_address"]).startswith(unique_name)]
    for number in range(2):  # both queues were sent to, over 2 connections, and are empty
        assert stats["queues"][f"{unique_name}-{number}"] == 0
        assert targets.count(f"{unique_name}-{number}") == 2, targets


def test_transactional_batches(tmp_path: Path, spec_broker: SpecBroker,
                               unique_name: str) -> None:
    before = fetch_stats(spec_broker.url, timeout=10)["transactions"]["committed"]
    result = _run(tmp_path, "--url", spec_broker.url, "--address", unique_name,
                  "--tx-size", "50", "--count", "500")
    after = fetch_stats(spec_broker.url, timeout=10)["transactions"]["committed"]
    assert after - before >= 10  # 500 in tens of 50 (other tests may commit meanwhile)
    summary = result["summary"]
    assert summary["sent"] == summary["received"] == 500
    assert summary["lost"] == summary["duplicates"] == 0


def test_durable_messages_through_rabbitmq(tmp_path: Path, rabbitmq: RabbitMQ,
                                          unique_name: str) -> None:
    result = _run(tmp_path, "--url", rabbitmq.url, "--address", f"/queue/{unique_name}",
                  "--durable", "--ttl", "60000", "-x", "2", "--count", "2000")
    summary = result["summary"]
    assert summary["sent"] == summary["received"] == 2000
    assert summary["outcomes"] == {"accepted": 2000}


def test_messages_the_broker_expired_are_lost(tmp_path: Path, rabbitmq: RabbitMQ,
                                              unique_name: str) -> None:
    """The messages live 1 ms and nobody receives them in time; the end marker (no TTL)
    tells the receiver how many there were."""
    target = ["--url", rabbitmq.url, "--address", f"/queue/{unique_name}"]
    _run(tmp_path, "send", *target, "--count", "300", "--ttl", "1")
    time.sleep(0.5)
    result = _run(tmp_path, "receive", *target, "--timeout", "2", status=1)
    summary = result["summary"]
    assert summary["lost"] == 300 and summary["received"] == 0
    assert "300 message(s) lost" in summary["failures"]
    assert summary["producers"][0]["sent"] == 300


def test_messages_sent_twice_are_duplicates(tmp_path: Path, rabbitmq: RabbitMQ,
                                            unique_name: str) -> None:
    target = ["--url", rabbitmq.url, "--address", f"/queue/{unique_name}"]
    for _ in range(2):  # the same run id and sequence numbers, twice
        _run(tmp_path, "send", *target, "--count", "200", "--run-id", "77")
    result = _run(tmp_path, "receive", *target, "--count", "400", "--timeout", "5",
                  status=1)
    summary = result["summary"]
    assert summary["received"] == 400 and summary["duplicates"] == 200
    assert summary["lost"] == 0
    assert "200 message(s) duplicated" in summary["failures"]


def test_tls_peer_to_peer(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "pki")
    result = _run(tmp_path, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
                  "--tls-ca", str(certs.ca), "--count", "2000", "--batch", "100")
    assert result["summary"]["received"] == 2000 and result["summary"]["passed"]
    assert result["config"]["tls_ca"] == str(certs.ca)


def test_tls_and_plain_through_rabbitmq(tmp_path: Path, rabbitmq: RabbitMQ,
                                        unique_name: str) -> None:
    host_port = rabbitmq.tls_url.removeprefix("amqps://")
    url = f"amqps://{rabbitmq.user}:{rabbitmq.password}@{host_port}"
    result = _run(tmp_path, "--url", url, "--tls-ca", str(rabbitmq.ca_path),
                  "--sasl-mechanisms", "PLAIN", "--address", f"/queue/{unique_name}",
                  "--count", "2000")
    assert result["summary"]["received"] == 2000 and result["summary"]["passed"]
    assert rabbitmq.password not in json.dumps(result)  # the URL is shown without it
    # PLAIN without TLS is refused unless asked for, before anything is sent.
    plain = rabbitmq.url.replace("amqp://", f"amqp://{rabbitmq.user}:{rabbitmq.password}@")
    done = _bench("--url", plain, "--sasl-mechanisms", "PLAIN", "--count", "10",
                  "--address", f"/queue/{unique_name}")
    assert done.returncode == 2 and "PLAIN" in done.stderr, done.stderr
    assert rabbitmq.password not in done.stdout + done.stderr


def test_thresholds_fail_the_run(tmp_path: Path) -> None:
    result = _run(tmp_path, "--count", "2000", "--max-p99", "1us", "--min-rate", "1e9",
                  status=1)
    failures = " ".join(result["summary"]["failures"])
    assert "is above --max-p99 0.001 ms" in failures
    assert "is below --min-rate 1,000,000,000" in failures


def _consumer_processes(receive: subprocess.Popen[str]) -> list[psutil.Process]:
    """The receive command's consumer agent and its workers (not the resource tracker)."""
    found = [p for p in psutil.Process(receive.pid).children(recursive=True)
             if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(found) >= 2, found
    return found


def _connected(processes: list[psutil.Process]) -> bool:
    """Whether one of `processes` holds an established TCP connection."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_ESTABLISHED for c in process.net_connections("tcp")):
                return True
    return False


def test_a_stalled_consumer_shows_in_the_corrected_latency(tmp_path: Path) -> None:
    """SIGSTOP the consumer for 200 ms. With little credit and few messages in flight, the
    producer blocks: the messages due meanwhile go late, so their latency from the actual
    send is short while the latency from the intended send (and the send delay) shows the
    whole stall. Only a handful (those in flight) carry it in the actual-send latency."""
    received, sent = tmp_path / "receive.json", tmp_path / "send.json"
    log = tmp_path / "receive.log"
    with open(log, "w") as stderr:
        receive = subprocess.Popen([*BENCH, "receive", "-q", "--credit", "10", "--count",
                                    "6000", "--json", str(received)], stdout=subprocess.DEVNULL,
                                   stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            assert receive.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = log.read_text().split("listening on ")[1].split()[0]
        send = subprocess.Popen([*BENCH, "send", "-q", "--url", url, "--rate", "2000",
                                 "--count", "6000", "--max-in-flight", "10", "--json",
                                 str(sent)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        consumer = _consumer_processes(receive)
        deadline = time.monotonic() + 60
        while not _connected(consumer):  # the sender's start-up takes 1 to 5 s
            assert send.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # about a second of sending, two more to go
        for process in consumer:
            process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        for process in consumer:
            process.send_signal(signal.SIGCONT)
        assert send.wait(90) == 0, send.stderr.read() if send.stderr else ""
        assert receive.wait(90) == 0, log.read_text()
    finally:
        for process in (receive,):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
    consumer_side, producer_side = json.loads(received.read_text()), json.loads(
        sent.read_text())
    assert consumer_side["summary"]["received"] == 6000
    corrected = _histogram(consumer_side, "latency")
    raw = _histogram(consumer_side, "service")
    assert corrected.count == raw.count == 6000
    # 200 ms at 2,000/s: some 300 messages due during the stall are 100 ms late or more.
    assert corrected.count_above(100_000) >= 100, corrected.summary()
    assert 1 <= raw.count_above(100_000) <= 40, raw.summary()
    assert _histogram(producer_side, "send_delay").count_above(100_000) >= 100


# -- refused at once --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words"), [
    (["--size", "10"], "--size: 10 B is too small"),
    (["--size", "100-50"], "--size: '100-50' is not a size"),
    (["--rate", "fast"], "--rate: 'fast' is not a rate"),
    (["--rate", "100:x"], "--rate: 'x' is not a duration"),
    (["--rate", "100,200"], "the step '100' needs a duration"),
    (["--rate", "0"], "a rate step needs a positive rate"),
    (["--ramp", "5"], "--ramp needs --rate"),
    (["--addresses", "2"], "needs a %d in --address"),
    (["-y", "3", "-x", "2"], "--consumers (3) more than --producers (2)"),
    (["--tx-size", "5", "--presettled"], "--tx-size needs at-least-once"),
    (["--tx-size", "5", "--batch", "10"], "cannot go with --batch"),
    (["--json", "/nonexistent/run.json"], "--json /nonexistent/run.json"),
    (["send"], "bench send needs --url"),
    (["--run-id", str(2**33)], "--run-id must fit in 32 bits"),
    (["--url", "http://127.0.0.1:1"], "scheme 'http' is not amqp"),
    (["--url", "amqp://127.0.0.1:1", "--tls-ca", "ca.pem"], "TLS is never implied"),
    (["--tls-ca", "ca.pem"], "peer-to-peer TLS needs --tls-cert"),
    (["--tls-cert", "/nonexistent/cert.pem"], "/nonexistent/cert.pem"),
])
def test_bad_options_are_refused_before_anything_starts(
        args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


@pytest.mark.parametrize(("args", "words"), [
    (["--duration", "soon"], "argument -d/--duration/-z/--time: 'soon' is not a duration"),
    (["--max-p99", "fast"], "'fast' is not a latency"),
    (["-P", "novalue"], "'novalue' is not key=value"),
    (["--producers", "0"], "must be a positive integer, not 0"),
])
def test_bad_values_are_usage_errors(args: list[str], words: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", *args])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
