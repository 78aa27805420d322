"""What a large message costs: memory in each process, and the stall of another link.

    .venv/bin/python perf/large_message.py [--mb 100] [--messages 1]

Three processes, each with its own Container of one worker. A receiver listens; this
process sends it `--messages` messages of `--mb` MB; a pinger sends it a small message
every millisecond on another connection, stamped with its send time. The receiver's one
worker carries both, so the pings' latency while the large messages stream in is the
head-of-line stall. Printed: each user process's peak RSS over its baseline (VmHWM, as a
multiple of the message size; the sender's own copy of the body is made before the
baseline), the workers' peak RSS, and the pings' latency.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import struct
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

import amqscale

MB = 1_000_000
_STAMP = struct.Struct("<q")
_spawn = multiprocessing.get_context("spawn")


def high_water(pid: int) -> int:
    """The kernel's peak resident size of `pid` (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def receive(count: int, size: int, pipe: Pipe) -> None:
    with amqscale.Container(workers=1) as container:
        listener = container.listen("amqp://127.0.0.1:0")
        pipe.send(listener.url)
        base = high_water(os.getpid())
        large = 0
        latencies: list[float] = []
        streaming = False
        while large < count:
            delivery = listener.receiver.receive(timeout=300)
            body = delivery.body
            if len(body) == _STAMP.size:
                if streaming:
                    latencies.append(time.monotonic_ns() / 1e9 - _STAMP.unpack(body)[0] / 1e9)
            elif body == b"start":
                streaming = True
            else:
                large += 1
            del body
            delivery.accept()
        pipe.send({"base": base, "peak": high_water(os.getpid()), "latencies": latencies,
                   "workers": [high_water(pid) for pid in container.worker_pids()]})
        pipe.recv()  # the senders' outcomes are in: close


def ping(url: str, pipe: Pipe) -> None:
    with amqscale.Container(workers=1) as container:
        sender = container.connect(url).open_sender("ping")
        pipe.send("ready")
        while not pipe.poll(0.001):
            sender.send(_STAMP.pack(time.monotonic_ns()))
        # No flush: the receiver stops taking pings once the large messages are in.


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--messages", type=int, default=1)
    args = ap.parse_args(argv)
    size = args.mb * MB
    to_receiver, receiver_end = _spawn.Pipe()
    receiver = _spawn.Process(target=receive, args=(args.messages, size, receiver_end))
    receiver.start()
    url = to_receiver.recv()
    to_pinger, pinger_end = _spawn.Pipe()
    pinger = _spawn.Process(target=ping, args=(url, pinger_end))
    pinger.start()
    assert to_pinger.recv() == "ready"
    with amqscale.Container(workers=1) as container:
        sender = container.connect(url).open_sender("large")
        body = bytes(size)  # the user's own copy, made before the baseline
        sender.send(b"start").wait(30)
        base = high_water(os.getpid())
        started = time.monotonic()
        trackers = [sender.send(body) for _ in range(args.messages)]
        for tracker in trackers:
            assert tracker.wait(300).accepted
        seconds = time.monotonic() - started
        peak = high_water(os.getpid())
        workers = [high_water(pid) for pid in container.worker_pids()]
        got: dict[str, Any] = to_receiver.recv()
    to_pinger.send("stop")
    pinger.join(30)
    to_receiver.send("done")
    receiver.join(30)
    print(f"{args.messages} x {args.mb} MB in {seconds:.2f} s "
          f"({args.messages * args.mb / seconds:,.0f} MB/s)")
    print(f"sending process: peak {(peak - base) / size:.2f}x the message over its baseline "
          f"({(peak - base) / 2**20:,.0f} MiB); its worker: {workers[0] / 2**20:,.0f} MiB")
    print(f"receiving process: peak {(got['peak'] - got['base']) / size:.2f}x "
          f"({(got['peak'] - got['base']) / 2**20:,.0f} MiB); its worker: "
          f"{got['workers'][0] / 2**20:,.0f} MiB")
    latencies = got["latencies"]
    if latencies:
        print(f"pings on the receiver's worker while it streamed: {len(latencies)}, latency "
              f"median {statistics.median(latencies) * 1e3:.2f} ms, longest "
              f"{max(latencies) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
