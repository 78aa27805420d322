"""`amqscale bench`: a sender and a receiver, peer-to-peer or through a broker.

The receiver runs in its own process with its own Container (it listens, peer-to-peer, or
attaches to the broker's address); the sender runs here. Every message carries its
sequence number (the first 8 bytes of the body, or the message id with `--messages`), so
the receiver counts what was lost and what came twice. CPU time is read with psutil for
every process involved, workers included, and reported per message.
"""

from __future__ import annotations

import multiprocessing
import struct
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

import psutil

from .container import Container
from .errors import ConnectionFailed, LinkDetached
from .message import Message
from .url import parse_url

_SEQ = struct.Struct("<Q")
IDLE_TIMEOUT = 10.0  # the receiver gives up after this long without a message


@dataclass
class BenchConfig:
    url: str | None = None  # None: peer-to-peer
    address: str = "amqscale-bench"
    count: int = 200_000
    size: int = 100
    workers: int = 1
    shards: int = 1
    credit: int = 1000
    window: int = 1000
    presettled: bool = False
    messages: bool = False  # Message objects (id + 3 properties) instead of bare bytes
    batch: int = 0  # 0: send() and receive() one by one; N: send_many/receive_many, N a call


@dataclass
class BenchResult:
    config: dict[str, Any]
    sent: int = 0
    accepted: int = 0
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    msg_per_s: float = 0.0
    # CPU microseconds per message, by process role.
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _payload(seq: int, filler: bytes, messages: bool) -> Message | bytes:
    if messages:
        return Message(id=seq, body=filler,
                       properties={"seq": seq, "source": "amqscale-bench", "flag": True})
    return _SEQ.pack(seq) + filler


def _seq_of(delivery: Any, messages: bool) -> int:
    if messages:
        return int(delivery.message.id)
    return int(_SEQ.unpack_from(delivery.body)[0])


def _seqs_of(deliveries: Any, messages: bool) -> list[int]:
    if messages:
        return [int(message.id) for message in deliveries.messages]
    unpack = _SEQ.unpack_from
    return [unpack(body)[0] for body in deliveries.bodies]


def _receive(config: BenchConfig, ready: Pipe, results: Pipe) -> None:
    """The receiving process: count every message, check order-free uniqueness."""
    seen = bytearray(config.count)
    received = duplicates = 0
    first = last = 0.0
    with Container(workers=config.workers) as container:
        me = [psutil.Process()] + [psutil.Process(pid) for pid in container.worker_pids()]
        try:
            if config.url is None:
                listener = container.listen("amqp://127.0.0.1:0", credit=config.credit)
                receiver = listener.receiver
                ready.send(("ready", listener.url))
            else:
                conn = container.connect(config.url, shards=config.shards)
                receiver = conn.open_receiver(config.address, credit=config.credit)
                ready.send(("ready", config.url))
        except (ConnectionFailed, LinkDetached) as exc:  # the parent says it, and exits
            ready.send(("error", f"the receiver: {exc}"))
            return
        cpu_start = _cpu_seconds(me)
        while received < config.count:
            try:
                if config.batch:
                    deliveries = receiver.receive_many(config.batch, timeout=IDLE_TIMEOUT)
                    seqs = _seqs_of(deliveries, config.messages)
                    deliveries.accept()
                else:
                    delivery = receiver.receive(timeout=IDLE_TIMEOUT)
                    seqs = [_seq_of(delivery, config.messages)]
                    delivery.accept()
            except TimeoutError:
                break
            for seq in seqs:
                if 0 <= seq < config.count and not seen[seq]:
                    seen[seq] = 1
                else:
                    duplicates += 1
            received += len(seqs)
            last = time.time()
            if not first:
                first = last
        receiver._settle_batches()
        cpu = _cpu_seconds(me) - cpu_start
    results.send({"received": received, "duplicates": duplicates, "unique": sum(seen),
                  "first": first, "last": last, "cpu": cpu,
                  "cpu_user": _cpu_seconds(me[:1])})


def run(config: BenchConfig) -> BenchResult:
    """Run one benchmark; returns the counts, the rate and CPU per message."""
    if config.url is not None:
        parse_url(config.url)  # a bad URL fails here, before any process starts
    context = multiprocessing.get_context("spawn")
    ready_recv, ready_send = context.Pipe(duplex=False)
    results_recv, results_send = context.Pipe(duplex=False)
    receiver = context.Process(target=_receive, args=(config, ready_send, results_send),
                               name="amqscale-bench-receiver", daemon=True)
    receiver.start()
    try:
        deadline = time.monotonic() + 60
        while not ready_recv.poll(0.2):
            if not receiver.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the receiving process did not start "
                                   f"(exit code {receiver.exitcode})")
        kind, url = ready_recv.recv()
        if kind == "error":
            raise ConnectionFailed(url)
        result = _send(config, url)
        if not results_recv.poll(IDLE_TIMEOUT + 60):
            raise RuntimeError("the receiving process did not report")
        report = results_recv.recv()
    finally:
        receiver.join(timeout=30)
        if receiver.is_alive():
            receiver.kill()
    result.received = report["received"]
    result.duplicates = report["duplicates"]
    result.lost = config.count - report["unique"]
    count = max(result.received, 1)
    result.cpu_us_per_msg["receiver (all processes)"] = report["cpu"] / count * 1e6
    result.seconds = max(report["last"], result.seconds) - result.seconds
    result.msg_per_s = result.received / result.seconds if result.seconds > 0 else 0.0
    return result


def _send(config: BenchConfig, url: str) -> BenchResult:
    # The URL as str(URL) has it: what a report or its JSON shows, never the password.
    shown = str(parse_url(config.url)) if config.url else None
    result = BenchResult(config=dict(asdict(config), url=shown))
    filler = b"x" * max(0, config.size - (0 if config.messages else _SEQ.size))
    with Container(workers=config.workers) as container:
        user = psutil.Process()
        workers = [psutil.Process(pid) for pid in container.worker_pids()]
        conn = container.connect(url, shards=config.shards)
        sender = conn.open_sender(config.address, window=config.window,
                                  presettled=config.presettled)
        cpu_user, cpu_workers = _cpu_seconds([user]), _cpu_seconds(workers)
        start = time.time()
        if config.batch:
            for first in range(0, config.count, config.batch):
                sender.send_many([_payload(seq, filler, config.messages) for seq in
                                  range(first, min(first + config.batch, config.count))])
        else:
            for seq in range(config.count):
                sender.send(_payload(seq, filler, config.messages))
        sender.flush(timeout=120)
        result.sent = config.count
        result.accepted = sender.counts.get(0x24, 0)
        per_msg = 1e6 / config.count
        result.cpu_us_per_msg["sender user process"] = (_cpu_seconds([user]) - cpu_user) * per_msg
        result.cpu_us_per_msg["sender workers"] = (_cpu_seconds(workers) - cpu_workers) * per_msg
        result.seconds = start  # replaced by the elapsed time once the receiver reports
    return result


def format_result(result: BenchResult) -> str:
    cfg = result.config
    where = cfg["url"] or "peer-to-peer"
    kind = "Message objects" if cfg["messages"] else "bytes"
    mode = "at-most-once" if cfg["presettled"] else "at-least-once"
    calls = f"batches of {cfg['batch']}" if cfg["batch"] else "one per call"
    lines = [
        f"amqscale bench: {where}, {cfg['count']} x {cfg['size']} B {kind}, {mode}, "
        f"{calls}, {cfg['workers']} worker(s) and {cfg['shards']} shard(s) a side",
        f"  {result.msg_per_s:,.0f} msg/s over {result.seconds:.2f} s",
        f"  sent {result.sent}  accepted {result.accepted}  received {result.received}  "
        f"lost {result.lost}  duplicates {result.duplicates}",
        "  CPU per message: " + ", ".join(
            f"{role} {us:.2f} us" for role, us in result.cpu_us_per_msg.items()),
    ]
    return "\n".join(lines)
