"""In-worker handlers against the same handler in the user's process, and against
proton-python's MessagingHandler: one consumer of a RabbitMQ queue, three ways.

    .venv/bin/python perf/worker_handlers.py [--messages 50000] [--runs 3] [--workers 2]
                                             [--spin-us 0] [--cases ...] [--out FILE.json]

Cases (the consumer's on_message is `perf/handler_work.py:work` in each: read the id, a
property and the body, count):
* ``in-worker``: ``conn.open_receiver(queue, handler="handler_work:Work")`` on
  ``--workers`` workers with as many shards, 1000 credit per link; the user's process only
  waits for the counts.
* ``user-process``: the same ``Work`` class in amqscale.reactor's Container (``--workers``
  workers, as many shards, prefetch 1000 per shard), on_message in the user's thread.
* ``proton``: proton-python's Container and a MessagingHandler with the same on_message,
  prefetch 1000.
``--spin-us N`` makes each on_message spend N us of CPU more (a consumer with work to do):
through RabbitMQ on 2 cores the broker is the bottleneck otherwise, and every case but
proton's waits for it. The JSON goes to perf/results/worker-handlers-TIME.json by default.

A queue of ``--messages`` messages (an id, 3 application properties, a 100-byte body) is
filled before each run (pre-settled, by a separate Container), then one case consumes
it in a process of its own. Runs go interleaved (a run of every case, then the next), and
each figure is the median over ``--runs``.
* msg/s: messages / (last message handled - link attached), timed inside the consumer.
* CPU us/msg: the consumer's process and its workers, and RabbitMQ's process tree as a
  column of its own, from psutil over that same window (sampled by the consumer); and the
  total. psutil counts in clock ticks (10 ms): use enough messages.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(PERF_DIR))

CASES = ("in-worker", "user-process", "proton")
CHILD_TIMEOUT = 900.0
CREDIT = 1000  # per link


BROKER: list[psutil.Process] = []  # the broker's processes, sampled by the consumer


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


# ---- the consumers (each in a child process) -------------------------------------------------


def child_in_worker(url: str, address: str, count: int, workers: int,
                    spin_us: float) -> dict[str, Any]:
    import amqscale

    with amqscale.Container(workers=workers) as container:
        conn = container.connect(url, shards=workers)
        procs = [psutil.Process()] + [psutil.Process(s["pid"])
                                      for s in container.worker_stats()]
        cpu0, broker0, t0 = _cpu(procs), _cpu(BROKER), time.monotonic()
        receiver = conn.open_receiver(address, handler="handler_work:Work",
                                      handler_args={"spin_us": spin_us},
                                      credit=CREDIT * workers)
        receiver.wait(handled=count, timeout=CHILD_TIMEOUT)
        t1, cpu1, broker1 = time.monotonic(), _cpu(procs), _cpu(BROKER)
        shares = {w: c["handled"] for w, c in receiver.counts().items()}
        receiver.close()
    return {"seconds": t1 - t0, "cpu": cpu1 - cpu0, "broker_cpu": broker1 - broker0,
            "shares": shares}


def child_user_process(url: str, address: str, count: int, workers: int,
                       spin_us: float) -> dict[str, Any]:
    from handler_work import Work

    from amqscale.handlers import MessagingHandler
    from amqscale.reactor import Container

    marks: dict[str, Any] = {}

    def opened(event: Any) -> None:
        procs = [psutil.Process()] + [psutil.Process(pid) for pid in container.worker_pids()]
        marks["procs"] = procs
        marks["cpu0"], marks["b0"], marks["t0"] = _cpu(procs), _cpu(BROKER), time.monotonic()

    def done(event: Any) -> None:
        marks["t1"], marks["cpu1"] = time.monotonic(), _cpu(marks["procs"])
        marks["b1"] = _cpu(BROKER)
        event.container.stop()

    class Start(MessagingHandler):
        def on_start(self, event: Any) -> None:
            conn = event.container.connect(url, shards=workers)
            event.container.create_receiver(
                conn, address, handler=Work(count, done, opened, CREDIT * workers, spin_us))

    container = Container(Start(), workers=workers)
    container.run()
    return {"seconds": marks["t1"] - marks["t0"], "cpu": marks["cpu1"] - marks["cpu0"],
            "broker_cpu": marks["b1"] - marks["b0"]}


def child_proton(url: str, address: str, count: int, workers: int,
                 spin_us: float) -> dict[str, Any]:
    from handler_work import proton_work_class
    from proton.handlers import MessagingHandler
    from proton.reactor import Container

    marks: dict[str, Any] = {}
    me = psutil.Process()

    def opened(event: Any) -> None:
        marks["cpu0"], marks["b0"], marks["t0"] = _cpu([me]), _cpu(BROKER), time.monotonic()

    def done(event: Any) -> None:
        marks["t1"], marks["cpu1"], marks["b1"] = time.monotonic(), _cpu([me]), _cpu(BROKER)
        event.connection.close()

    work_class = proton_work_class()

    class Start(MessagingHandler):  # type: ignore[misc]
        def on_start(self, event: Any) -> None:
            conn = event.container.connect(url)
            event.container.create_receiver(conn, address,
                                            handler=work_class(count, done, opened, CREDIT,
                                                               spin_us))

    Container(Start()).run()
    return {"seconds": marks["t1"] - marks["t0"], "cpu": marks["cpu1"] - marks["cpu0"],
            "broker_cpu": marks["b1"] - marks["b0"]}


CHILDREN = {"in-worker": child_in_worker, "user-process": child_user_process,
            "proton": child_proton}


# ---- the parent -------------------------------------------------------------------------------


def fill(container: Any, url: str, address: str, count: int) -> None:
    import amqscale

    conn = container.connect(url, shards=2)
    sender = conn.open_sender(address, window=2000, presettled=True)
    body = b"x" * 100
    for lo in range(0, count, 10_000):
        sender.send_many([
            amqscale.Message(id=i, body=body, properties={"k": i, "source": "bench", "n": 3})
            for i in range(lo, min(count, lo + 10_000))])
    sender.flush(timeout=300)
    conn.close()


def run_child(case: str, url: str, address: str, count: int, workers: int, spin_us: float,
              broker: list[psutil.Process]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, "--url", url, "--address", address,
         "--messages", str(count), "--workers", str(workers), "--spin-us", str(spin_us),
         "--broker-pids", ",".join(str(proc.pid) for proc in broker)],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{case} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(case=case, msgs_per_s=count / result["seconds"],
                  us_per_msg=1e6 * result["cpu"] / count,
                  broker_us_per_msg=1e6 * result["broker_cpu"] / count)
    result["total_us_per_msg"] = result["us_per_msg"] + result["broker_us_per_msg"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="CPU each on_message spends besides reading the message")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=CASES)
    parser.add_argument("--url")
    parser.add_argument("--address")
    parser.add_argument("--broker-pids", default="")
    args = parser.parse_args(argv)
    if args.child:
        BROKER.extend(psutil.Process(int(pid)) for pid in args.broker_pids.split(",") if pid)
        result = CHILDREN[args.child](args.url, args.address, args.messages, args.workers,
                                      args.spin_us)
        print(json.dumps(result), flush=True)
        return result

    import amqscale
    from amqscale.testing import RabbitMQ

    runs: list[dict[str, Any]] = []
    started = time.time()
    load = os.getloadavg()
    with RabbitMQ() as rabbit, amqscale.Container(workers=2) as filler:
        broker = [psutil.Process(pid) for pid in rabbit.pids()]
        broker += [c for proc in broker for c in proc.children(recursive=True)]
        for run in range(args.runs):
            for case in args.cases:
                address = f"/queue/wh-{case}-{run}-{os.getpid()}"
                fill(filler, rabbit.url, address, args.messages)
                time.sleep(0.5)  # the broker settles what it was sent
                result = run_child(case, rabbit.url, address, args.messages, args.workers,
                                   args.spin_us, broker)
                result["run"] = run
                runs.append(result)
                print(f"run {run} {case:13s} {result['msgs_per_s']:9,.0f} msg/s  "
                      f"{result['us_per_msg']:6.1f} us/msg (consumer)  "
                      f"{result['broker_us_per_msg']:6.1f} us/msg (RabbitMQ)"
                      + (f"  shares {result['shares']}" if "shares" in result else ""),
                      flush=True)
    summary: dict[str, dict[str, float]] = {}
    for case in args.cases:
        rows = [r for r in runs if r["case"] == case]
        summary[case] = {key: statistics.median(r[key] for r in rows)
                         for key in ("msgs_per_s", "us_per_msg", "broker_us_per_msg",
                                     "total_us_per_msg")}
    ratios: dict[str, dict[str, float]] = {}
    if "in-worker" in summary:
        base = summary["in-worker"]
        for other in (c for c in args.cases if c != "in-worker"):
            ratios[f"in-worker vs {other}"] = {
                "msgs_per_s": base["msgs_per_s"] / summary[other]["msgs_per_s"],
                "consumer_cpu_per_msg": base["us_per_msg"] / summary[other]["us_per_msg"],
                "total_cpu_per_msg": (base["total_us_per_msg"]
                                      / summary[other]["total_us_per_msg"]),
            }
    print(f"\nmedians of {args.runs} runs, {args.messages:,} messages, "
          f"{args.workers} workers (in-worker and user-process cases), "
          f"on_message spinning {args.spin_us:g} us")
    print(f"{'case':14s} {'msg/s':>10s} {'consumer us/msg':>16s} {'RabbitMQ us/msg':>16s} "
          f"{'total us/msg':>13s}")
    for case, row in summary.items():
        print(f"{case:14s} {row['msgs_per_s']:10,.0f} {row['us_per_msg']:16.1f} "
              f"{row['broker_us_per_msg']:16.1f} {row['total_us_per_msg']:13.1f}")
    for name, row in ratios.items():
        print(f"{name}: {row['msgs_per_s']:.2f}x msg/s, {row['consumer_cpu_per_msg']:.2f}x "
              f"consumer CPU per message, {row['total_cpu_per_msg']:.2f}x with RabbitMQ's")
    document = {
        "benchmark": "worker_handlers", "messages": args.messages, "runs": args.runs,
        "workers": args.workers, "spin_us": args.spin_us, "started": started,
        "seconds": time.time() - started,
        "load_before": load, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
        "results": runs, "medians": summary, "ratios": ratios,
    }
    out = args.out or PERF_DIR / "results" / (
        "worker-handlers-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    print(f"wrote {out}")
    return document


if __name__ == "__main__":
    main()
