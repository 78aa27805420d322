"""The producer and consumer agents of a bench run.

An agent is one process with its own Container (and so its own worker processes): a
producer sends its share of the run on its schedule, a consumer receives and measures. An
agent talks to its coordinator only through a `Control`: it reports "ready" once its links
are open, waits for the start time, reports one "interval" a second and "done" at the end
(or "error"). The coordinator merges what they report (amqscale.bench.coordinator); the
same agents run as local processes or as Dask tasks (amqscale.bench.cluster).

Recording is kept off the per-message path: samples go into flat arrays and are recorded
into the histograms in batches (at each second's report, or every RECORD_EVERY samples).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import psutil

from ..container import Connection, Container
from ..errors import AMQPError, ContainerClosed
from ..links import Receiver, Sender
from ..message import Message
from . import stamp
from .config import AgentPlan
from .histograms import LatencyHistogram
from .tracking import Seen

START_TIMEOUT = 300.0  # an agent that hears no start in this long gives up
RECORD_EVERY = 4096
CHECK_EVERY = 256  # all-out, one per call: messages between looks at the clock
CHECK_NS = 20_000_000  # a consumer looks for the stop and the second's end this often
COUNT_EVERY = 0.1  # seconds between a consumer's reports of its count so far
FLUSH_TIMEOUT = 60.0
OUTCOMES = {0: "presettled", 0x24: "accepted", 0x25: "rejected", 0x26: "released",
            0x27: "modified"}


class Control(Protocol):
    """An agent's line to its coordinator."""

    def report(self, message: dict[str, Any]) -> None: ...

    def wait_start(self, timeout: float) -> float:
        """The start time (epoch seconds) once the coordinator gives it; TimeoutError."""
        ...

    def stop_requested(self) -> bool: ...


def run_agent(plan: AgentPlan, control: Control) -> None:
    """Run one agent to its end; a failure is reported, not raised."""
    try:
        if plan.role == "producer":
            Producer(plan, control).run()
        else:
            Consumer(plan, control).run()
    except (AMQPError, ContainerClosed, OSError, ValueError, TimeoutError) as exc:
        control.report({"kind": "error", "agent": plan.name,
                        "error": f"{plan.name}: {exc}"})
    except BaseException as exc:
        control.report({"kind": "error", "agent": plan.name,
                        "error": f"{plan.name}: {type(exc).__name__}: {exc}"})
        raise


class CpuMeter:
    """CPU seconds of an agent's own process and each of its workers."""

    def __init__(self, name: str, container: Container) -> None:
        self.processes = {name: psutil.Process()}
        for number, pid in enumerate(container.worker_pids()):
            self.processes[f"{name}/worker-{number}"] = psutil.Process(pid)
        self.start = self.last = self.read()

    def read(self) -> dict[str, float]:
        times = {}
        for name, process in self.processes.items():
            try:
                cpu = process.cpu_times()
                times[name] = cpu.user + cpu.system
            except psutil.Error:  # a worker restarted: its time so far is lost
                times[name] = 0.0
        return times

    def interval(self) -> dict[str, float]:
        """CPU seconds used by each process since the last call."""
        now = self.read()
        used = {name: max(0.0, now[name] - self.last.get(name, 0.0)) for name in now}
        self.last = now
        return used

    def total(self) -> dict[str, float]:
        now = self.read()
        return {name: max(0.0, now[name] - self.start.get(name, 0.0)) for name in now}

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}


class Ticker:
    """Second boundaries from the start time: `due(now)` is true once a second is over."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.second = 0
        self.next = start + 1.0

    def due(self, now: float) -> bool:
        return now >= self.next

    def advance(self) -> int:
        """The second that just ended; moves on to the next."""
        ended = self.second
        self.second += 1
        self.next = self.start + self.second + 1.0
        return ended


def wait_for_start(control: Control) -> float:
    """The start time, once it has come: every agent begins at the same instant."""
    start = control.wait_start(START_TIMEOUT)
    time.sleep(max(0.0, start - time.time()))
    return start


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class Producer:
    def __init__(self, plan: AgentPlan, control: Control) -> None:
        self.plan, self.control, self.config = plan, control, plan.config
        self.sizes = stamp.parse_sizes(self.config.size)
        self.fill = stamp.filler(self.config.body_content, self.sizes.largest)
        self.sent = self.measured = 0
        self.last_sent = 0.0
        self.interval_sent = 0
        self.delays, self.warm_delays = array("q"), array("q")
        self.zero_delays = self.zero_measured = 0  # all-out: delays of 0, counted
        self.interval = LatencyHistogram()
        self.total = LatencyHistogram()

    def run(self) -> None:
        config = self.config
        with Container(workers=config.workers) as container:
            self.cpu = CpuMeter(self.plan.name, container)
            conn = container.connect(self.plan.url, shards=config.connections,
                                     **config.connect_options())
            window = max(1, -(-config.max_in_flight // config.connections))
            senders = [conn.open_sender(address, window=window, presettled=config.presettled)
                       for address in self.plan.addresses]
            self.control.report({"kind": "ready", "agent": self.plan.name,
                                 "pids": self.cpu.pids})
            start = wait_for_start(self.control)
            self.cpu.start = self.cpu.last = self.cpu.read()
            self.ticker = Ticker(start)
            self._send_all(start, senders, conn)
            self._report_interval()
            for sender in senders:
                sender.flush(timeout=FLUSH_TIMEOUT)
            outcomes = self._outcomes(senders)
            self._send_end_markers(senders)
            self.control.report({
                "kind": "done", "agent": self.plan.name, "sent": self.sent,
                "measured": self.measured, "last_sent": self.last_sent, "outcomes": outcomes,
                "histograms": {"send_delay": self.total.encode()},
                "cpu": self.cpu.total()})

    def _message_maker(self) -> Callable[[int, int, int], Message | bytes]:
        """(sequence, intended us, sent us) -> what send() takes."""
        config, plan = self.config, self.plan
        pack, magic, run, me = stamp.STAMP.pack, stamp.MAGIC, config.seed, plan.index
        fill, draw, head = self.fill, self.sizes.drawer(config.seed + plan.index), stamp.SIZE
        if len(self.sizes.choices) == 1:
            tail = fill[: self.sizes.choices[0] - head]

            def body(seq: int, intended: int, sent: int) -> bytes:
                return pack(magic, run, me, seq, intended, sent) + tail
        else:
            def body(seq: int, intended: int, sent: int) -> bytes:
                return pack(magic, run, me, seq, intended, sent) + fill[: draw() - head]

        if not config.uses_messages:
            return body
        properties, durable, ttl = config.properties, config.durable, config.ttl

        def message(seq: int, intended: int, sent: int) -> Message:
            return Message(id=seq, body=body(seq, intended, sent), durable=durable,
                           ttl=None if ttl is None else ttl / 1000,
                           properties={**properties, "producer": me, "seq": seq})
        return message

    def _send_all(self, start: float, senders: list[Sender], conn: Connection) -> None:
        config = self.config
        self.limit = self.plan.count if self.plan.count is not None else math.inf
        self.end = start + config.warmup + config.duration if config.duration else math.inf
        self.warm = start + config.warmup
        if config.rate or config.tx_size:
            self._send_scheduled(start, senders, conn)
        else:
            self._send_all_out(senders)

    def _send_all_out(self, senders: list[Sender]) -> None:
        """As fast as the windows allow; the intended send time is the actual one, so
        the send delay is 0 and both latencies are the same."""
        make, clock_ns, clock = self._message_maker(), time.time_ns, time.time
        batch, limit, ticker = self.config.batch, self.limit, self.ticker
        seq = turn = 0
        while seq < limit:
            now = clock()
            if now >= ticker.next:
                self._report_interval()
            if now >= self.end:
                break
            sender = senders[turn % len(senders)]
            turn += 1
            if batch:
                count = int(min(batch, limit - seq))
                sent = clock_ns() // 1000
                sender.send_many([make(s, sent, sent) for s in range(seq, seq + count)])
            else:
                count = int(min(CHECK_EVERY, limit - seq))
                send = sender.send
                for s in range(seq, seq + count):
                    sent = clock_ns() // 1000
                    send(make(s, sent, sent))
            seq += count
            measured = count if now >= self.warm else 0
            self._count(count, measured, clock())
            self.zero_delays += count
            self.zero_measured += measured

    def _send_scheduled(self, start: float, senders: list[Sender], conn: Connection) -> None:
        """Each message at its intended time; one that is late goes at once (with the
        others that are due, in one send_many when batching) and its lateness is kept.
        Without a rate (transactions all-out), every message is due when it is sent."""
        config, ticker, clock = self.config, self.ticker, time.time
        schedule = config.schedule()
        producers, me, limit = config.producers, self.plan.index, self.limit
        offset = self.end - start
        start_us, warm_us = _us(start), _us(self.warm)
        make, per_call = self._message_maker(), max(1, config.batch)
        seq = turn = 0
        transaction = None
        while seq < limit:
            now = clock()
            if now >= ticker.next:
                self._report_interval()
            elapsed = now - start
            due: list[int] = []
            while len(due) < per_call and seq + len(due) < limit:
                intended = elapsed if schedule is None else schedule.intended(
                    (seq + len(due)) * producers + me)
                if intended > elapsed or intended >= offset:
                    break
                due.append(start_us + _us(intended))
            if not due:
                if schedule is None:  # all-out, and the duration is over
                    break
                wake = schedule.intended(seq * producers + me)
                if wake >= offset:
                    break
                time.sleep(max(0.0, min(wake - elapsed, ticker.next - now, 0.1)))
                continue
            sent_us = _us(clock())
            batch = [make(seq + n, intended, sent_us) for n, intended in enumerate(due)]
            for intended in due:
                (self.delays if intended >= warm_us else self.warm_delays).append(
                    sent_us - intended)
            seq += len(due)
            sender = senders[turn % len(senders)]
            turn += 1
            if config.tx_size:
                transaction = self._send_in_transaction(conn, transaction, sender, batch[0])
            elif config.batch:
                sender.send_many(batch)
            else:
                sender.send(batch[0])
            self._count(len(due), sum(1 for intended in due if intended >= warm_us),
                        sent_us / 1e6)
            if len(self.delays) + len(self.warm_delays) >= RECORD_EVERY:
                self._record()
        if transaction is not None:
            transaction.commit(timeout=FLUSH_TIMEOUT)

    def _send_in_transaction(self, conn: Connection, transaction: Any, sender: Sender,
                             message: Message | bytes) -> Any:
        if transaction is None:
            transaction = conn.transaction()
        transaction.send(sender, message)
        if (self.sent + 1) % self.config.tx_size == 0:
            transaction.commit(timeout=FLUSH_TIMEOUT)
            return None
        return transaction

    def _count(self, sent: int, measured: int, when: float) -> None:
        """`sent` messages went at `when`, `measured` of them after the warm-up."""
        self.sent += sent
        self.interval_sent += sent
        self.last_sent = when
        self.measured += measured

    def _record(self) -> None:
        delays = np.frombuffer(self.delays, dtype=np.int64)
        warm = np.frombuffer(self.warm_delays, dtype=np.int64)
        self.interval.record_many(delays)
        self.interval.record_many(warm)
        self.total.record_many(delays)
        if self.zero_delays:
            self.interval.record_repeated(0, self.zero_delays)
            self.total.record_repeated(0, self.zero_measured)
            self.zero_delays = self.zero_measured = 0
        self.delays, self.warm_delays = array("q"), array("q")

    def _report_interval(self) -> None:
        self._record()
        self.control.report({
            "kind": "interval", "agent": self.plan.name, "second": self.ticker.advance(),
            "sent": self.interval_sent, "histograms": {"send_delay": self.interval.encode()},
            "cpu": self.cpu.interval()})
        self.interval_sent = 0
        self.interval = LatencyHistogram()

    @staticmethod
    def _outcomes(senders: list[Sender]) -> dict[str, int]:
        outcomes: dict[str, int] = {}
        for sender in senders:
            for state, count in sender.counts.items():
                name = OUTCOMES.get(state, f"0x{state:x}")
                outcomes[name] = outcomes.get(name, 0) + count
        return outcomes

    def _send_end_markers(self, senders: list[Sender]) -> None:
        """Tell a receiver on its own how many this producer sent (not counted as sent)."""
        now = _us(time.time())
        marker = stamp.STAMP.pack(stamp.MAGIC, self.config.seed, self.plan.index,
                                  stamp.END, self.sent, now)
        for sender in senders:
            sender.send(marker)
            sender.flush(timeout=FLUSH_TIMEOUT)


class Consumer:
    def __init__(self, plan: AgentPlan, control: Control) -> None:
        self.plan, self.control, self.config = plan, control, plan.config
        self.any_run = plan.any_run  # a receiver on its own takes every run's messages
        self.seen = Seen()
        self.received = self.measured = self.stale = self.bytes = 0
        self.first_measured = self.last_measured = 0.0
        self.interval_received = 0
        self.heads, self.arrivals = bytearray(), array("q")
        self.interval = {"latency": LatencyHistogram(), "service": LatencyHistogram()}
        self.total = {"latency": LatencyHistogram(), "service": LatencyHistogram()}
        self.ends: dict[str, int] = {}
        self.warm_us: int | None = None
        self.next_count, self.counted = 0.0, 0

    def run(self) -> None:
        config = self.config
        with Container(workers=config.workers) as container:
            self.cpu = CpuMeter(self.plan.name, container)
            receivers, url = self._open(container)
            self.control.report({"kind": "ready", "agent": self.plan.name, "url": url,
                                 "pids": self.cpu.pids})
            start = wait_for_start(self.control)
            self.cpu.start = self.cpu.last = self.cpu.read()
            self.ticker = Ticker(start)
            if not self.any_run:
                self.warm_us = _us(start + config.warmup)
            self._receive_until_stopped(receivers)
            self._process()
            self._report_interval()
            self.control.report({
                "kind": "done", "agent": self.plan.name, "received": self.received,
                "measured": self.measured, "first_measured": self.first_measured,
                "last_measured": self.last_measured, "stale": self.stale, "bytes": self.bytes,
                "seen": self.seen.encode(), "ends": self.ends,
                "histograms": {name: h.encode() for name, h in self.total.items()},
                "cpu": self.cpu.total()})

    def _open(self, container: Container) -> tuple[list[Receiver], str]:
        config = self.config
        if self.plan.url is None:
            host = config.listen_host
            host = f"[{host}]" if ":" in host else host
            tls = config.listener_tls()
            scheme = "amqps" if tls else "amqp"
            listener = container.listen(f"{scheme}://{host}:0", credit=config.credit, tls=tls)
            return [listener.receiver], listener.url
        conn = container.connect(self.plan.url, shards=config.connections,
                                 **config.connect_options())
        return [conn.open_receiver(address, credit=config.credit)
                for address in self.plan.addresses], self.plan.url

    def _receive_until_stopped(self, receivers: list[Receiver]) -> None:
        if len(receivers) == 1 and not self.config.batch:
            self._receive_one_by_one(receivers[0])
        else:
            self._receive_batches(receivers)

    def _housekeeping(self, now: float) -> bool:
        """Between messages, every CHECK_NS: the second's report, or the count so far
        (COUNT_EVERY, so the coordinator sees the end of a run soon); False to stop."""
        if self.control.stop_requested():
            return False
        if self.ticker.due(now):
            self._process()
            self._report_interval()
        elif now >= self.next_count and (self.arrivals or self.received > self.counted):
            self._process()
            self.control.report({"kind": "count", "agent": self.plan.name,
                                 "total": self.received})
            self.counted, self.next_count = self.received, now + COUNT_EVERY
        return True

    def _receive_one_by_one(self, receiver: Receiver) -> None:
        receive, clock_ns, size = receiver.receive, time.time_ns, stamp.SIZE
        heads, arrivals = self.heads, self.arrivals
        messages = self.config.uses_messages
        check_at = 0
        while True:
            now = clock_ns()
            if now >= check_at:
                if not self._housekeeping(now / 1e9):
                    return
                check_at = now + CHECK_NS
            try:
                delivery = receive(timeout=0.1)
            except TimeoutError:
                check_at = 0
                continue
            body = delivery.message.body if messages else delivery.body
            delivery.accept()
            if body.__class__ is bytes and len(body) >= size:
                heads += body[:size]
                arrivals.append(clock_ns() // 1000)
                self.bytes += len(body)
            else:
                self.stale += 1  # not a bench message
            if len(arrivals) >= RECORD_EVERY:
                self._process()

    def _receive_batches(self, receivers: list[Receiver]) -> None:
        config, clock = self.config, time.time
        heads, arrivals, size = self.heads, self.arrivals, stamp.SIZE
        wait = 0.1 if len(receivers) == 1 else 0.0
        bodies_of = _messages_bodies if config.uses_messages else _bodies
        limit = config.batch or 1024  # several receivers are polled in turn, so in batches
        while self._housekeeping(clock()):
            got = 0
            for receiver in receivers:
                try:
                    deliveries = receiver.receive_many(limit, timeout=wait)
                except TimeoutError:
                    continue
                bodies = bodies_of(deliveries)
                deliveries.accept()
                now = _us(clock())
                for body in bodies:
                    if body.__class__ is bytes and len(body) >= size:
                        heads += body[:size]
                        arrivals.append(now)
                        self.bytes += len(body)
                    else:
                        self.stale += 1  # not a bench message
                got += len(bodies)
            if not got and len(receivers) > 1:
                time.sleep(0.002)
            if len(arrivals) >= RECORD_EVERY:
                self._process()

    def _process(self) -> None:
        """Record what arrived since the last call: latencies and sequence numbers."""
        if not self.arrivals:
            return
        records = np.frombuffer(bytes(self.heads), dtype=stamp.DTYPE)
        arrivals = np.array(self.arrivals, dtype=np.int64)  # a copy: the array is reused
        self.heads.clear()
        del self.arrivals[:]
        ours = records["magic"] == stamp.MAGIC
        if not self.any_run:
            ours &= records["run"] == self.config.seed
        self.stale += int(np.count_nonzero(~ours))
        ends = ours & (records["seq"] == np.uint64(stamp.END))
        for record in records[ends]:
            self.ends[f"{record['run']}/{record['producer']}"] = int(record["intended"])
        keep = ours & ~ends
        records, arrivals = records[keep], arrivals[keep]
        if not records.size:
            return
        if self.warm_us is None:  # on its own: the warm-up starts at the first message
            self.warm_us = int(records["intended"][0]) + _us(self.config.warmup)
        latency = arrivals - records["intended"]
        service = arrivals - records["sent"]
        self.interval["latency"].record_many(latency)
        self.interval["service"].record_many(service)
        measured = records["intended"] >= self.warm_us
        if measured.any():
            self.total["latency"].record_many(latency[measured])
            self.total["service"].record_many(service[measured])
            times = arrivals[measured]
            if not self.measured:
                self.first_measured = int(times[0]) / 1e6
            self.last_measured = int(times[-1]) / 1e6
            self.measured += int(np.count_nonzero(measured))
        self.received += int(records.size)
        self.interval_received += int(records.size)
        self._track(records)

    def _track(self, records: np.ndarray) -> None:
        keys = records["run"].astype(np.uint64) << np.uint64(32) | records["producer"]
        for key in np.unique(keys):
            ours = records[keys == key]
            name = f"{int(key) >> 32}/{int(key) & 0xFFFFFFFF}"
            self.seen.producer(name).add_many(ours["seq"].astype(np.int64))

    def _report_interval(self) -> None:
        self.control.report({
            "kind": "interval", "agent": self.plan.name, "second": self.ticker.advance(),
            "received": self.interval_received, "total": self.received,
            "histograms": {name: h.encode() for name, h in self.interval.items()},
            "progress": {key: (p.highest, p.unique) for key, p in self.seen.producers.items()},
            "ends": dict(self.ends), "cpu": self.cpu.interval()})
        self.interval_received = 0
        self.interval = {"latency": LatencyHistogram(), "service": LatencyHistogram()}


def _bodies(deliveries: Any) -> list[Any]:
    return list(deliveries.bodies)


def _messages_bodies(deliveries: Any) -> list[Any]:
    return [message.body for message in deliveries.messages]
