"""`amqscale bench`, the main job: it runs end to end, counts every message, and refuses
bad arguments at the command line. tests/bench/ has the load generator's other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amqscale.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("extra", [[], ["--batch", "700"], ["--messages", "--batch", "700"],
                                   ["--presettled", "--workers", "2", "--shards", "2"]])
def test_bench_counts_every_message(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "result.json"
    done = _bench("--count", "5000", "--json", str(out), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["sent"] == summary["received"] == 5000
    assert summary["lost"] == summary["duplicates"] == 0
    if "--shards" not in extra:  # over two links, a producer's messages interleave
        assert summary["out_of_order"] == 0
    assert summary["outcomes"].get("accepted", 0) == (0 if "--presettled" in extra else 5000)
    assert summary["receive_rate"] > 0
    assert summary["latency_us"]["count"] == 5000  # every message, in the merged histogram
    assert {"producer-0", "producer-0/worker-0", "consumer-0"} <= set(
        summary["cpu_us_per_msg"])
    assert ("batches of 700" in done.stdout) == ("--batch" in extra)
    assert "result: passed" in done.stdout
    assert "received 5,000  lost 0  duplicates 0" in done.stdout  # the line scripts grep


@pytest.mark.parametrize(("args", "words"), [
    (["--count", "0"], "must be a positive integer"),
    (["--batch", "-3"], "must be a positive integer"),
    (["--workers", "x"], "--workers: must be a positive integer, not x"),
    (["--url", "http://127.0.0.1:1"], "scheme 'http' is not amqp"),
    (["--url", "amqp://127.0.0.1:1"], "ECONNREFUSED"),  # nothing listens on port 1
])
def test_bench_refuses_bad_arguments(args: list[str], words: str) -> None:
    done = _bench(*args, timeout=60)
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
