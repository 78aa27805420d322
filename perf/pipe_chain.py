"""The machine's latency floor for a pipeline of processes: no AMQP, no Python work.

A paced sender, HOPS-1 relays and a receiver, joined by pipes: the same number of
processes and hand-offs as an amqscale pair (sender, its worker, the receiver's worker,
the receiver) when HOPS is 3. Message i is due at start + i/rate and carries that time; the
sender writes every message that is due, then sleeps until the next one; the receiver
records arrival - due time, as perf/peers.py does (coordinated omission included).

    python perf/pipe_chain.py --hops 3 --rate 31000 --seconds 5 [--json PATH]

`--json PATH` also writes the figures there (the receiver writes it before it exits): hops,
rate, seconds, count and p50_us / p99_us / p99_9_us / max_us (microseconds), and, when the
hdrh package is importable, `histogram`: a base64 HdrHistogram (1 us to 60 s, 3 digits) as
perf/peers.py's receivers record, so that perf/compare.py can merge runs as it merges theirs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import time

STAMP = struct.Struct("q")


def keep_only(pipes: list[tuple[int, int]], *keep: int) -> None:
    """Close every pipe end but `keep`: EOF must reach each process when its writer ends."""
    for ends in pipes:
        for fd in ends:
            if fd not in keep:
                os.close(fd)


def relay(source: int, sink: int) -> None:
    while data := os.read(source, 65536):
        os.write(sink, data)


def receive(source: int) -> list[int]:
    latencies: list[int] = []
    pending = b""
    while data := os.read(source, 65536):
        now = time.monotonic_ns()
        pending += data
        whole = len(pending) - len(pending) % STAMP.size
        latencies.extend(now - due for (due,) in STAMP.iter_unpack(pending[:whole]))
        pending = pending[whole:]
    return latencies


def send(sink: int, rate: float, count: int) -> None:
    interval = 1e9 / rate
    start = time.monotonic_ns()
    seq = 0
    while seq < count:
        now = time.monotonic_ns()
        due_upto = min(count, int((now - start) / interval) + 1)
        if due_upto > seq:
            os.write(sink, b"".join(STAMP.pack(int(start + i * interval))
                                    for i in range(seq, due_upto)))
            seq = due_upto
        else:
            time.sleep((start + seq * interval - now) / 1e9)


def figures(hops: int, rate: float, seconds: float, latencies: list[int]) -> dict[str, object]:
    """The percentiles (microseconds) of `latencies` (nanoseconds), and the HdrHistogram."""
    latencies.sort()
    n = len(latencies)

    def at(fraction: float) -> float:
        return latencies[min(n - 1, int(n * fraction))] / 1e3 if n else 0.0

    result: dict[str, object] = {
        "hops": hops, "processes": hops + 1, "rate": rate, "seconds": seconds, "count": n,
        "p50_us": at(0.5), "p99_us": at(0.99), "p99_9_us": at(0.999), "max_us": at(1.0)}
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return result
    histogram = HdrHistogram(1, 60_000_000, 3)  # 1 us .. 60 s, as perf/peers.py records
    for ns in latencies:
        histogram.record_value(max(1, ns // 1000))
    result["histogram"] = base64.b64encode(histogram.encode()).decode()
    return result


def report(result: dict[str, object]) -> str:
    return (f"{result['hops']} hops at {result['rate']:,.0f} msg/s, {result['count']} "
            f"messages: p50 {result['p50_us']:,.0f} us, p99 {result['p99_us']:,.0f} us, "
            f"p99.9 {result['p99_9_us']:,.0f} us, max {result['max_us']:,.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=3, help="pipes between sender and receiver")
    ap.add_argument("--rate", type=float, default=10_000.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures there as JSON")
    args = ap.parse_args()
    if args.hops < 1 or args.rate <= 0 or args.seconds <= 0:
        ap.error("--hops must be at least 1, --rate and --seconds above 0")
    pipes = [os.pipe() for _ in range(args.hops)]
    children = []
    for hop in range(1, args.hops + 1):
        pid = os.fork()
        if pid == 0:  # a relay, or (the last hop) the receiver
            source = pipes[hop - 1][0]
            if hop < args.hops:
                keep_only(pipes, source, pipes[hop][1])
                relay(source, pipes[hop][1])
            else:
                keep_only(pipes, source)
                result = figures(args.hops, args.rate, args.seconds, receive(source))
                if args.json:
                    with open(args.json, "w") as out:
                        json.dump(result, out)
                print(report(result), flush=True)
            os._exit(0)
        children.append(pid)
    keep_only(pipes, pipes[0][1])
    send(pipes[0][1], args.rate, int(args.rate * args.seconds))
    os.close(pipes[0][1])
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
