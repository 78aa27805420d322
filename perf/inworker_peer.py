"""The in-worker handler receiver of perf/compare.py (role ``inworker-recv`` of perf/peers.py).

    python perf/peers.py inworker-recv --url amqp://BROKER:PORT --address A --count N
                                       [--size B] [--workers W] [--credit 1000]

``conn.open_receiver(address, handler="inworker_peer:Count", handler_args=...,
credit=--credit)`` on ``--workers`` workers with as many shards: the messages stop in the
workers, where `Count.on_message` reads each body's sequence number (losses and duplicates,
as every receiver of perf/peers.py checks them) and the body's length, and lets
MessagingHandler's auto_accept accept it. The user's process only waits for the counts
(``receiver.wait(handled=N)``), so it needs an outgoing connection: a broker's path
(perf/compare.py runs it through the Proton C broker).

How the figures get out of the workers: the handler keeps them, and when its link closes
(the user's ``receiver.close()`` after the wait; ``on_link_closed`` runs in the worker
before the user's process hears of the close) it writes them to a file named by
``handler_args["out"]`` and its worker index: the count, duplicates, bodies of the wrong
length, the first and last message's ``time.monotonic()`` (system-wide on Linux) and the
sequence numbers seen (a zlib'd bitmap, so shares of several workers merge exactly). This
process reads the files after the close, and its report is the same JSON the other
receivers print: the run's end is the last message a handler took, CPU is this process's
and each worker's (psutil) from the link's attach to the wait's return.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import psutil
from peers import HEADER, Config, Report, announce_ready, cpu_seconds

from amqscale.handlers import MessagingHandler

HANDLER = "inworker_peer:Count"
FILES_TIMEOUT = 10.0  # after the close, how long to wait for each worker's file


class Count(MessagingHandler):
    """Inside a worker: count, check the sequence and the length, accept (auto_accept)."""

    def __init__(self, count: int, out: str, size: int) -> None:
        super().__init__()
        self.out = out
        self.size = size
        self.seen = bytearray(count)
        self.received = self.duplicates = self.wrong_size = 0
        self.first = self.last = 0.0
        self.worker = -1

    def on_start(self, event: Any) -> None:
        self.worker = event.container.worker

    def on_message(self, event: Any) -> None:
        body = event.message.body
        _, seq = HEADER.unpack_from(body)
        if 0 <= seq < len(self.seen) and not self.seen[seq]:
            self.seen[seq] = 1
        else:
            self.duplicates += 1
        if len(body) != self.size:
            self.wrong_size += 1
        self.received += 1
        self.last = time.monotonic()
        if self.received == 1:
            self.first = self.last

    def on_link_closed(self, event: Any) -> None:
        """Write what this worker's handler saw (once per link: the last write has all)."""
        path = Path(f"{self.out}.w{self.worker}.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "worker": self.worker, "pid": os.getpid(), "received": self.received,
            "duplicates": self.duplicates, "wrong_size": self.wrong_size,
            "first": self.first, "last": self.last,
            "seen": base64.b64encode(zlib.compress(bytes(self.seen))).decode()}))
        tmp.replace(path)


def merge(shares: list[dict[str, Any]], count: int, report: Report) -> None:
    """The workers' shares as one receiver's report (unique over all of them)."""
    seen = bytearray(count)
    duplicates = 0
    for share in shares:
        theirs = zlib.decompress(base64.b64decode(share["seen"]))
        for i in (i for i, b in enumerate(theirs) if b):
            if seen[i]:
                duplicates += 1  # the same message handled in two workers
            seen[i] = 1
        duplicates += share["duplicates"]
    report.count = sum(share["received"] for share in shares)
    report.unique = sum(seen)
    report.duplicates = duplicates
    firsts = [share["first"] for share in shares if share["received"]]
    report.first = min(firsts) if firsts else 0.0
    report.last = max((share["last"] for share in shares), default=0.0)
    wrong = sum(share["wrong_size"] for share in shares)
    if wrong:
        report.error = f"{wrong} bodies of the wrong length"


def run_receiver(cfg: Config, reconnect: dict[str, Any]) -> Report:
    import amqscale

    if cfg.listen:
        raise ValueError("inworker-recv connects (through a broker): no --listen")
    report = Report(cfg.role)
    me = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="amqscale-inworker-") as tmp, \
            amqscale.Container(workers=cfg.workers) as container:
        out = os.path.join(tmp, "share")
        workers = [psutil.Process(pid) for pid in container.worker_pids()]
        conn = container.connect(cfg.url, shards=cfg.workers, **reconnect)
        receiver = conn.open_receiver(cfg.address, handler=HANDLER, credit=cfg.credit,
                                      handler_args={"count": cfg.count, "out": out,
                                                    "size": cfg.size})
        cpu0, wcpu0 = cpu_seconds(me), [cpu_seconds(w) for w in workers]
        announce_ready()
        report.error = wait_handled(receiver, cfg)
        report.cpu_process = cpu_seconds(me) - cpu0
        report.cpu_workers = [cpu_seconds(w) - c for w, c in zip(workers, wcpu0, strict=True)]
        carrying = set(receiver.counts())  # the workers with a shard of it: a file each
        receiver.close()
        shares = read_shares(Path(tmp), carrying)
        error = report.error
        merge(shares, cfg.count, report)
        report.error = error or report.error
        if not shares and not report.error:
            report.error = "no handler wrote its counts"
        conn.close()
    return report


def wait_handled(receiver: Any, cfg: Config) -> str | None:
    """Until the handlers handled --count in all; an error after --idle s without one."""
    from amqscale import HandlerFailed

    handled = -1
    while True:
        try:
            receiver.wait(handled=cfg.count, timeout=cfg.idle)
            return None
        except HandlerFailed as exc:
            return f"handler failed: {str(exc)[:500]}"
        except TimeoutError:
            now = receiver.handled
            if now == handled:
                return f"idle for {cfg.idle} s after {now} messages"
            handled = now


def read_shares(directory: Path, workers: set[int]) -> list[dict[str, Any]]:
    """Each worker's file (the handler wrote it as its link closed)."""
    deadline = time.monotonic() + FILES_TIMEOUT
    shares: dict[int, dict[str, Any]] = {}
    while True:
        for path in directory.glob("share.w*.json"):
            with contextlib.suppress(ValueError, OSError):
                share = json.loads(path.read_text())
                shares[share["worker"]] = share
        if workers <= set(shares) or time.monotonic() > deadline:
            return list(shares.values())
        time.sleep(0.01)
