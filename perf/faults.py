"""Fault runs: the long versions of tests/test_reliability.py, with a JSON and a table.

    .venv/bin/python perf/faults.py                      # everything, default counts
    .venv/bin/python perf/faults.py --scale 0.01         # a quick run: tiny counts
    .venv/bin/python perf/faults.py --only proxy-faults broker-sigstop --json out.json

Each scenario is bounded in messages and in time and stops by itself; `--scale X` multiplies
its counts (messages, fault repetitions, cycles). Bodies are 100 bytes: the sequence number
in decimal ASCII, padded with spaces, which `amqscale.testing.faults.Tally` counts. Every
sender is at-least-once. The JSON goes to perf/results/faults-<YYYYmmdd-HHMMSS>.json
(`--json PATH` elsewhere); the table is always printed; the exit status is 1 if any
scenario failed.

Table columns, one row per fault kind:

| column | meaning |
|---|---|
| fault | the scenario (below) |
| messages | distinct messages sent (and expected at the far end) |
| lost | of those, how many never arrived |
| duplicated | arrivals beyond the first of a message |
| resent | `Sender.resent`: messages sent again after a loss, the duplicates' upper bound |
| reconnects | `Connection.reconnects` of the sending connection (shards reopened) |
| restarts | `Container.worker_restarts`, every Container of the scenario |
| recovery p50 / p99 (s) | from the fault's injection until it was over (`recovery.measure`) |
| pass | 0 lost, duplicated <= resent, every fault recovered, and the scenario's own checks |
| notes | the scenario's own figures (detection time, leftovers, fds and RSS, buffering) |

Scenarios (`--only KIND ...`):

- `worker-kill-p2p`: 1,000,000 messages peer-to-peer, a client Container (2 workers, a
  connection of 2 shards) to a listener in a second Container (2 workers) whose receiver a
  thread counts (`count_into`); a random worker of either side is SIGKILLed every 2 s while
  they go. Recovery: until the restart is seen (`worker_restarts`), the connection is open,
  and the first message sent after that is settled.
- `worker-kill-rabbitmq`: the same through RabbitMQ (`/queue/NAME`), killing client workers
  every 2 s while everything is sent; then a receiver drains the queue. 1,000,000 messages
  too: RabbitMQ takes them at 15-18k msg/s and gives them back at about 10k msg/s here, so
  sending and draining take about 3 minutes (300,000: 50 s). Same recovery measure.
- `rabbitmq-restart`: 100,000 durable messages to a queue, `rabbitmqctl stop_app` and
  `start_app` twice mid-stream, then a drain. Recovery: from the start of `stop_app` until
  the first message handed to the sender after `stop_app` returned is accepted.
- `proxy-faults`: through a FaultProxy to a listener, a connection of 2 shards with
  idle_timeout=1: drop, reset, stall (2 s: twice the idle timeout) and cut (mid-frame, a
  random number of bytes into a random direction), 5 of each, shuffled, at random moments;
  then 10 s of `random_faults`. Recovery (the explicit faults): until every connection hit
  was opened again (`reconnects`) and the connection is open.
- `broker-sigstop`: a Proton C broker, idle_timeout=1 on the client; SIGSTOP for 3 s, then
  SIGCONT, 5 times, while messages go; then a drain. Detection (SIGSTOP to
  `state == "reconnecting"`) p50 and p99 must be within 2 x idle_timeout. Recovery: SIGSTOP
  until the connection is open again.
- `parent-kill`: 100 times, a child Python process with a Container (2 workers) that
  listens and sends to itself is SIGKILLed mid-stream; its workers must exit and its
  /dev/shm segments (`amqscale-<pid>-...`) go. Processes and segments left must be 0.
- `connect-cycles`: 10,000 cycles of connect (2 shards), open_sender, send, close against a
  listener; fds and RSS of this process and every worker sampled every 1,000. Pass: fds
  within +-2 and RSS growth under 16 MiB after the first 1,000.
- `slow-consumer`: a RabbitMQ queue filled with 1,000,000 messages, then 5,000 consumed
  slowly (1 ms each) with credit=200: the receiver's buffered count must stay <= credit
  and the RSS of this process and its worker flat (under 16 MiB growth). The queue is
  deleted afterwards.

How it measures: only the main thread calls the library. The injectors run on threads of
their own and touch only processes, the proxy and rabbitmqctl; the main thread sends in
chunks of 100 (`send_many`, waiting at most 20 ms at a time for room) and between them
looks at the open faults every 5 ms: the connection's `state` and `reconnects`, the
Containers' `worker_restarts`, a probe message's tracker. Where it has nothing to send it
waits in `Driver.pump` rather than `time.sleep`, so that the connection's events are
applied as they would be for a program that waits on it. A fault that needs a probe after
the last message went gets one more message, numbered from the count on (`probe_messages`
in the JSON); a fault not over within 60 s counts as not recovered. `--seed` fixes the
random choices (which worker, when, which fault), not the timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

import amqscale  # noqa: E402
from amqscale.testing import FaultProxy, ProtonCBroker, RabbitMQ  # noqa: E402
from amqscale.testing.faults import Tally, count_into, wait_until  # noqa: E402
from amqscale.testing.proxy import Direction  # noqa: E402

SCHEMA = "amqscale-perf-faults/1"
MiB = 1 << 20
BODY_BYTES = 100
CHUNK = 100  # messages per send_many: small, so that a fault lands between two of them
WINDOW = 1000
POLL = 0.005  # how often the main thread looks at the faults still open
SEND_SLICE = 0.02  # the longest a send waits for room before the faults are looked at
RECOVERY_TIMEOUT = 60.0  # a fault not over by then counts as not recovered
FLUSH_TIMEOUT = 300.0
DRAIN_TIMEOUT = 60.0  # the longest wait for one more message while some are missing
LATE_QUIET = 1.0  # once all arrived: how long nothing more may come (late duplicates)
SCENARIO_LIMIT = 1200.0  # seconds a scenario's send loop may run at most
# Reconnect sooner than the 10 s default cap: faults come every few seconds here.
BACKOFF = amqscale.Backoff(max_delay=1.0)


def body(seq: int) -> bytes:
    return b"%-100d" % seq  # Tally reads int(body): surrounding spaces are allowed


def bodies(lo: int, hi: int) -> list[bytes]:
    return [b"%-100d" % i for i in range(lo, hi)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---- results ----------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault and what the watcher saw of it (monotonic seconds)."""

    kind: str
    at: float
    before: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)
    detected: float | None = None
    armed: float | None = None  # from when a probe message may be taken for it
    probe: amqscale.Tracker | None = None
    recovered: float | None = None
    injecting: bool = True  # its action is still running: not over yet, whatever the rule

    def to_json(self, origin: float) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.at, 4)

        return {"kind": self.kind, "at_s": round(self.at - origin, 3),
                "detection_s": since(self.detected), "recovery_s": since(self.recovered),
                **self.info}


@dataclass
class Result:
    kind: str
    messages: int | None = None
    lost: int | None = None
    duplicates: int | None = None
    resent: int | None = None
    reconnects: int | None = None
    restarts: int | None = None
    measure: str = ""  # what the recovery times measure
    faults: list[Fault] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the checks that failed
    details: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    seconds: float = 0.0
    error: str | None = None
    origin: float = field(default_factory=time.monotonic)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failed

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failed.append(what)

    def recovery(self) -> list[float]:
        return [f.recovered - f.at for f in self.faults if f.recovered is not None]

    def count_messages(self, tally: Tally, count: int, sender: amqscale.Sender) -> None:
        """lost, duplicates and resent from a tally of `count` messages, and their checks."""
        self.lost = len(tally.missing(count))
        self.duplicates = tally.duplicates
        self.resent = sender.resent
        self.check(self.lost == 0, f"{self.lost} lost ({tally.summary(count)})")
        self.check(self.duplicates <= self.resent,
                   f"{self.duplicates} duplicates > {self.resent} resent")

    def check_recovered(self) -> None:
        stuck = [f.kind for f in self.faults if f.recovered is None]
        self.check(not stuck, f"{len(stuck)} fault(s) not recovered in "
                              f"{RECOVERY_TIMEOUT:.0f} s: {stuck[:5]}")

    def to_json(self) -> dict[str, Any]:
        times = self.recovery()
        detections = [f.detected - f.at for f in self.faults if f.detected is not None]
        r = _round
        return {
            "kind": self.kind, "passed": self.passed, "failed_checks": self.failed,
            "error": self.error, "seconds": round(self.seconds, 1),
            "messages": self.messages, "lost": self.lost, "duplicates": self.duplicates,
            "resent": self.resent, "reconnects": self.reconnects, "restarts": self.restarts,
            "recovery": {"measure": self.measure, "faults": len(self.faults),
                         "recovered": len(times), "p50_s": r(percentile(times, 50)),
                         "p99_s": r(percentile(times, 99)), "max_s": r(max(times, default=None)),
                         "detection_p50_s": r(percentile(detections, 50)),
                         "detection_p99_s": r(percentile(detections, 99))},
            "faults": [f.to_json(self.origin) for f in self.faults],
            "details": self.details, "notes": self.notes,
        }


# ---- watching faults --------------------------------------------------------------------

Rule = Callable[[Fault], bool]


class Watch:
    """The faults of a scenario: injected by other threads, stamped by the main thread.

    Only the main thread calls the library (which of its calls another thread may make
    is not documented): it calls `poll` between sends and while it waits (`pause`, `send`), which
    stamps when each open fault was detected and when it was over, by the scenario's
    rules (functions of the fault that read the connection's public state), and keeps
    `snapshot` and `state` for the injectors. A fault whose rule never holds is given up
    after RECOVERY_TIMEOUT and stays unrecovered."""

    def __init__(self, container: amqscale.Container, conn: amqscale.Connection,
                 counters: Callable[[], dict[str, int]], recovered: Rule,
                 detected: Rule | None = None) -> None:
        self.container = container
        self.conn = conn
        self.counters = counters
        self.recovered = recovered
        self.detected = detected
        self.faults: list[Fault] = []
        self._open: list[Fault] = []
        self._lock = threading.Lock()
        self._polled = 0.0
        self.snapshot = counters()  # the counters as last polled
        self.state = conn.state  # the connection's state as last polled
        self.wants_probe = False  # a fault is armed and waits for the sender's next message

    # -- from the injectors' threads ---------------------------------------------------------

    def inject(self, kind: str, action: Callable[[], Any], **info: Any) -> Fault:
        """Note the counters and the time, then do `action` (a dict it returns goes to
        `info`); detection is watched from the start, recovery once the action returned.
        An action that raises leaves no fault behind."""
        fault = Fault(kind, time.monotonic(), dict(self.snapshot), info)
        with self._lock:
            self.faults.append(fault)
            self._open.append(fault)
        try:
            outcome = action()
        except BaseException:  # it did not happen: forget it
            with self._lock:
                self.faults.remove(fault)
                self._open.remove(fault)
            raise
        if isinstance(outcome, dict):
            fault.info.update(outcome)
        elif outcome is not None:
            fault.info["hit"] = outcome
        fault.injecting = False
        return fault

    def arm(self, fault: Fault) -> None:
        """From now on the next message sent is `fault`'s probe."""
        fault.armed = time.monotonic()
        self.wants_probe = True

    def wait(self, fault: Fault, halt: threading.Event | None = None) -> bool:
        """Until `fault` is over (True), RECOVERY_TIMEOUT passes or `halt` is set."""
        return wait_until(lambda: fault.recovered is not None
                          or (halt is not None and halt.is_set()), RECOVERY_TIMEOUT, POLL)

    def wait_open(self, timeout: float = RECOVERY_TIMEOUT) -> bool:
        return wait_until(lambda: self.state == "open", timeout, POLL)

    @property
    def open(self) -> list[Fault]:
        with self._lock:
            return list(self._open)

    # -- on the main thread ------------------------------------------------------------------

    def poll(self) -> None:
        """Stamp the open faults' detection and end (at most every POLL s)."""
        now = time.monotonic()
        if now - self._polled < POLL:
            return
        self._polled = now
        self.state = self.conn.state
        self.snapshot = self.counters()
        for fault in self.open:
            if fault.detected is None and self.detected and self.detected(fault):
                fault.detected = now
            if fault.injecting:
                continue
            if self.recovered(fault) or now - fault.at > RECOVERY_TIMEOUT:
                if now - fault.at <= RECOVERY_TIMEOUT:
                    fault.recovered = now
                with self._lock:
                    self._open.remove(fault)

    def offer(self, trackers: Sequence[amqscale.Tracker]) -> None:
        """The latest messages handed over: the probe of every armed fault without one."""
        if not len(trackers):
            return
        with self._lock:
            waiting = [f for f in self._open if f.armed is not None and f.probe is None]
        for fault in waiting:
            fault.probe = trackers[0]
        self.wants_probe = False

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, the container's events applied and the faults polled meanwhile
        (time.sleep would leave a lost connection unseen, see the module's caveat)."""
        driver = self.container._driver
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            driver.pump(min(left, POLL))
            self.poll()

    def send(self, sender: amqscale.Sender, messages: list[Any]) -> None:
        """send_many, polling every SEND_SLICE s while the windows are full."""
        started = time.monotonic()
        while messages:
            try:
                trackers = sender.send_many(messages, timeout=SEND_SLICE)
            except TimeoutError as exc:
                trackers = exc.trackers  # type: ignore[attr-defined]  # those handed over
                if time.monotonic() - started > FLUSH_TIMEOUT:
                    raise
            if self.wants_probe:
                self.offer(trackers)
            messages = messages[len(trackers):]
            self.poll()


def probe_rule(conn: amqscale.Connection, watch: Callable[[], Watch],
               ready: Rule = lambda f: False) -> Rule:
    """Over when the probe (the first message sent once the fault is armed: by `ready`
    or by the injector) is settled and the connection is open."""
    def recovered(fault: Fault) -> bool:
        if fault.armed is None:
            if ready(fault):
                watch().arm(fault)
            return False
        probe = fault.probe
        return probe is not None and probe.settled and conn.state == "open"
    return recovered


def reopen_rule(conn: amqscale.Connection) -> Rule:
    """Over when every connection the fault hit was opened again and all are open."""
    def recovered(fault: Fault) -> bool:
        expect = max(1, int(fault.info.get("expect", 1)))
        return (conn.reconnects >= fault.before["reconnects"] + expect
                and conn.state == "open")
    return recovered


class Injector(threading.Thread):
    """Runs a fault schedule, `steps(halt)`, on its own thread; the steps return early once
    `halt` is set (`stop()`), undoing what they did (a resumed proxy, a started broker)."""

    def __init__(self, steps: Callable[[threading.Event], None]) -> None:
        super().__init__(name="faults-inject", daemon=True)
        self.steps = steps
        self.halt = threading.Event()
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        try:
            self.steps(self.halt)
        except Exception:
            self.error = traceback.format_exc()

    def stop(self) -> None:
        self.halt.set()
        self.join(RECOVERY_TIMEOUT + 120)  # a step may wait for one recovery, or rabbitmqctl


def every(interval: float, action: Callable[[], None]) -> Callable[[threading.Event], None]:
    """A schedule: `action` every `interval` s until halted."""
    def steps(halt: threading.Event) -> None:
        while not halt.wait(interval):
            action()
    return steps


# ---- sending and receiving --------------------------------------------------------------


@dataclass
class Progress:
    sent: int = 0  # distinct messages handed over
    extra: int = 0  # probe messages beyond `count`, numbered from `count` on


def send_numbered(sender: amqscale.Sender, count: int, progress: Progress, watch: Watch,
                  *, rate: float | None = None, durable: bool = False) -> None:
    """Send 0..count-1 in chunks, at most `rate` msg/s if given; the first message of a
    chunk is the probe of the faults waiting for one."""
    started = time.monotonic()
    while progress.sent < count:
        if time.monotonic() - started > SCENARIO_LIMIT:
            raise TimeoutError(f"sent {progress.sent} of {count} in {SCENARIO_LIMIT:.0f} s")
        hi = min(count, progress.sent + CHUNK)
        chunk: list[Any] = bodies(progress.sent, hi)
        if durable:
            chunk = [amqscale.Message(body=b, durable=True) for b in chunk]
        watch.send(sender, chunk)
        progress.sent = hi
        if rate:
            watch.pause(started + hi / rate - time.monotonic())


def finish_faults(sender: amqscale.Sender, count: int, progress: Progress, watch: Watch,
                  busy: Callable[[], bool]) -> None:
    """Keep the connection served until the injector is done (`busy`) and no fault is
    open, sending a probe message (numbered from `count` up) for each armed fault."""
    end = time.monotonic() + SCENARIO_LIMIT
    while (busy() or watch.open) and time.monotonic() < end:
        if watch.wants_probe:
            seq = count + progress.extra
            progress.extra += 1
            watch.send(sender, [body(seq)])
        watch.pause(0.02)


def send_under_faults(result: Result, sender: amqscale.Sender, count: int, watch: Watch,
                      injector: Injector, *,
                      rate: float | None = None, durable: bool = False,
                      halt_when_sent: bool = False,
                      progress: Progress | None = None) -> Progress:
    """Send 0..count-1 while `injector` injects faults (halted once all is sent, with
    `halt_when_sent`, else run to its end), serve the connection until every fault is
    over, and flush. A sender that gives up is a failed check, not an error: what it
    had sent is still counted. `progress`: where the injector sees how far it got."""
    progress = progress or Progress()
    try:
        send_numbered(sender, count, progress, watch, rate=rate, durable=durable)
        if halt_when_sent:
            injector.halt.set()
        finish_faults(sender, count, progress, watch, injector.is_alive)
        sender.flush(timeout=FLUSH_TIMEOUT)
    except (amqscale.AMQPError, TimeoutError) as exc:
        result.check(False, f"the sender gave up after {progress.sent} messages: "
                            f"{type(exc).__name__}: {exc}")
        result.details["unsettled_when_it_gave_up"] = len(sender.unsettled)
    finally:
        injector.stop()
        result.faults = watch.faults
        result.messages = progress.sent
        result.details.update(planned_messages=count, probe_messages=progress.extra)
    result.check(injector.error is None, f"the fault injector failed: {injector.error}")
    return progress


def drain(receiver: amqscale.Receiver, tally: Tally, expect: int) -> float:
    """Take and accept everything until `expect` distinct arrived and nothing more came
    for LATE_QUIET s, or nothing came for DRAIN_TIMEOUT s; returns the seconds taken."""
    started = time.monotonic()
    while True:
        wait = LATE_QUIET if tally.unique >= expect else DRAIN_TIMEOUT
        try:
            deliveries = receiver.receive_many(timeout=wait)
        except TimeoutError:
            return time.monotonic() - started
        tally.add(deliveries.bodies)
        deliveries.accept()


@contextlib.contextmanager
def consuming(receiver: amqscale.Receiver) -> Iterator[Tally]:
    """A thread counting what `receiver` gets (count_into) for the duration."""
    tally = Tally()
    thread = threading.Thread(target=count_into, args=(receiver, tally), daemon=True,
                              name="faults-consume")
    thread.start()
    try:
        yield tally
    finally:
        tally.stop = True
        thread.join(10)


def await_tally(tally: Tally, expect: int) -> None:
    """Until `expect` distinct arrived (bounded), then a moment for late duplicates."""
    wait_until(lambda: tally.unique >= expect, DRAIN_TIMEOUT)
    time.sleep(LATE_QUIET)


# ---- the scenarios ----------------------------------------------------------------------


class Context:
    """The run's settings, its random source and the brokers shared by scenarios."""

    def __init__(self, scale: float, seed: int, stack: contextlib.ExitStack) -> None:
        self.scale = scale
        self.rng = random.Random(seed)
        self._stack = stack
        self._rabbitmq: RabbitMQ | None = None

    def n(self, default: int, minimum: int = 1) -> int:
        return max(minimum, round(default * self.scale))

    @property
    def rabbitmq(self) -> RabbitMQ:
        if self._rabbitmq is None:  # started once, for every scenario that needs one
            self._rabbitmq = self._stack.enter_context(RabbitMQ())
        return self._rabbitmq

    def queue(self, kind: str) -> str:
        return f"faults-{kind}-{time.time_ns()}"


KILL_EVERY = 2.0
MIN_KILLS = 2
KILL_MEASURE = ("SIGKILL until the restart was seen (worker_restarts), the connection is "
                "open and the first message sent after the restart is settled")


def _send_under_kills(result: Result, conn: amqscale.Connection, sender: amqscale.Sender,
                      count: int, sides: dict[str, amqscale.Container],
                      client: amqscale.Container, rng: random.Random) -> Progress:
    """Send `count` while a random worker of `sides` is SIGKILLed every KILL_EVERY s."""
    def restarts() -> int:
        return sum(c.worker_restarts for c in sides.values())

    watch = Watch(client, conn, lambda: {"restarts": restarts(), "reconnects": conn.reconnects},
                  probe_rule(conn, lambda: watch,
                             lambda f: restarts() > f.before["restarts"]))
    targets = [(side, i) for side, c in sides.items() for i in range(c.workers)]

    def kill() -> None:
        side, index = rng.choice(targets)
        pid = sides[side].worker_pids()[index]
        with contextlib.suppress(ProcessLookupError):  # died meanwhile: the next one
            watch.inject(f"kill {side} worker", lambda: os.kill(pid, signal.SIGKILL),
                         worker=index, pid=pid)

    # At most at a pace that leaves room for MIN_KILLS, however small the count.
    return send_under_faults(result, sender, count, watch, Injector(every(KILL_EVERY, kill)),
                             rate=count / (KILL_EVERY * MIN_KILLS + 1), halt_when_sent=True)


def _count_restarts(result: Result, sides: dict[str, amqscale.Container]) -> None:
    """Restarts per side against kills per side: a worker replaced that was not killed
    died of something else (noted, and in the JSON, for whoever reads it)."""
    killed = [f.kind.split()[1] for f in result.faults]
    result.restarts = 0
    notes = []
    for side, container in sides.items():
        restarts, kills = container.worker_restarts, killed.count(side)
        result.restarts += restarts
        result.details[f"{side}_kills"] = kills
        result.details[f"{side}_restarts"] = restarts
        if restarts > kills:
            notes.append(f"{restarts - kills} {side} restart(s) without a kill")
    result.details["restarts_without_a_kill"] = notes
    result.notes = (f"{killed.count('client')} client + {killed.count('server')} server "
                    "workers killed" + "".join(f" (**{n}**)" for n in notes))


def worker_kill_p2p(ctx: Context, result: Result) -> None:
    count = ctx.n(1_000_000, 1000)
    result.measure = KILL_MEASURE
    with amqscale.Container(workers=2) as server, amqscale.Container(workers=2) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        with consuming(listener.receiver) as tally:
            conn = client.connect(f"amqp://127.0.0.1:{listener.port}", shards=2,
                                  reconnect=BACKOFF)
            sender = conn.open_sender("faults", window=WINDOW)
            started = time.monotonic()
            progress = _send_under_kills(result, conn, sender, count,
                                         {"client": client, "server": server}, client,
                                         ctx.rng)
            seconds = time.monotonic() - started
            await_tally(tally, progress.sent + progress.extra)
        result.count_messages(tally, progress.sent, sender)
        result.reconnects = conn.reconnects
        _count_restarts(result, {"client": client, "server": server})
    result.check_recovered()
    result.details["msg_per_s"] = round(progress.sent / seconds)
    result.notes += f"; {progress.sent / seconds:,.0f} msg/s"


def worker_kill_rabbitmq(ctx: Context, result: Result) -> None:
    count = ctx.n(1_000_000, 1000)
    result.measure = KILL_MEASURE
    rabbit = ctx.rabbitmq
    name = ctx.queue("kill")
    address = f"/queue/{name}"
    try:
        with amqscale.Container(workers=2) as client:
            conn = client.connect(rabbit.url, shards=2, reconnect=BACKOFF)
            sender = conn.open_sender(address, window=WINDOW)
            started = time.monotonic()
            progress = _send_under_kills(result, conn, sender, count, {"client": client},
                                         client, ctx.rng)
            send_s = time.monotonic() - started
            tally = Tally()
            drain_s = drain(client.connect(rabbit.url).open_receiver(address, credit=500),
                            tally, progress.sent + progress.extra)
            result.count_messages(tally, progress.sent, sender)
            result.reconnects = conn.reconnects
            _count_restarts(result, {"client": client})
    finally:
        with contextlib.suppress(Exception):
            rabbit.delete_queue(name)
    result.check_recovered()
    result.details.update(send_msg_per_s=round(progress.sent / send_s),
                          send_s=round(send_s, 1), drain_s=round(drain_s, 1),
                          default_count="1,000,000: sent at 15-18k msg/s and drained at "
                                        "about 10k msg/s here, about 3 minutes")
    result.notes += (f"; send {send_s:.0f} s ({progress.sent / send_s:,.0f} msg/s), drain "
                     f"{drain_s:.0f} s")


RESTART_SPAN = 20.0


def _restart_twice(rabbit: RabbitMQ, watch: Watch, progress: Progress,
                   count: int) -> Callable[[threading.Event], None]:
    """stop_app and start_app at a third and two thirds of `count`."""
    def steps(halt: threading.Event) -> None:
        for third in (1, 2):
            while progress.sent < count * third // 3:
                if halt.wait(0.01):
                    return
            stopped: list[float] = []

            def stop(stopped: list[float] = stopped) -> None:
                rabbit.rabbitmqctl("stop_app")
                stopped.append(time.monotonic())

            try:
                fault = watch.inject("stop_app/start_app", stop, at_message=progress.sent)
                watch.arm(fault)  # nothing sent from now on can be accepted before it is up
            finally:
                rabbit.rabbitmqctl("start_app")  # whatever happened: the next scenario needs it
            if stopped:
                fault.info.update(stop_app_s=round(stopped[0] - fault.at, 2),
                                  start_app_s=round(time.monotonic() - stopped[0], 2))
            watch.wait(fault, halt)
    return steps


def rabbitmq_restart(ctx: Context, result: Result) -> None:
    count = ctx.n(100_000, 600)
    result.measure = ("start of rabbitmqctl stop_app until the first message handed to "
                      "the sender after stop_app returned is accepted")
    rabbit = ctx.rabbitmq
    name = ctx.queue("restart")
    # A durable queue, declared first and addressed as existing: an attach to /queue/NAME
    # declares a transient one (the target is not durable), which stop_app empties.
    rabbit.declare_queue(name, durable=True)
    address = f"/amq/queue/{name}"
    result.details["queue"] = f"{address} (declared durable)"
    try:
        with amqscale.Container(workers=1) as client:
            conn = client.connect(rabbit.url, reconnect=amqscale.Backoff(max_delay=1,
                                                                         deadline=120))
            sender = conn.open_sender(address, window=WINDOW)
            watch = Watch(client, conn, lambda: {"reconnects": conn.reconnects},
                          probe_rule(conn, lambda: watch))
            progress = Progress()
            injector = Injector(_restart_twice(rabbit, watch, progress, count))
            # Paced over RESTART_SPAN s at least, so that both restarts come mid-stream.
            send_under_faults(result, sender, count, watch, injector, durable=True,
                              rate=count / RESTART_SPAN, progress=progress)
            tally = Tally()
            drain_s = drain(client.connect(rabbit.url).open_receiver(address, credit=500),
                            tally, progress.sent + progress.extra)
            result.count_messages(tally, progress.sent, sender)
            result.reconnects, result.restarts = conn.reconnects, client.worker_restarts
    finally:
        with contextlib.suppress(Exception):
            rabbit.delete_queue(name)
    result.check(len(result.faults) == 2, f"{len(result.faults)} of 2 restarts done")
    result.check_recovered()
    result.details["drain_s"] = round(drain_s, 1)
    result.notes = "durable; " + ", ".join(
        f"stop_app {f.info.get('stop_app_s')} s + start_app {f.info.get('start_app_s')} s"
        for f in result.faults)


PROXY_KINDS = ("drop", "reset", "stall", "cut")
STALL_S = 2.0  # twice the idle timeout


def _proxy_fault(kind: str, proxy: FaultProxy, rng: random.Random) -> dict[str, Any]:
    """Inject one explicit fault; what to record of it, with `expect`: the reopenings
    that end it (one per connection hit)."""
    if kind == "drop":
        hit = proxy.drop()
        return {"hit": hit, "expect": hit}
    if kind == "reset":
        hit = proxy.reset()
        return {"hit": hit, "expect": hit}
    if kind == "stall":
        hit = proxy.stall()
        try:
            time.sleep(STALL_S)
        finally:
            proxy.resume()
        return {"hit": hit, "expect": hit, "stall_s": STALL_S}
    direction: Direction = rng.choice(["upstream", "downstream", "both"])
    # Downstream carries little (flow, dispositions, heartbeats): a few bytes in, or the
    # cut would wait for minutes; upstream's transfers use up 4 KiB in milliseconds.
    nbytes = rng.randint(1, 40 if direction == "downstream" else 4096)
    hit = proxy.cut_after(nbytes, direction)
    return {"hit": hit, "expect": hit, "bytes": nbytes, "direction": direction}


def _proxy_plan(proxy: FaultProxy, watch: Watch,
                plan: list[tuple[str, float]], chaos_s: float,
                rng: random.Random) -> Callable[[threading.Event], None]:
    """Each (kind, gap): wait `gap` s, inject, wait until it is over; then `chaos_s` s of
    random faults."""
    def steps(halt: threading.Event) -> None:
        for kind, gap in plan:
            if halt.wait(gap):
                return
            watch.wait_open()
            watch.wait(watch.inject(kind, partial(_proxy_fault, kind, proxy, rng)), halt)
        proxy.random_faults(seed=rng.randrange(1 << 30), rate_per_s=2.0,
                            stall_time=(0.05, 2.0))
        try:
            halt.wait(chaos_s)
        finally:
            proxy.stop_random()
        watch.wait_open()
    return steps


def proxy_faults(ctx: Context, result: Result) -> None:
    repeat, chaos_s = ctx.n(5, 2), max(2.0, 10.0 * ctx.scale)
    rng = ctx.rng
    kinds = [k for k in PROXY_KINDS for _ in range(repeat)]
    rng.shuffle(kinds)
    plan = [(kind, rng.uniform(0.3, 1.5)) for kind in kinds]
    planned_s = sum(g for _, g in plan) + repeat * STALL_S + len(plan) * 0.5 + chaos_s
    count = ctx.n(300_000, 2000)
    result.measure = ("injection until every connection hit was opened again "
                      "(reconnects) and the connection is open; explicit faults only")
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=2) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        assert listener.port is not None
        with consuming(listener.receiver) as tally, \
                FaultProxy(upstream=("127.0.0.1", listener.port)) as proxy:
            conn = client.connect(proxy.url, shards=2, idle_timeout=1, reconnect=BACKOFF)
            sender = conn.open_sender("faults", window=WINDOW)
            watch = Watch(client, conn, lambda: {"reconnects": conn.reconnects},
                          reopen_rule(conn), lambda f: conn.state == "reconnecting")
            injector = Injector(_proxy_plan(proxy, watch, plan, chaos_s, rng))
            progress = send_under_faults(result, sender, count, watch, injector,
                                         rate=count / planned_s)
            await_tally(tally, progress.sent + progress.extra)
            stats = proxy.stats
            result.details["state_at_end"] = conn.state
        result.count_messages(tally, progress.sent, sender)
        result.reconnects, result.restarts = conn.reconnects, client.worker_restarts
    result.check_recovered()
    by_kind = {k: [f.recovered - f.at for f in result.faults
                   if f.kind == k and f.recovered is not None] for k in PROXY_KINDS}
    result.details.update(
        proxy_stats=dict(stats), random_faults_s=chaos_s, idle_timeout=1,
        by_fault={k: {"count": sum(f.kind == k for f in result.faults),
                      "p50_s": _round(percentile(v, 50)), "p99_s": _round(percentile(v, 99))}
                  for k, v in by_kind.items()})
    result.notes = "p50 " + ", ".join(f"{k} {_fmt(percentile(v, 50))}"
                                      for k, v in by_kind.items()
                                      ) + f" s; then {stats['random_faults']} random faults"


def _sigstops(pid: int, watch: Watch, repeat: int, gap: float,
              stop_s: float) -> Callable[[threading.Event], None]:
    def steps(halt: threading.Event) -> None:
        for _ in range(repeat):
            if halt.wait(gap):
                return
            fault = watch.inject("SIGSTOP", lambda: os.kill(pid, signal.SIGSTOP))
            try:
                halt.wait(stop_s)
            finally:
                os.kill(pid, signal.SIGCONT)
            watch.wait(fault, halt)
    return steps


def broker_sigstop(ctx: Context, result: Result) -> None:
    idle, stop_s, gap, repeat = 1.0, 3.0, 1.5, ctx.n(5, 2)
    count = ctx.n(100_000, 1000)
    result.measure = ("SIGSTOP until the connection is open again (SIGCONT after 3 s); "
                      "detection: SIGSTOP until state == 'reconnecting'")
    with ProtonCBroker() as broker, amqscale.Container(workers=1) as client:
        pid = broker.pid
        assert pid is not None
        conn = client.connect(broker.url, idle_timeout=idle, reconnect=BACKOFF)
        sender = conn.open_sender("faults", window=WINDOW)
        watch = Watch(client, conn, lambda: {"reconnects": conn.reconnects},
                      reopen_rule(conn), lambda f: conn.state == "reconnecting")
        injector = Injector(_sigstops(pid, watch, repeat, gap, stop_s))
        progress = send_under_faults(result, sender, count, watch, injector,
                                     rate=count / (repeat * (gap + stop_s + 0.5)))
        tally = Tally()  # the broker settles what it delivers (pre-settled): drain after
        drain_s = drain(client.connect(broker.url).open_receiver("faults", credit=1000),
                        tally, progress.sent + progress.extra)
        result.count_messages(tally, progress.sent, sender)
        result.reconnects, result.restarts = conn.reconnects, client.worker_restarts
    detections = [f.detected - f.at for f in result.faults if f.detected is not None]
    p50, p99 = percentile(detections, 50), percentile(detections, 99)
    result.check(len(detections) == len(result.faults) == repeat,
                 f"{len(detections)} of {repeat} stops detected")
    result.check(p99 is not None and p99 <= 2 * idle,
                 f"detection p99 {_fmt(p99)} s > 2 x idle_timeout ({2 * idle:.0f} s)")
    result.check_recovered()
    result.details.update(idle_timeout=idle, stop_s=stop_s, drain_s=round(drain_s, 1),
                          detection_p50_s=_round(p50), detection_p99_s=_round(p99))
    result.notes = f"detection p50 {_fmt(p50)} s, p99 {_fmt(p99)} s (limit {2 * idle:.0f} s)"


CHILD = textwrap.dedent("""
    import amqscale
    c = amqscale.Container(workers=2)
    listener = c.listen("amqp://127.0.0.1:0")
    conn = c.connect(f"amqp://127.0.0.1:{listener.port}", shards=2)
    sender = conn.open_sender("q")
    first = True
    while True:
        sender.send_many([b"x" * 100] * 100)
        for d in listener.receiver.receive_many(timeout=10):
            d.accept()
        if first:
            print(" ".join(map(str, c.worker_pids())), flush=True)
            first = False
""")


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("amqscale-")}


def owned_segments(pids: Sequence[int]) -> set[str]:
    """Segments named for one of `pids` (amqscale-<pid>-<counter>-<random>): those of other
    programs that run meanwhile (a test run) are not counted."""
    prefixes = tuple(f"amqscale-{pid}-" for pid in pids)
    return {n for n in shm_segments() if n.startswith(prefixes)}


def alive(pids: Sequence[int]) -> list[int]:
    """The pids still running (zombies count as gone)."""
    running = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
    return running


def _all_gone(pids: Sequence[int]) -> bool:
    return not alive(pids) and not owned_segments(pids)


def _kill_child(rng: random.Random) -> tuple[list[int], float]:
    """Start the child, SIGKILL it mid-stream; (its pid and workers' pids, time of the kill)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, cwd=REPO_ROOT, text=True)
    try:
        assert child.stdout is not None
        if not select.select([child.stdout], [], [], 60)[0]:
            raise TimeoutError("the child did not start streaming in 60 s")
        line = child.stdout.readline()
        workers = [int(x) for x in line.split()]
        if len(workers) != 2:
            raise RuntimeError(f"the child said {line!r} (exit code {child.poll()})")
        time.sleep(rng.uniform(0.05, 0.5))
    finally:
        killed_at = time.monotonic()
        child.kill()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    return [child.pid, *workers], killed_at


def parent_kill(ctx: Context, result: Result) -> None:
    repeat = ctx.n(100)
    result.measure = "SIGKILL of the parent until its workers are gone and its segments removed"
    before = shm_segments()
    procs_left = segs_left = 0
    for i in range(repeat):
        pids, killed_at = _kill_child(ctx.rng)
        gone = wait_until(partial(_all_gone, pids), 10.0, 0.01)
        fault = Fault("SIGKILL parent", killed_at, {}, {"round": i, "pids": pids})
        if gone:
            fault.recovered = time.monotonic()
        left, segs = alive(pids), owned_segments(pids)
        fault.info.update(processes_left=left, segments_left=sorted(segs))
        procs_left += len(left)
        segs_left += len(segs)
        result.faults.append(fault)
        for pid in left:  # ours: the child's workers; do not let them outlive the run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    after = shm_segments()
    result.details.update(rounds=repeat, processes_left=procs_left, segments_left=segs_left,
                          shm_amqscale_before=len(before), shm_amqscale_after=len(after),
                          shm_new_unattributed=sorted(after - before)[:20])
    result.check(procs_left == 0, f"{procs_left} worker process(es) left")
    result.check(segs_left == 0, f"{segs_left} /dev/shm segment(s) left")
    result.notes = (f"{repeat} kills; processes left {procs_left}, segments left {segs_left} "
                    f"(/dev/shm amqscale-*: {len(before)} before, {len(after)} after)")


def _sample(processes: dict[str, psutil.Process]) -> dict[str, tuple[int, int]]:
    return {name: (p.num_fds(), p.memory_info().rss) for name, p in processes.items()}


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than 2 points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def connect_cycles(ctx: Context, result: Result) -> None:
    cycles = ctx.n(10_000, 100)
    every = max(1, cycles // 10)
    result.messages = cycles
    result.measure = "none (no fault): fds and RSS per process"
    samples: list[tuple[int, dict[str, tuple[int, int]]]] = []
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=2) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        url = f"amqp://127.0.0.1:{listener.port}"
        processes = {"user process": psutil.Process()}
        for name, c in (("client", client), ("server", server)):
            for i, pid in enumerate(c.worker_pids()):
                processes[f"{name} worker {i}"] = psutil.Process(pid)
        with consuming(listener.receiver) as tally:
            samples.append((0, _sample(processes)))
            started = time.monotonic()
            for i in range(cycles):
                conn = client.connect(url, shards=2)
                conn.open_sender("cycles").send(body(i)).wait(timeout=30)
                conn.close()
                if (i + 1) % every == 0:
                    samples.append((i + 1, _sample(processes)))
            seconds = time.monotonic() - started
            await_tally(tally, cycles)
        result.lost = len(tally.missing(cycles))
        result.duplicates = tally.duplicates
        result.reconnects, result.restarts = 0, client.worker_restarts + server.worker_restarts
        result.check(result.lost == 0, f"{result.lost} of {cycles} messages lost")
    later = samples[1:]  # after the first `every` cycles: caches and pools warm
    worst_fds, worst_rss = 0, 0
    per: dict[str, Any] = {}
    for name in processes:
        fds = [s[name][0] for _, s in later]
        rss = [s[name][1] for _, s in later]
        xs = [c / 1000 for c, _ in later]
        per[name] = {"fds_first": fds[0], "fds_last": fds[-1], "fds_min": min(fds),
                     "fds_max": max(fds), "fds_per_1000": round(_slope(xs, fds), 3),
                     "rss_first_mib": round(rss[0] / MiB, 2),
                     "rss_last_mib": round(rss[-1] / MiB, 2),
                     "rss_growth_mib": round((max(rss) - rss[0]) / MiB, 2),
                     "rss_mib_per_1000": round(_slope(xs, rss) / MiB, 3),
                     "at_start": {"fds": samples[0][1][name][0],
                                  "rss_mib": round(samples[0][1][name][1] / MiB, 2)}}
        worst_fds = max(worst_fds, max(abs(f - fds[0]) for f in fds))
        worst_rss = max(worst_rss, max(rss) - rss[0])
        result.check(all(abs(f - fds[0]) <= 2 for f in fds),
                     f"{name}: fds {fds[0]} -> {min(fds)}..{max(fds)} (beyond +-2)")
        result.check(max(rss) - rss[0] < 16 * MiB,
                     f"{name}: RSS grew {(max(rss) - rss[0]) / MiB:.1f} MiB")
    result.details.update(cycles=cycles, sample_every=every, shards=2,
                          cycles_per_s=round(cycles / seconds, 1), processes=per,
                          samples=[{"cycle": c, **{k: {"fds": v[0], "rss": v[1]}
                                                   for k, v in s.items()}}
                                   for c, s in samples])
    result.notes = (f"{cycles / seconds:.0f} cycles/s; worst: fds +-{worst_fds}, "
                    f"RSS +{worst_rss / MiB:.1f} MiB after the first {every}")


def slow_consumer(ctx: Context, result: Result) -> None:
    count = ctx.n(1_000_000, 5000)
    consume = ctx.n(5000, 500)
    credit, fill_chunk = 200, 5000
    result.messages = count
    result.measure = "none (no fault): buffering and RSS under a backlog"
    rabbit = ctx.rabbitmq
    name = ctx.queue("slow")
    address = f"/queue/{name}"
    try:
        with amqscale.Container(workers=1) as client:
            conn = client.connect(rabbit.url)
            sender = conn.open_sender(address, window=fill_chunk)
            started = time.monotonic()
            for lo in range(0, count, fill_chunk):
                sender.send_many(bodies(lo, min(count, lo + fill_chunk)), timeout=FLUSH_TIMEOUT)
            sender.flush(timeout=FLUSH_TIMEOUT)
            fill_s = time.monotonic() - started
            worker = psutil.Process(client.worker_pids()[0])
            me = psutil.Process()
            receiver = conn.open_receiver(address, credit=credit)
            state = receiver._state
            tally = Tally()
            most, rss = 0, []  # the most buffered; (user, worker) RSS every 100 taken
            for i in range(consume):
                delivery = receiver.receive(timeout=DRAIN_TIMEOUT)
                tally.add([delivery.body])
                delivery.accept()
                time.sleep(0.001)  # the slow consumer
                if i % 100 == 99 or i == consume - 1:
                    client._driver.pump(0)  # what has arrived counts as buffered too
                    rss.append((me.memory_info().rss, worker.memory_info().rss))
                most = max(most, sum(len(a.payloads) for a in state.buffer))
            receiver.close()
            conn.close()
            depth = rabbit.list_queues().get(name, -1)
            result.restarts = client.worker_restarts
        result.lost = max(0, count - tally.unique - depth)
        result.duplicates = tally.duplicates
        result.reconnects = 0
        user_growth = (max(r[0] for r in rss) - rss[0][0]) / MiB
        worker_growth = (max(r[1] for r in rss) - rss[0][1]) / MiB
        result.check(most <= credit, f"{most} buffered > credit {credit}")
        result.check(user_growth < 16 and worker_growth < 16,
                     f"RSS grew {user_growth:.1f} MiB (user) / {worker_growth:.1f} MiB (worker)")
        result.check(tally.missing(consume) == [], f"took {tally.summary(consume)}")
        result.check(depth == count - consume, f"queue holds {depth}, not {count - consume}")
        result.details.update(
            consumed=consume, credit=credit, fill_s=round(fill_s, 1),
            fill_msg_per_s=round(count / fill_s), most_buffered=most, queue_depth_after=depth,
            rss_user_mib=[round(r[0] / MiB, 2) for r in rss],
            rss_worker_mib=[round(r[1] / MiB, 2) for r in rss],
            rss_growth_mib={"user": round(user_growth, 2), "worker": round(worker_growth, 2)})
        result.notes = (f"buffered <= {most} (credit {credit}); RSS +{user_growth:.1f} / "
                        f"+{worker_growth:.1f} MiB (user / worker); fill "
                        f"{count / fill_s:,.0f} msg/s")
    finally:
        with contextlib.suppress(Exception):
            rabbit.rabbitmqctl("delete_queue", name)


NEEDS_RABBITMQ = {"worker-kill-rabbitmq", "rabbitmq-restart", "slow-consumer"}
SCENARIOS: dict[str, Callable[[Context, Result], None]] = {
    "worker-kill-p2p": worker_kill_p2p,
    "worker-kill-rabbitmq": worker_kill_rabbitmq,
    "rabbitmq-restart": rabbitmq_restart,
    "proxy-faults": proxy_faults,
    "broker-sigstop": broker_sigstop,
    "parent-kill": parent_kill,
    "connect-cycles": connect_cycles,
    "slow-consumer": slow_consumer,
}


# ---- the run ----------------------------------------------------------------------------


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _cell(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def run_scenario(kind: str, ctx: Context) -> Result:
    result = Result(kind)
    result.details["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    print(f"-- {kind} ...", flush=True)
    started = time.monotonic()
    try:
        SCENARIOS[kind](ctx, result)
    except Exception:
        result.error = traceback.format_exc()
        print(result.error, file=sys.stderr, flush=True)
    result.seconds = time.monotonic() - started
    print(f"   {kind}: {'pass' if result.passed else 'FAIL'} in {result.seconds:.0f} s"
          + "".join(f"\n   - {what}" for what in result.failed), flush=True)
    return result


def table(results: Sequence[Result]) -> str:
    head = ["fault", "messages", "lost", "duplicated", "resent", "reconnects", "restarts",
            "recovery p50 (s)", "recovery p99 (s)", "pass", "notes"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        times = r.recovery()
        cells = [r.kind, _cell(r.messages), _cell(r.lost), _cell(r.duplicates), _cell(r.resent),
                 _cell(r.reconnects), _cell(r.restarts), _fmt(percentile(times, 50)),
                 _fmt(percentile(times, 99)), "pass" if r.passed else "**FAIL**",
                 r.notes if r.error is None else f"error: {r.error.strip().splitlines()[-1]}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def host_facts() -> dict[str, Any]:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                         capture_output=True, text=True).stdout.strip()
    return {"hostname": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "git": rev,
            "load_average_start": list(os.getloadavg())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="KIND",
                    help=f"run only these: {', '.join(SCENARIOS)}")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every count (messages, fault repetitions, cycles)")
    ap.add_argument("--seed", type=int, default=1, help="the random choices' seed")
    ap.add_argument("--json", type=Path, help="where the JSON goes "
                    "(default perf/results/faults-YYYYmmdd-HHMMSS.json)")
    args = ap.parse_args(argv)
    if not args.scale > 0:
        ap.error("--scale must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k for k in SCENARIOS if k in (args.only or SCENARIOS)]
    now = datetime.datetime.now()
    out = args.json or PERF_DIR / "results" / f"faults-{now:%Y%m%d-%H%M%S}.json"
    host = host_facts()
    started = time.monotonic()
    # The RabbitMQ ones last, together: the broker starts for the first and idles no longer
    # than it must beside the others. The table keeps the order above.
    order = sorted(kinds, key=lambda k: k in NEEDS_RABBITMQ)
    with contextlib.ExitStack() as stack:
        ctx = Context(args.scale, args.seed, stack)
        done = {kind: run_scenario(kind, ctx) for kind in order}
    results = [done[kind] for kind in kinds]
    host["load_average_end"] = list(os.getloadavg())
    document = {
        "schema": SCHEMA, "started": now.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1), "host": host,
        "settings": {"scale": args.scale, "seed": args.seed, "only": kinds,
                     "body_bytes": BODY_BYTES, "chunk": CHUNK, "window": WINDOW,
                     "backoff_max_delay_s": BACKOFF.max_delay,
                     "recovery_timeout_s": RECOVERY_TIMEOUT,
                     "command": [Path(sys.executable).name, *sys.argv]},
        "passed": all(r.passed for r in results),
        "scenarios": {r.kind: r.to_json() for r in results},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    print()
    print(table(results))
    print(f"\n{'every scenario passed' if document['passed'] else 'FAILED'}; JSON: {out}")
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
