"""The load `amqscale bench` offers from one machine, side by side with proton-python and Proton C.

    .venv/bin/python perf/loadgen.py [--quick] [--runs 3] [--count 200000]
                                     [--paths p2p,rabbitmq] [--cases bench,bench-batch,...]
                                     [--no-warmup] [--out-dir perf/results]

Cases, each peer-to-peer and through RabbitMQ (a private node on a free loopback port,
queue `/queue/<fresh>` per run); all-out, at-least-once, 100-byte bodies (the C examples
send their own body, a map {"sequence": N}):

* `bench`, `bench-batch`, `bench-2x2`: `python -m amqscale.cli bench` as a subprocess with
  `--json` (one message per call, 1 producer + 1 consumer; `--batch 1000`; `-x 2 -y 2`),
  taking `summary.receive_rate`, `summary.send_rate` and `summary.cpu_us_per_msg`
  (the producers' processes and workers summed, the consumers' likewise).
* `proton`: proton-python's MessagingHandler sender -> receiver (perf/compare.py's
  "proton" family, perf/peers.py), rate = messages received / time.
* `c`: the Proton C examples, `send` -> `direct` peer-to-peer (`direct` listens and
  receives), `send` -> `receive` through RabbitMQ (compare.run_c_examples); CPU from
  wait4()'s rusage.

Each path's cases run interleaved (A B C ... A B C), after one warm-up pass (a tenth of the
count; none with --quick), `--runs` times; each figure is the median of the runs. Prints a
table (markdown) and writes `loadgen-<date>-<commit>.json` under `--out-dir` (config, every
run's raw figures, medians, ratios). Exits 1 if any run, warm-up included, failed, lost or
duplicated a message. See perf/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PERF_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF_DIR))

import compare  # noqa: E402  (puts the checkout on sys.path too)
import compare_report as report  # noqa: E402

from amqscale.testing import free_port  # noqa: E402
from amqscale.testing.brokers import build_c_example  # noqa: E402

SCHEMA = "amqscale-perf-loadgen/1"
BODY = 100
DEFAULT_COUNT = 200_000
QUICK_COUNT = 20_000
PATHS = ("p2p", "rabbitmq")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LoadCase:
    key: str
    kind: str  # "bench", "proton" or "c"
    label: str
    bench_args: tuple[str, ...] = ()

    def title(self, path: str) -> str:
        if self.kind == "c":
            return f"{self.label} send -> {'direct' if path == 'p2p' else 'receive'}"
        return self.label


CASES = (
    LoadCase("bench", "bench", "amqscale bench, 1 producer + 1 consumer, one per call"),
    LoadCase("bench-batch", "bench", "amqscale bench --batch 1000", ("--batch", "1000")),
    LoadCase("bench-2x2", "bench", "amqscale bench -x 2 -y 2 (2 agents a side)",
             ("-x", "2", "-y", "2")),
    LoadCase("proton", "proton", "proton-python MessagingHandler pair"),
    LoadCase("c", "c", "Proton C examples"),
)
CASE_KEYS = [case.key for case in CASES]


@dataclass
class Settings:
    count: int
    runs: int
    warmup: bool
    quick: bool
    paths: list[str]
    cases: list[LoadCase]
    out_dir: Path

    @property
    def warmup_count(self) -> int:
        return max(100, self.count // 10)

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "warmup_count": self.warmup_count if self.warmup else 0,
                "runs": self.runs, "warmup": self.warmup, "quick": self.quick,
                "paths": self.paths, "body_bytes": BODY, "mode": "at-least-once",
                "rate": "all-out",
                "cases": {c.key: {"kind": c.kind, "bench_args": list(c.bench_args),
                                  "titles": {p: c.title(p) for p in self.paths}}
                          for c in self.cases}}


def budget(count: int) -> float:
    """Seconds a run may take before it is stopped: bounded, generous for RabbitMQ."""
    return 120 + count / 200


# ---- amqscale bench -------------------------------------------------------------------------


class BenchProcess(compare.Peer):
    """The bench CLI. Killed (at reap's deadline), it takes its agents with it, by pid."""

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
        super().kill()


def bench_argv(case: LoadCase, count: int, broker: compare.Broker | None,
               json_path: Path) -> list[str]:
    argv = [sys.executable, "-m", "amqscale.cli", "bench", "--count", str(count),
            "--size", str(BODY), "--quiet", "--json", str(json_path), *case.bench_args]
    if broker is not None:
        argv += ["--url", broker.url, "--address", broker.fresh_address()]
    return argv


def run_bench(case: LoadCase, count: int, broker: compare.Broker | None,
              logdir: Path) -> dict[str, Any]:
    tag = f"{case.key}-{uuid.uuid4().hex[:6]}"
    json_path = logdir / f"{tag}.json"
    argv = bench_argv(case, count, broker, json_path)
    broker_cpu0 = broker.cpu_seconds() if broker else 0.0
    peer = BenchProcess(argv, logdir, tag, stdout_lines=False)
    tree_cpu, _, code = compare.reap(peer, budget(count))
    broker_cpu = broker.cpu_seconds() - broker_cpu0 if broker else None
    if not json_path.exists():
        return failed(count, f"bench exit {code}, no JSON{peer.tail()}")
    summary: dict[str, Any] = json.loads(json_path.read_text())["summary"]
    return bench_figures(count, summary, code, tree_cpu, broker_cpu, argv[2:])


def bench_figures(count: int, summary: dict[str, Any], code: int | None, tree_cpu: float,
                  broker_cpu: float | None, argv: list[str]) -> dict[str, Any]:
    cpu: dict[str, float] = summary["cpu_us_per_msg"]
    error = None
    if code != 0:
        error = f"bench exit {code}: {'; '.join(summary.get('failures', [])) or 'failed'}"
    return {
        "count": count,
        "msg_per_s": summary["receive_rate"],
        "send_msg_per_s": summary["send_rate"],
        "producer_us_per_msg": side_sum(cpu, "producer"),
        "consumer_us_per_msg": side_sum(cpu, "consumer"),
        "broker_us_per_msg": broker_cpu * 1e6 / count if broker_cpu is not None else None,
        "lost": summary["lost"] + max(0, count - summary["received"] - summary["lost"]),
        "duplicates": summary["duplicates"],
        "error": error,
        # The CLI's whole tree (wait4): coordinator, spawning and imports included.
        "tree_cpu_s": tree_cpu,
        "raw": {"argv": argv, "exit": code,
                "summary": summary},
    }


def side_sum(cpu: dict[str, float], prefix: str) -> float:
    """CPU per message of one side: every process named `prefix...` (agents, workers)."""
    return sum(v for name, v in cpu.items() if name.startswith(prefix))


# ---- proton-python and the C examples -------------------------------------------------------


@dataclass(frozen=True)
class CExamples:
    """What compare.run_c_examples reads of `broker.server`, for a broker (RabbitMQ) that
    does not carry the C examples itself."""

    port: int
    send_path: Path
    receive_path: Path


def with_c_examples(broker: compare.Broker) -> compare.Broker:
    server = CExamples(broker.server.port, build_c_example("send"),
                       build_c_example("receive"))
    return dataclasses.replace(broker, server=server)


def wait_listening(peer: compare.Peer, port: int, timeout: float) -> None:
    """Until `peer` listens on `port` (its own sockets, read by psutil: connecting to see
    would give `direct` a connection it counts as failed)."""
    proc = psutil.Process(peer.proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"{peer.name} exited early{peer.tail()}")
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
               for c in proc.net_connections("tcp")):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{peer.name}: not listening within {timeout:.0f} s{peer.tail()}")


def run_c_direct(count: int, logdir: Path) -> dict[str, Any]:
    """Proton C `direct` (listens, receives COUNT, accepting each) then `send` to it."""
    port = str(free_port([HOST]))
    tag = f"c-direct-{uuid.uuid4().hex[:6]}"
    receiver = compare.Peer([str(build_c_example("direct")), HOST, port, "perf", str(count)],
                            logdir, f"{tag}-direct", stdout_lines=False)
    sender: compare.Peer | None = None
    try:
        wait_listening(receiver, int(port), compare.READY_TIMEOUT)
        start = time.monotonic()
        sender = compare.Peer([str(build_c_example("send")), HOST, port, "perf", str(count)],
                              logdir, f"{tag}-send", stdout_lines=False)
        sent = compare.reap(sender, budget(count))
        got = compare.reap(receiver, budget(count))
    finally:
        for peer in (sender, receiver):
            if peer is not None:
                peer.kill()
    return c_raw(count, start, sent, got)


def c_raw(count: int, start: float, sent: tuple[float, float, int | None],
          got: tuple[float, float, int | None]) -> dict[str, Any]:
    """The reports of a C pair, shaped as compare.run_c_examples shapes them. `direct`
    exits 0 only once it has received and accepted COUNT messages."""
    (send_cpu, send_end, send_code), (recv_cpu, recv_end, recv_code) = sent, got
    ok = send_code == 0 and recv_code == 0
    error = None if ok else f"send exit {send_code}, direct exit {recv_code}"
    done = count if ok else 0
    return {
        "sender": {"role": "c-send", "count": done, "start": start, "first": start,
                   "last": send_end, "cpu_process": send_cpu, "cpu_workers": [],
                   "accepted": done, "error": error},
        "receiver": {"role": "c-direct", "count": done, "unique": done, "duplicates": 0,
                     "first": start, "last": recv_end, "cpu_process": recv_cpu,
                     "cpu_workers": [], "error": error},
        "broker_cpu": None,
    }


def run_reference(case: LoadCase, path: str, count: int, broker: compare.Broker | None,
                  logdir: Path) -> dict[str, Any]:
    """proton-python or the C examples, as compare's figures (report.run_figures)."""
    if case.kind == "proton":
        figures = compare.run_once(compare.Case("proton", path, BODY, False), count, 0.0,
                                   broker, logdir)
    elif broker is not None:
        figures = compare.run_once(compare.Case("c-examples", path, 0, False), count, 0.0,
                                   with_c_examples(broker), logdir)
    else:
        try:
            figures = report.run_figures(count, run_c_direct(count, logdir))
        except Exception as exc:  # one failed run must not lose the others
            figures = {"count": count, "error": f"{type(exc).__name__}: {exc}"}
    return reference_figures(count, figures)


def reference_figures(count: int, figures: dict[str, Any]) -> dict[str, Any]:
    cpu: dict[str, float] = figures.get("cpu_us_per_msg", {})
    return {
        "count": count,
        "msg_per_s": figures.get("msg_per_s", 0.0),
        "send_msg_per_s": None,
        "producer_us_per_msg": side_sum(cpu, "sender"),
        "consumer_us_per_msg": side_sum(cpu, "receiver"),
        "broker_us_per_msg": cpu.get("broker"),
        "lost": figures.get("lost", 0),
        "duplicates": figures.get("duplicates", 0),
        "error": figures.get("error"),
        "raw": figures,
    }


def failed(count: int, error: str) -> dict[str, Any]:
    return {"count": count, "msg_per_s": 0.0, "send_msg_per_s": None, "lost": 0,
            "duplicates": 0, "error": error}


def run_once(case: LoadCase, path: str, count: int, broker: compare.Broker | None,
             logdir: Path) -> dict[str, Any]:
    try:
        if case.kind == "bench":
            return run_bench(case, count, broker, logdir)
        return run_reference(case, path, count, broker, logdir)
    except Exception as exc:  # one failed run must not lose the others
        return failed(count, f"{type(exc).__name__}: {exc}")


# ---- a path: warm-up, interleaved runs, medians ---------------------------------------------


FIGURES = ("msg_per_s", "send_msg_per_s", "producer_us_per_msg", "consumer_us_per_msg",
           "broker_us_per_msg")


def describe(figures: dict[str, Any]) -> str:
    if figures.get("error"):
        return f"ERROR {figures['error']}"
    return (f"{figures['msg_per_s']:,.0f} msg/s, producer {figures['producer_us_per_msg']:.1f}"
            f" / consumer {figures['consumer_us_per_msg']:.1f} us/msg, "
            f"lost {figures['lost']}, duplicates {figures['duplicates']}")


def run_path(path: str, settings: Settings, logdir: Path, cases: dict[str, Any]) -> None:
    entries = {c.key: cases.setdefault(f"{path}/{c.key}", {
        "case": c.key, "path": path, "title": c.title(path), "warmup": [], "runs": []})
        for c in settings.cases}
    try:
        with compare.broker_for(path) as broker:
            if settings.warmup:
                for case in settings.cases:
                    figures = run_once(case, path, settings.warmup_count, broker, logdir)
                    entries[case.key]["warmup"].append(figures)
                    print(f"  warm-up {path}/{case.key}: {describe(figures)}", flush=True)
            for run in range(settings.runs):
                for case in settings.cases:
                    figures = run_once(case, path, settings.count, broker, logdir)
                    entries[case.key]["runs"].append(figures)
                    print(f"  run {run + 1}/{settings.runs} {path}/{case.key}: "
                          f"{describe(figures)}", flush=True)
    except Exception as exc:  # the broker did not start (or stop): its cases failed
        for entry in entries.values():
            entry.setdefault("errors", []).append(f"{path}: {type(exc).__name__}: {exc}")
    for entry in entries.values():
        summarize(entry)


def summarize(entry: dict[str, Any]) -> None:
    """Medians over the runs without errors; errors, and losses and duplicates of the runs
    without one, over every run, warm-up included (a failed run's losses are its error's)."""
    every = entry["warmup"] + entry["runs"]
    good = [r for r in entry["runs"] if not r.get("error")]
    entry["runs_ok"] = len(good)
    entry["errors"] = entry.get("errors", []) + [r["error"] for r in every if r.get("error")]
    entry["lost"] = sum(r.get("lost", 0) for r in every if not r.get("error"))
    entry["duplicates"] = sum(r.get("duplicates", 0) for r in every if not r.get("error"))
    for name in FIGURES:
        values = [r[name] for r in good if r.get(name) is not None]
        entry[name] = statistics.median(values) if values else None
    entry["passed"] = (not entry["errors"] and not entry["lost"] and not entry["duplicates"]
                       and len(good) == len(entry["runs"]) > 0)


# ---- ratios, table, document ----------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def cpu_total(entry: dict[str, Any] | None) -> float | None:
    if not entry or entry.get("producer_us_per_msg") is None:
        return None
    return float(entry["producer_us_per_msg"] + entry["consumer_us_per_msg"])


def ratios(cases: dict[str, Any], paths: list[str]) -> dict[str, dict[str, Any]]:
    """Per path and amqscale case: msg/s and CPU per message (producer + consumer sides)
    over proton-python's and over the C examples', same path, same run."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        proton, c = cases.get(f"{path}/proton"), cases.get(f"{path}/c")
        for key in ("bench", "bench-batch", "bench-2x2"):
            entry = cases.get(f"{path}/{key}")
            if entry is None:
                continue
            out.setdefault(path, {})[key] = {
                "rate_vs_proton": ratio(entry["msg_per_s"], proton and proton["msg_per_s"]),
                "rate_vs_c": ratio(entry["msg_per_s"], c and c["msg_per_s"]),
                "cpu_per_msg_vs_proton": ratio(cpu_total(entry), cpu_total(proton)),
                "cpu_per_msg_vs_c": ratio(cpu_total(entry), cpu_total(c)),
            }
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(document: dict[str, Any]) -> str:
    lines = ["| case | path | msg/s | send msg/s | producer side us/msg | consumer side us/msg"
             " | broker us/msg | x proton-python | x Proton C |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in document["cases"].values():
        r = document["ratios"].get(entry["path"], {}).get(entry["case"], {})
        flag = "" if entry["passed"] else " **FAILED**"
        lines.append(
            f"| {entry['title']}{flag} | {entry['path']} | {fmt(entry['msg_per_s'], ',.0f')} "
            f"| {fmt(entry['send_msg_per_s'], ',.0f')} "
            f"| {fmt(entry['producer_us_per_msg'], '.1f')} "
            f"| {fmt(entry['consumer_us_per_msg'], '.1f')} "
            f"| {fmt(entry['broker_us_per_msg'], '.1f')} "
            f"| {fmt(r.get('rate_vs_proton'), '.2f')}{'x' if r.get('rate_vs_proton') else ''} "
            f"| {fmt(r.get('rate_vs_c'), '.2f')}{'x' if r.get('rate_vs_c') else ''} |")
    return "\n".join(lines)


def failures(cases: dict[str, Any]) -> list[str]:
    out = []
    for name, entry in cases.items():
        out += [f"{name}: {error}" for error in entry["errors"]]
        if entry["lost"] or entry["duplicates"]:
            out.append(f"{name}: lost {entry['lost']}, duplicated {entry['duplicates']}")
        elif not entry["errors"] and not entry["passed"]:
            out.append(f"{name}: no run")
    return out


def git_commit() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=compare.REPO_ROOT, capture_output=True,
                              text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") or "unknown", bool(git("status", "--porcelain"))


def parse_args(argv: list[str]) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_COUNT:,} messages, 1 run, no warm-up")
    ap.add_argument("--runs", type=int, help="runs per case, median kept (default 3; quick 1)")
    ap.add_argument("--count", type=int,
                    help=f"messages per run (default {DEFAULT_COUNT:,}; quick {QUICK_COUNT:,})")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--paths", default=",".join(PATHS), help="p2p and/or rabbitmq")
    ap.add_argument("--cases", default=",".join(CASE_KEYS), help=", ".join(CASE_KEYS))
    ap.add_argument("--out-dir", type=Path, default=PERF_DIR / "results")
    args = ap.parse_args(argv)
    paths = args.paths.split(",")
    keys = args.cases.split(",")
    if not set(paths) <= set(PATHS) or not set(keys) <= set(CASE_KEYS):
        ap.error(f"--paths from {', '.join(PATHS)}; --cases from {', '.join(CASE_KEYS)}")
    return Settings(
        count=args.count or (QUICK_COUNT if args.quick else DEFAULT_COUNT),
        runs=args.runs or (1 if args.quick else 3),
        warmup=not (args.quick or args.no_warmup),
        quick=args.quick, paths=paths,
        cases=[c for c in CASES if c.key in keys], out_dir=args.out_dir)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    commit, dirty = git_commit()
    document: dict[str, Any] = {
        "schema": SCHEMA, "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {**compare.host_facts(), "dirty": dirty}, "config": settings.as_json(),
        "cases": {}}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amqscale-loadgen-") as tmp:
        for path in settings.paths:
            print(f"{path}: {len(settings.cases)} case(s) x {settings.runs} run(s)", flush=True)
            run_path(path, settings, Path(tmp), document["cases"])
    document["host"]["load_average_end"] = list(os.getloadavg())
    document["seconds"] = round(time.monotonic() - began, 1)
    document["ratios"] = ratios(document["cases"], settings.paths)
    document["failures"] = failures(document["cases"])
    document["passed"] = not document["failures"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = settings.out_dir / f"loadgen-{stamp}-{commit}.json"
    out.write_text(json.dumps(document, indent=1) + "\n")
    print("\n" + table(document))
    for failure in document["failures"]:
        print(f"FAILED {failure}")
    print(f"\nwrote {out}")
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
