"""Agents as local processes: one spawned process per producer and per consumer.

The coordinator's side of the line is a `Launcher`; the agents' side is a `Control`
(amqscale.bench.agents). Here both are multiprocessing primitives: one queue for every
agent's reports, an event and a shared double for the start time, an event to stop the
consumers. amqscale.bench.cluster implements the same two with Dask.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from .agents import run_agent
from .config import AgentPlan

JOIN_TIMEOUT = 30.0


class Launcher(Protocol):
    def start(self, plans: list[AgentPlan]) -> None: ...

    def next_report(self, timeout: float) -> dict[str, Any] | None: ...

    def set_start(self, when: float) -> None: ...

    def stop_consumers(self) -> None: ...

    def exited(self) -> list[str]:
        """Agents that ended (their process or task is over), by name."""
        ...

    def close(self) -> None: ...


class _LocalControl:
    def __init__(self, reports: Any, started: Any, start_time: Any, stop: Any) -> None:
        self.reports, self.started, self.start_time, self.stop = (
            reports, started, start_time, stop)

    def report(self, message: dict[str, Any]) -> None:
        self.reports.put(message)

    def wait_start(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.started.wait(0.1):
            if self.stop.is_set():
                raise TimeoutError("the run was stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no start from the coordinator in {timeout:g} s")
        return float(self.start_time.value)

    def stop_requested(self) -> bool:
        return bool(self.stop.is_set())


class LocalLauncher:
    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.reports = self.context.Queue()
        self.started = self.context.Event()
        self.start_time = self.context.Value("d", 0.0)
        self.stop = self.context.Event()
        self.processes: dict[str, BaseProcess] = {}

    def start(self, plans: list[AgentPlan]) -> None:
        control = _LocalControl(self.reports, self.started, self.start_time, self.stop)
        for plan in plans:
            process = self.context.Process(target=run_agent, args=(plan, control),
                                           name=f"amqscale-bench-{plan.name}", daemon=True)
            process.start()
            self.processes[plan.name] = process

    def next_report(self, timeout: float) -> dict[str, Any] | None:
        try:
            report: dict[str, Any] = self.reports.get(timeout=timeout)
        except queue.Empty:
            return None
        return report

    def set_start(self, when: float) -> None:
        self.start_time.value = when
        self.started.set()

    def stop_consumers(self) -> None:
        self.stop.set()

    def exited(self) -> list[str]:
        return [name for name, process in self.processes.items() if not process.is_alive()]

    def close(self) -> None:
        self.stop.set()  # an agent still waiting for the start gives up
        for process in self.processes.values():
            process.join(JOIN_TIMEOUT)
        for process in self.processes.values():
            if process.is_alive():
                process.kill()
                process.join(5)
