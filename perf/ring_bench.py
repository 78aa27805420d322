"""Cross-process throughput and wake-up latency of the shared-memory rings.

One producer process, one consumer process, 100-byte records. Measured side by side in
one run, so that they share the machine's state:

* ``ring``: :class:`amqscale.ipc.ring.RingWriter` in a child started with ``pass_fds``,
  :class:`~amqscale.ipc.ring.RingReader` in this process; one ``try_write`` per record,
  or ``write_batch`` of 100 records;
* ``ring (python core)``: the same over the pure-Python reference core, which shows what
  the C hot path buys;
* ``multiprocessing.Queue``: one ``put`` per record, or one ``put`` of a list of 100;
* ``faster-fifo`` (if importable): ``put`` per record, or ``put_many`` of 100.

Rates are taken at the consumer, from the first record received to the last, so process
start-up is not counted; each figure is the median of ``--repeat`` rounds. The wake-up
round trip is a ping-pong over a ring pair where both sides park on their eventfd every
time (``spin = 0``), and again with the default short spin.

Usage: ``python perf/ring_bench.py [--quick] [--repeat N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from amqscale.ipc._pycore import PyRingCore
from amqscale.ipc.ring import (
    DEFAULT_SPIN,
    RingPair,
    RingPairHandles,
    RingReader,
    RingWriter,
)

RECORD = b"x" * 100
BATCH = 100
CAPACITY = 1 << 20
READ_MAX = 4096

TARGET_BATCHED = 10e6
TARGET_ONE = 2e6
TARGET_VS_QUEUE = 20.0


class PyRingWriter(RingWriter):
    _CORE = PyRingCore


class PyRingReader(RingReader):
    _CORE = PyRingCore


@dataclass
class Result:
    mechanism: str
    mode: str
    records: int
    rate: float  # records per second, median of the rounds
    rounds: list[float]


# --- the ring: a child that serves commands over a ring pair --------------------------------


def make_pair(core: str) -> RingPair:
    if core == "python":
        return RingPair(PyRingWriter.create(CAPACITY), PyRingReader.create(CAPACITY))
    return RingPair.create(CAPACITY)


def attach_pair(core: str, handles: RingPairHandles) -> RingPair:
    if core == "python":
        writer = PyRingWriter.attach(handles.outbound)
        return RingPair(writer, PyRingReader.attach(handles.inbound))
    return RingPair.attach(handles)


def produce_one_per_call(writer: RingWriter, count: int) -> None:
    try_write = writer.try_write
    for _ in range(count):
        if not try_write(RECORD):
            writer.write(RECORD)


def produce_batched(writer: RingWriter, count: int) -> None:
    batch = [RECORD] * BATCH
    for _ in range(count // BATCH):
        done = writer.write_batch(batch)
        while done < BATCH:
            writer.write(batch[done])
            done += 1


def serve_pings(pair: RingPair, count: int, spin: int) -> None:
    pair.inbound.spin = pair.outbound.spin = spin
    for _ in range(count):
        pair.inbound.wait()
        pair.outbound.write_batch(pair.inbound.read_batch())


def child_main(core: str, handles: str) -> None:
    """Obey commands ``one N``, ``batch N``, ``ping N SPIN``, ``quit`` from the parent."""
    with attach_pair(core, RingPairHandles.decode(handles)) as pair:
        while True:
            pair.inbound.wait()
            (command,) = pair.inbound.read_batch(1)
            verb, *args = command.decode().split()
            if verb == "one":
                produce_one_per_call(pair.outbound, int(args[0]))
            elif verb == "batch":
                produce_batched(pair.outbound, int(args[0]))
            elif verb == "ping":
                serve_pings(pair, int(args[0]), int(args[1]))
            else:
                return


class RingChild:
    """A producer process for one core kind, reused across rounds."""

    def __init__(self, core: str) -> None:
        self.pair = make_pair(core)
        handles = self.pair.peer_handles()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", core, handles.encode()],
            pass_fds=handles.fds(),
        )

    def command(self, text: str) -> None:
        self.pair.outbound.write(text.encode(), timeout=60)

    def consume(self, count: int) -> float:
        """Records per second seen here, from the first batch received to the last."""
        reader = self.pair.inbound
        reader.wait(timeout=60)
        received = len(reader.read_batch(READ_MAX))
        start = received  # the clock starts once the first batch is in
        first = last = time.perf_counter()
        while received < count:
            reader.wait(timeout=60)
            received += len(reader.read_batch(READ_MAX))
            last = time.perf_counter()
        return (received - start) / (last - first)

    def pings(self, count: int, spin: int) -> list[float]:
        """Round-trip times in microseconds."""
        self.pair.inbound.spin = self.pair.outbound.spin = spin
        self.command(f"ping {count} {spin}")
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            self.pair.outbound.try_write(b"p")
            self.pair.inbound.wait(timeout=60)
            self.pair.inbound.read_batch()
            times.append((time.perf_counter_ns() - start) / 1000)
        return times

    def close(self) -> None:
        self.command("quit")
        self.process.wait(timeout=60)
        self.pair.close()


def bench_ring(core: str, counts: dict[str, int], repeat: int) -> list[Result]:
    child = RingChild(core)
    name = "ring" if core == "c" else "ring (python core)"
    results = []
    try:
        for mode in ("one", "batch"):
            count = counts[mode]
            rounds = []
            for _ in range(repeat):
                child.command(f"{mode} {count}")
                rounds.append(child.consume(count))
            results.append(Result(name, mode, count, statistics.median(rounds), rounds))
    finally:
        child.close()
    return results


def bench_wakeup(count: int) -> dict[str, dict[str, float]]:
    child = RingChild("c")
    out = {}
    try:
        for label, spin in (("parked (spin=0)", 0), ("default spin", DEFAULT_SPIN)):
            times = sorted(child.pings(count, spin))
            out[label] = {
                "p50_us": times[len(times) // 2],
                "p99_us": times[int(len(times) * 0.99)],
            }
    finally:
        child.close()
    return out


# --- the queues -----------------------------------------------------------------------------


def queue_producer(queue: Any, mode: str, count: int, put_many: bool) -> None:
    if mode == "one":
        for _ in range(count):
            queue.put(RECORD)
    elif put_many:
        batch = [RECORD] * BATCH
        for _ in range(count // BATCH):
            queue.put_many(batch)
    else:
        batch = [RECORD] * BATCH
        for _ in range(count // BATCH):
            queue.put(batch)


def consume_queue(get: Callable[[], int], count: int) -> float:
    """Records per second, from the first get to the last (as for the ring)."""
    received = start = get()
    first = last = time.perf_counter()
    while received < count:
        received += get()
        last = time.perf_counter()
    return (received - start) / (last - first)


def queue_round(kind: str, mode: str, count: int) -> float:
    ctx = mp.get_context("fork")
    if kind == "mp":
        queue: Any = ctx.Queue()
        if mode == "one":

            def get() -> int:
                queue.get()
                return 1
        else:

            def get() -> int:
                return len(queue.get())
    else:
        from faster_fifo import Queue

        queue = Queue(max_size_bytes=CAPACITY)

        def get() -> int:
            return len(queue.get_many(max_messages_to_get=READ_MAX, timeout=60))

    producer = ctx.Process(target=queue_producer, args=(queue, mode, count, kind != "mp"))
    producer.start()
    try:
        return consume_queue(get, count)
    finally:
        producer.join(timeout=60)


def bench_queue(kind: str, counts: dict[str, int], repeat: int) -> list[Result]:
    name = "multiprocessing.Queue" if kind == "mp" else "faster-fifo"
    results = []
    for mode in ("one", "batch"):
        rounds = [queue_round(kind, mode, counts[mode]) for _ in range(repeat)]
        results.append(Result(name, mode, counts[mode], statistics.median(rounds), rounds))
    return results


def have_faster_fifo() -> bool:
    try:
        import faster_fifo  # noqa: F401
    except ImportError:
        return False
    return True


# --- report ---------------------------------------------------------------------------------


def rate_of(results: list[Result], mechanism: str, mode: str) -> float:
    return next(r.rate for r in results if r.mechanism == mechanism and r.mode == mode)


def targets(results: list[Result]) -> dict[str, dict[str, Any]]:
    one = rate_of(results, "ring", "one")
    batched = rate_of(results, "ring", "batch")
    queue = rate_of(results, "multiprocessing.Queue", "one")
    checks = {
        "ring batched >= 10 M/s": (batched, TARGET_BATCHED),
        "ring one per call >= 2 M/s": (one, TARGET_ONE),
        "ring one per call >= 20x multiprocessing.Queue": (one / queue, TARGET_VS_QUEUE),
    }
    return {k: {"value": v, "target": t, "met": v >= t} for k, (v, t) in checks.items()}


def print_report(
    results: list[Result], wakeup: dict[str, dict[str, float]], checks: dict[str, Any]
) -> None:
    print(f"{'mechanism':<24} {'mode':<14} {'records':>10} {'M records/s':>12}")
    labels = {"one": "one per call", "batch": f"batch of {BATCH}"}
    for r in results:
        print(f"{r.mechanism:<24} {labels[r.mode]:<14} {r.records:>10,} {r.rate / 1e6:>12.2f}")
    print()
    print(f"{'wake-up round trip':<24} {'p50 us':>8} {'p99 us':>8}")
    for label, figures in wakeup.items():
        print(f"{label:<24} {figures['p50_us']:>8.1f} {figures['p99_us']:>8.1f}")
    print()
    for name, check in checks.items():
        verdict = "met" if check["met"] else "MISSED"
        print(f"{name:<48} {check['value']:>14,.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the records")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    scale = 10 if args.quick else 1
    ring_counts = {"one": 500_000 // scale, "batch": 2_000_000 // scale}
    slow_counts = {"one": 50_000 // scale, "batch": 250_000 // scale}
    results = bench_ring("c", ring_counts, args.repeat)
    results += bench_ring("python", slow_counts, args.repeat)
    results += bench_queue("mp", slow_counts, args.repeat)
    if have_faster_fifo():
        results += bench_queue("faster-fifo", slow_counts, args.repeat)
    wakeup = bench_wakeup(2_000 // scale * 2)
    checks = targets(results)
    print_report(results, wakeup, checks)
    if args.json:
        document = {
            "record_bytes": len(RECORD),
            "results": [asdict(r) for r in results],
            "wakeup_round_trip": wakeup,
            "targets": checks,
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)


if __name__ == "__main__":
    main()
