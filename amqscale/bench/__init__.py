"""`amqscale bench`, the load generator (docs/bench.md).

Layers, each importing only those below it: `cli` (the command line) over `live` (what a
run shows) and `output` (JSON, CSV, HdrHistogram logs, plots) over `coordinator` (the
start barrier, merging, the summary) over `launch` / `cluster` (agents as local processes
or Dask tasks) over `agents` (a producer or consumer in its own process) over `config`,
`schedule`, `stamp`, `tracking` and `model` / `histograms`.

    from amqscale.bench import BenchConfig, run

    if __name__ == "__main__":  # the agents are spawned processes: they import this file
        report = run(BenchConfig(rate="5000", duration=10))
        report.summary.histograms["latency"].percentile(99)

The names below load on first use, so that `amqscale send` runs without the bench extra
(`pip install amqscale[bench]`: hdrhistogram, numpy, rich, matplotlib).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import BenchConfig
    from .coordinator import BenchError, run
    from .model import RunReport

__all__ = ["BenchConfig", "BenchError", "RunReport", "run"]

_HOMES = {"BenchConfig": "config", "BenchError": "coordinator", "run": "coordinator",
          "RunReport": "model"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
