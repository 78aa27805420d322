"""amqscale.bench.cluster: the bench agents as Dask tasks (`--agents N`, `--scheduler URL`).

Real runs of the CLI in a subprocess, peer-to-peer (no broker): the agents run on a local
Dask cluster of spawned worker processes. While the CLI runs, its process tree is polled,
so that afterwards the test knows every process of the run (Dask's worker processes, the
agents' amqscale workers) and can check that none is left and that none listened other than
on 127.0.0.1. One test drives the launcher in-process to see a task fail, and a worker die,
without a report of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

pytest.importorskip("distributed")

from amqscale.bench.cluster import DaskLauncher  # noqa: E402
from amqscale.bench.config import BenchConfig, plan  # noqa: E402

RUN_TIMEOUT = 120.0
POLL = 0.05
LISTEN_POLL = 0.5
GONE_TIMEOUT = 10.0  # for the run's processes to be gone once the CLI has exited


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    processes: dict[int, psutil.Process] = field(default_factory=dict)
    commands: dict[int, str] = field(default_factory=dict)
    listening: set[tuple[str, int]] = field(default_factory=set)

    def count(self, text: str) -> int:
        """Processes of the run whose command line has `text`."""
        return sum(text in command for command in self.commands.values())


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def bench(tmp_path: Path, *args: str) -> Run:
    """`amqscale bench ARGS` in tmp_path; its process tree is watched until it exits, then
    every process of it must be gone."""
    command = [sys.executable, "-m", "amqscale.cli", "bench", "-q", *args]
    began = time.monotonic()
    with open(tmp_path / "stdout", "w+") as out, open(tmp_path / "stderr", "w+") as err:
        cli = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=err)
        root = psutil.Process(cli.pid)
        run = Run(0, "", "", 0.0)
        next_listen = 0.0
        while cli.poll() is None:
            if time.monotonic() - began > RUN_TIMEOUT:
                cli.kill()
                pytest.fail(f"{' '.join(args)}: no end in {RUN_TIMEOUT:g} s")
            try:
                found = root.children(recursive=True)
            except psutil.Error:
                found = []
            for process in found:
                if process.pid not in run.processes:
                    try:
                        run.commands[process.pid] = " ".join(process.cmdline())
                    except psutil.Error:
                        continue
                    run.processes[process.pid] = process
            if time.monotonic() >= next_listen:
                next_listen = time.monotonic() + LISTEN_POLL
                for process in [root, *found]:
                    with contextlib.suppress(psutil.Error):
                        run.listening |= {(c.laddr.ip, c.laddr.port) for c in
                                          process.net_connections(kind="inet")
                                          if c.status == psutil.CONN_LISTEN}
            time.sleep(POLL)
        run.seconds = time.monotonic() - began
        run.returncode = cli.returncode
        out.seek(0)
        err.seek(0)
        run.stdout, run.stderr = out.read(), err.read()
    deadline = time.monotonic() + GONE_TIMEOUT
    while any(_alive(p) for p in run.processes.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: run.commands[pid] for pid, p in run.processes.items() if _alive(p)}
    for pid in left:  # not to disturb the next tests
        with contextlib.suppress(psutil.Error):
            run.processes[pid].kill()
    assert not left, f"processes of the run left behind: {left}"
    others = {address for address in run.listening if address[0] != "127.0.0.1"}
    assert not others, f"listening beyond 127.0.0.1: {others}"
    return run


def summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out.json").read_text())["summary"]


def test_three_agents_all_out(tmp_path: Path) -> None:
    run = bench(tmp_path, "--agents", "3", "-x", "2", "-y", "1", "--count", "30000",
                "--json", "out.json")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr, run.stderr
    summary = summary_of(tmp_path)
    assert summary["sent"] == summary["received"] == 30000
    assert summary["lost"] == summary["duplicates"] == 0
    assert [(p["producer"], p["sent"], p["received"]) for p in summary["producers"]] == [
        ("producer-0", 15000, 15000), ("producer-1", 15000, 15000)]
    assert summary["latency_us"]["count"] == 30000
    agents = {process.split("/")[0] for process in summary["cpu_us_per_msg"]}
    assert agents == {"consumer-0", "producer-0", "producer-1"}
    # The run had its three Dask worker processes, and the agents their amqscale workers.
    assert run.count("multiprocessing.spawn") >= 3, run.commands
    assert run.count("amqscale.workers") == 3, run.commands


def test_three_agents_at_a_rate(tmp_path: Path) -> None:
    run = bench(tmp_path, "--agents", "3", "-x", "2", "-y", "1", "--rate", "3000",
                "--duration", "3", "--json", "out.json")
    assert run.returncode == 0, run.stderr
    summary = summary_of(tmp_path)
    assert summary["sent"] == summary["received"] > 0
    assert summary["lost"] == summary["duplicates"] == 0
    assert 2000 <= summary["send_rate"] <= 4000, summary["send_rate"]
    assert len(summary["producers"]) == 2


def test_an_existing_scheduler(tmp_path: Path) -> None:
    """--scheduler: the agents run on a cluster that outlives the run; the run leaves
    nothing on its scheduler (queue, events, variable, tasks) nor on its workers."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        run = bench(tmp_path, "--scheduler", cluster.scheduler_address, "--count", "5000",
                    "--json", "out.json")
        assert run.returncode == 0, run.stderr
        summary = summary_of(tmp_path)
        assert summary["sent"] == summary["received"] == 5000
        assert summary["lost"] == summary["duplicates"] == 0
        scheduler = cluster.scheduler
        assert scheduler is not None
        extensions = scheduler.extensions
        assert not extensions["queues"].queues
        assert not extensions["variables"].variables
        assert not extensions["events"]._events
        assert not scheduler.tasks
        assert all(_alive(worker) for worker in workers)
        assert not [child.pid for worker in workers for child in worker.children()
                    if _alive(child)], "an agent's workers outlived it"


def test_more_agents_than_workers(tmp_path: Path) -> None:
    run = bench(tmp_path, "--agents", "2", "-x", "2", "-y", "1", "--count", "3000")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "amqscale bench: 3 bench agents (2 producers and 1 consumer) need a Dask worker "
        "each, but the cluster has 2: use --agents 3 or more, or fewer producers/consumers")
    assert run.count("amqscale.workers") == 0, "an agent started"


def test_a_scheduler_that_is_not_there(tmp_path: Path) -> None:
    run = bench(tmp_path, "--scheduler", "tcp://127.0.0.1:1", "--count", "3000")
    assert run.returncode == 2
    assert run.seconds < 30, run.seconds
    assert "tcp://127.0.0.1:1" in run.stderr
    assert run.stderr.startswith("amqscale bench: no Dask scheduler reachable at ")
    assert "Traceback" not in run.stderr, run.stderr


def test_not_a_scheduler_address(tmp_path: Path) -> None:
    run = bench(tmp_path, "--scheduler", "localhost", "--count", "3000")
    assert run.returncode == 2
    assert run.stderr.startswith("amqscale bench: --scheduler 'localhost' is not a Dask "
                                 "scheduler's address"), run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_tasks_that_end_without_a_report_say_why() -> None:
    """A task that raises before its agent runs, and one whose worker is killed, come back
    as "error" reports with the reason; closing leaves none of the cluster's processes."""
    already = {p.pid for p in psutil.Process().children(recursive=True)}  # the suite's brokers
    launcher = DaskLauncher(local_workers=2)
    try:
        processes = list(launcher.local_processes)
        assert len(processes) == 2
        [consumer] = plan(BenchConfig(count=10), ("consumer",))
        consumer.any_run = True  # `bench receive`: consumers only, waiting for the start
        [producer] = plan(BenchConfig(count=10, url="amqp://127.0.0.1:1"), ("producer",))
        launcher.start([consumer])
        ready = launcher.next_report(60)
        assert ready is not None and ready["kind"] == "ready", ready
        consumer_worker = psutil.Process(ready["pids"]["consumer-0"])
        agent_workers = consumer_worker.children(recursive=True)
        assert agent_workers
        # This task's Control cannot be made: it fails before run_agent can report.
        names = launcher.names
        launcher.names = {k: v for k, v in names.items() if k != "started"}
        launcher.start([producer])
        launcher.names = names
        error = _next(launcher)
        assert error == {"kind": "error", "agent": "producer-0",
                         "error": "producer-0: KeyError: 'started'"}
        assert "producer-0" in launcher.exited()

        os.kill(consumer_worker.pid, signal.SIGKILL)  # its nanny starts another worker
        error = _next(launcher)
        assert error["agent"] == "consumer-0"
        assert "its Dask worker tcp://127.0.0.1:" in error["error"] and "is gone" in \
            error["error"], error
        assert set(launcher.exited()) == {"consumer-0", "producer-0"}
    finally:
        launcher.close()
    # Ours, and the worker the nanny started in place of the killed one.
    ours = processes + agent_workers + [
        p for p in psutil.Process().children(recursive=True)
        if p.pid not in already and "resource_tracker" not in _command(p)]
    deadline = time.monotonic() + GONE_TIMEOUT  # an orphan is reaped by init
    while any(_alive(p) for p in ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [_command(p) for p in ours if _alive(p)]


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _next(launcher: DaskLauncher) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = launcher.next_report(0.2)
        if report is not None:
            return report
    pytest.fail("no report in 30 s")
