"""The fault-run harness (perf/faults.py) works end to end.

One quick run of its two cheapest scenarios, proxy-faults (drop, reset, stall and cut
through a FaultProxy, twice each, then random faults) and connect-cycles (100 cycles), as
a subprocess: it must pass, print its table and write a JSON of the documented shape. No
assertion depends on how fast anything ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
KINDS = ["proxy-faults", "connect-cycles"]
SCENARIO_KEYS = {"kind", "passed", "failed_checks", "error", "seconds", "messages", "lost",
                 "duplicates", "resent", "reconnects", "restarts", "recovery", "faults",
                 "details", "notes"}


@pytest.mark.timeout(120)
def test_a_quick_fault_run_passes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    argv = [sys.executable, str(REPO / "perf" / "faults.py"), "--only", *KINDS,
            "--scale", "0.01", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())

    assert doc["schema"] == "amqscale-perf-faults/1"
    assert doc["passed"] is True
    assert doc["settings"]["scale"] == 0.01 and doc["settings"]["only"] == KINDS
    assert list(doc["scenarios"]) == KINDS
    for scenario in doc["scenarios"].values():
        assert set(scenario) >= SCENARIO_KEYS
        assert scenario["passed"] and scenario["failed_checks"] == []
        assert scenario["error"] is None
        assert scenario["lost"] == 0

    proxy = doc["scenarios"]["proxy-faults"]
    assert proxy["messages"] > 0 and proxy["duplicates"] <= proxy["resent"]
    recovery = proxy["recovery"]
    assert recovery["measure"] and recovery["faults"] == recovery["recovered"] >= 8
    assert 0 <= recovery["p50_s"] <= recovery["p99_s"] <= recovery["max_s"]
    assert sorted({f["kind"] for f in proxy["faults"]}) == ["cut", "drop", "reset", "stall"]
    assert all(f["recovery_s"] is not None for f in proxy["faults"])
    assert proxy["reconnects"] >= len(proxy["faults"])

    cycles = doc["scenarios"]["connect-cycles"]
    assert cycles["messages"] == 100
    processes = cycles["details"]["processes"]
    assert "user process" in processes and "client worker 1" in processes
    for figures in processes.values():
        assert abs(figures["fds_last"] - figures["fds_first"]) <= 2

    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| fault | messages |"))
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[header + 2:header + 4]]
    assert rows == KINDS
