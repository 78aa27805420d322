"""amqscale side by side with the bare engine pair, proton-python, rhea, Proton C and RabbitMQ.

    .venv/bin/python perf/compare.py [--quick] [--cases GROUP ...] [--sizes 100,4096,1048576]
                                     [--modes at-least-once,presettled] [--workers 1,2]
                                     [--runs 3] [--out-dir perf/results]

Every case is a receiver process and a sender process (`perf/peers.py ROLE`), started here:
the receiver first (it says ``ready`` once it listens or is attached), then the sender; each
prints one JSON line of results at the end. Cases run interleaved (A B C A B C ...) after a
warm-up pass, and each figure is the median of ``--runs`` runs. Peer-to-peer cases run with
no broker up; each broker's cases run while only that broker is up.

The anchor "(b)" of every peer-to-peer ratio is the bare engine pair (perf/bare.py: proton's
C engine called from Python with nothing of amqscale, one process a side). amqscale's own
Engine driven in a loop with no rings and no workers is a row of its own (``engine-loop``),
as are rhea's sender -> receiver pair and one row per feature (TLS, the asyncio and
event-driven faces, reconnect off, in-worker handlers through the C broker).

TLS (``--cases tls``): proton-python and amqscale bytes (one per call and batches) peer to
peer over ``amqps://127.0.0.1``, with the same cases without TLS in the same run, so that
the report shows amqscale-TLS / proton-python-TLS and TLS's own cost (TLS / plain, rate and
CPU per message). Test certificates (``amqscale.testing.certs``) are made once per run in
its temporary directory; the receiver listens with the server's certificate and key, the
sender verifies it and the name against the CA.

* msg/s: messages received / (end - sender start), where the sender starts its clock when its
  link is usable and the end is the later of the receiver's last message and the sender's last
  outcome.
* CPU us/msg: each process's CPU seconds over the run (psutil; amqscale's workers as rows of
  their own; a broker's whole process tree) divided by the messages sent.
* MB/s: body bytes received per second (10^6 bytes), per case.
* latency: passes at a fixed rate: half the measured peak (on 2 cores this needs more cores
  than there are to be within its target; kept and labelled so), then 1,000 and 10,000
  msg/s for the latency families (a rate above 80% of a family's peak is skipped, and why is
  recorded), with perf/pipe_chain.py's floor for the same number of processes at the same
  rates in the same run. The sender puts the scheduled send time in the first 8 bytes of
  each body and keeps the schedule however late it runs, and the receiver records receive
  time - scheduled time in an HdrHistogram (coordinated omission accounted for). Histograms
  of the runs are merged.
* micro-benchmarks: perf/codec_bench.py and perf/ring_bench.py are run with ``--json`` and
  folded in.

Results: a JSON document (ratios and pass/miss targets as fields) and a PNG chart under
``--out-dir``, the summary (``summary-YYYYMMDD-<commit>.json`` and ``.png``, small enough to
commit) beside them, and the tables printed here (see perf/README.md for the schema).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(PERF_DIR))

import compare_report as report  # noqa: E402

PEERS = PERF_DIR / "peers.py"
READY_TIMEOUT = 90.0
IDLE = 10.0  # a receiver gives up after this long without a message

# Families of peers: the roles they run and the extra arguments they take.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "proton": ("proton", []),
    "proton-msg": ("proton", ["--messages"]),
    # The anchor (b): proton's C engine from Python, nothing of amqscale (perf/bare.py).
    "bare": ("bare", []),
    # amqscale's Engine in a loop, no rings, no workers: a row of its own, not the anchor.
    "engine-loop": ("engine", []),
    # rhea (Node.js) sender -> rhea receiver, the other anchor (no TLS, no brokers here).
    "rhea": ("rhea", []),
    "amqscale-bytes": ("amqscale", []),
    "amqscale-messages": ("amqscale", ["--messages"]),
    # The firehose API: send_many / receive_many + accept, up to 1000 at a time.
    "amqscale-bytes-batch": ("amqscale", ["--batch", "1000"]),
    "amqscale-messages-batch": ("amqscale", ["--messages", "--batch", "1000"]),
    # The event-driven face: proton's MessagingHandler pair, unchanged, on amqscale.reactor.
    "amqscale-reactor": ("reactor", []),
    # The asyncio face (amqscale.aio on uvloop): put() one by one, and send_many.
    "amqscale-aio-bytes": ("aio", []),
    "amqscale-aio-bytes-batch": ("aio", ["--batch", "1000"]),
    # Reconnect off (connect(..., reconnect=False)): what reconnect, on by default, costs.
    "amqscale-bytes-noreconnect": ("amqscale", ["--no-reconnect"]),
    # Over TLS (amqps://, peer-to-peer): the families above of the same name without -tls.
    "proton-tls": ("proton", []),
    "amqscale-bytes-tls": ("amqscale", []),
    "amqscale-bytes-batch-tls": ("amqscale", ["--batch", "1000"]),
    # In-worker handlers (through a broker: the receiver connects): amqscale-send -> the C
    # broker -> open_receiver(..., handler="inworker_peer:Count") (perf/inworker_peer.py).
    "amqscale-inworker": ("amqscale", []),
}
# Families whose receiver is another role than "<base>-recv".
RECEIVER_ROLES = {"amqscale-inworker": "inworker-recv"}
# Each TLS family and its plain twin; the group "tls" selects both of every pair.
TLS_TWINS = {"proton-tls": "proton", "amqscale-bytes-tls": "amqscale-bytes",
             "amqscale-bytes-batch-tls": "amqscale-bytes-batch"}
BATCH_FAMILIES = {"amqscale-bytes-batch", "amqscale-messages-batch",
                  "amqscale-aio-bytes-batch", "amqscale-bytes-batch-tls"}
BROKER_ONLY = {"amqscale-inworker"}
P2P_FAMILIES = [f for f in FAMILIES if f not in BROKER_ONLY]
BROKER_FAMILIES = {"proton-c-broker": ["c-examples", "proton", "amqscale-bytes",
                                       "amqscale-inworker"],
                   "rabbitmq": ["proton", "amqscale-bytes"]}
# One row each for the other faces and features: one case (100 B, or the smallest size;
# at-least-once; 1 worker a side) unless the family is named in --cases (or, for the TLS
# families, the "tls" group runs), which gives it every size, mode and worker count.
FEATURE_ROWS = {"proton-tls", "amqscale-bytes-tls", "amqscale-aio-bytes",
                "amqscale-aio-bytes-batch", "amqscale-reactor", "amqscale-bytes-noreconnect",
                "amqscale-inworker"}
ALIASES = {"engine": "engine-loop"}  # the engine-loop family's name before the bare pair
GROUPS = P2P_FAMILIES + ["tls", "cbroker", "rabbitmq", "codec", "ring"]
# The full TLS set runs when asked for (--cases tls, or its families by name); the TLS rows
# of one case each (proton-tls, amqscale-bytes-tls) run by default.
DEFAULT_GROUPS = [g for g in GROUPS if g not in ("tls", "amqscale-bytes-batch-tls")]
QUICK_DEFAULT = [f for f in P2P_FAMILIES if f != "amqscale-bytes-batch-tls"] + ["codec", "ring"]
# The families of the latency passes at fixed rates (amqscale-messages: 1 worker only), the
# rates, and how many pipes perf/pipe_chain.py's floor has for each: an amqscale pair is 4
# processes whatever its workers (sender, its worker, the receiver's worker, receiver).
FIXED_RATE_FAMILIES = {"proton": 1, "bare": 1, "amqscale-bytes": 3, "amqscale-messages": 3}
FIXED_RATES = (1_000, 10_000)
FIXED_RATE_MAX_OF_PEAK = 0.8  # a rate above this share of the family's peak is skipped

# Messages per run, full mode, by family: a few seconds each at the baseline rates measured
# on 2-core machines (proton-python ~23k msg/s, a lean engine loop ~0.9M msg/s).
FULL_COUNTS = {"proton": 50_000, "proton-msg": 50_000, "bare": 1_000_000,
               "engine-loop": 1_000_000, "rhea": 100_000,
               "amqscale-bytes": 300_000, "amqscale-messages": 200_000,
               "amqscale-bytes-batch": 300_000, "amqscale-messages-batch": 200_000,
               "amqscale-reactor": 100_000, "amqscale-aio-bytes": 300_000,
               "amqscale-aio-bytes-batch": 300_000,
               "proton-tls": 50_000, "amqscale-bytes-tls": 300_000,
               "amqscale-bytes-batch-tls": 300_000,
               "amqscale-bytes-noreconnect": 300_000, "amqscale-inworker": 200_000,
               "c-examples": 200_000}
BROKER_COUNT_FACTOR = {"p2p": 1.0, "proton-c-broker": 0.5, "rabbitmq": 0.4}
LARGE_BODY = report.LARGE_BODY  # 1 KiB: bodies above get a quarter of the count (full mode)
QUICK_COUNT = 2_000
# Every case's bytes per run are capped (bodies times count; times --scale), at least
# MIN_COUNT messages: a 1 MiB case is 1,024 messages (quick: 256), seconds, not minutes.
BYTE_BUDGET = 1 << 30
QUICK_BYTE_BUDGET = 256 << 20
MIN_COUNT = 200
# Through a broker, bodies up to this: the large-body comparison is peer-to-peer (against
# proton-python and the bare pair); proton-python through the C broker moves ~9 MB/s here.
BROKER_MAX_BODY = 64 << 10
C_EXAMPLE_BODY = 0  # the C send example sends its own body: a map {"sequence": N}


@dataclass(frozen=True)
class Case:
    family: str
    path: str  # "p2p", "proton-c-broker" or "rabbitmq"
    size: int
    presettled: bool
    workers: int = 0  # amqscale only

    @property
    def id(self) -> str:
        return report.case_id(self.path, self.family, self.size,
                              report.mode_name(self.presettled), self.workers)

    @property
    def tls(self) -> bool:
        return self.family in TLS_TWINS

    @property
    def latency(self) -> bool:
        """Latency is measured peer-to-peer, for the small body, one message per call."""
        return (self.path == "p2p" and self.size <= LARGE_BODY
                and self.family not in BATCH_FAMILIES)

    @property
    def fixed_rate_latency(self) -> bool:
        """Also at 1,000 and 10,000 msg/s: the latency families (amqscale-messages with 1
        worker), against perf/pipe_chain.py's floor."""
        if not self.latency or self.family not in FIXED_RATE_FAMILIES:
            return False
        return self.family != "amqscale-messages" or self.workers == 1

    @property
    def hops(self) -> int:
        """perf/pipe_chain.py's --hops for the same number of processes as this case."""
        return FIXED_RATE_FAMILIES[self.family]

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "path": self.path, "body_bytes": self.size,
                "mode": report.mode_name(self.presettled), "workers": self.workers or None}


@dataclass
class Settings:
    quick: bool
    runs: int
    warmup: bool
    count: int | None
    scale: float
    latency_seconds: float
    out_dir: Path
    groups: list[str]
    sizes: list[int]
    modes: list[bool]  # presettled?
    workers: list[int]
    report: Path | None = None  # only re-report this result
    named: set[str] = field(default_factory=set)  # families named in --cases

    def count_for(self, case: Case, warmup: bool = False) -> int:
        if self.count is not None:
            n = self.count
        elif self.quick:
            n = QUICK_COUNT
        else:
            n = int(FULL_COUNTS[case.family] * BROKER_COUNT_FACTOR[case.path] * self.scale)
            if case.size > LARGE_BODY:
                n //= 4
        if case.size > 0:  # (the C examples' own body is a few dozen bytes)
            budget = (QUICK_BYTE_BUDGET if self.quick else BYTE_BUDGET) * self.scale
            n = min(n, max(MIN_COUNT, int(budget // case.size)))
        return max(100, n // 10) if warmup else n


# ---- choosing the cases ---------------------------------------------------------------------


def build_cases(settings: Settings,
                skipped: dict[str, str] | None = None) -> dict[str, list[Case]]:
    """Cases by the group that runs together: "p2p", and one per broker; the cases left
    out, and why, into `skipped`."""
    groups: dict[str, list[Case]] = {}
    skipped = {} if skipped is None else skipped
    tls_pairs = set(TLS_TWINS) | set(TLS_TWINS.values()) if "tls" in settings.groups else set()
    p2p = [f for f in P2P_FAMILIES if f in settings.groups or f in tls_pairs]
    full = settings.named | tls_pairs  # feature rows that get every size, mode and worker
    groups["p2p"] = list(expand("p2p", p2p, settings, full))
    if "cbroker" in settings.groups:
        groups["proton-c-broker"] = list(
            expand("proton-c-broker", BROKER_FAMILIES["proton-c-broker"], settings,
                   settings.named))
    if "rabbitmq" in settings.groups:
        groups["rabbitmq"] = list(expand("rabbitmq", BROKER_FAMILIES["rabbitmq"], settings))
    for path, cases in groups.items():
        for case in cases:
            reason = not_run(case)
            if reason:
                skipped[case.id] = reason
        groups[path] = [c for c in cases if c.id not in skipped]
    return {k: v for k, v in groups.items() if v}


def expand(path: str, families: list[str], settings: Settings,
           full: set[str] | frozenset[str] = frozenset()) -> Iterator[Case]:
    for family in families:
        if family == "c-examples":  # its own body, at-least-once only
            yield Case(family, path, C_EXAMPLE_BODY, False)
            continue
        if family in FEATURE_ROWS and family not in full:
            yield feature_row(family, path, settings)
            continue
        for size in settings.sizes:
            if (family in BATCH_FAMILIES and size > LARGE_BODY
                    and not large_batches(family, families)):
                continue  # the batch API's question is per-message cost: small bodies
            for presettled in settings.modes:
                if family.startswith("amqscale"):
                    for workers in settings.workers:
                        yield Case(family, path, size, presettled, workers)
                else:
                    yield Case(family, path, size, presettled)


def not_run(case: Case) -> str | None:
    """Why a case of the matrix is left out (recorded in the document), or None."""
    from amqscale.workers.protocol import MAX_FRAGMENT

    if case.path != "p2p" and case.size > BROKER_MAX_BODY:
        return (f"through a broker, bodies up to {BROKER_MAX_BODY:,} bytes (the large-body "
                "figures are peer-to-peer)")
    if case.family == "engine-loop" and case.size + 8 > MAX_FRAGMENT:
        return (f"the engine-loop receiver takes whole messages only (Deliveries), and the "
                f"Engine streams messages above {MAX_FRAGMENT:,} bytes in DeliveryParts")
    return None


def feature_row(family: str, path: str, settings: Settings) -> Case:
    """A feature's one case: 100 B (or the smallest size), at-least-once (if it runs), one
    worker a side (or the fewest)."""
    size = 100 if 100 in settings.sizes else min(settings.sizes)
    presettled = False if False in settings.modes else settings.modes[0]
    workers = (1 if 1 in settings.workers else min(settings.workers)
               ) if family.startswith("amqscale") else 0
    return Case(family, path, size, presettled, workers)


def large_batches(family: str, families: list[str]) -> bool:
    """Whether a batch family runs large bodies too: over TLS (TLS's cost grows with the
    bytes), and the plain twin of a TLS family that runs, to be compared with it."""
    return family in TLS_TWINS or any(TLS_TWINS.get(f) == family for f in families)


# ---- running peers --------------------------------------------------------------------------


class Peer:
    """A peer process: its stdout read line by line with deadlines, its stderr in a file."""

    def __init__(self, argv: list[str], logdir: Path, name: str, stdout_lines: bool = True,
                 root: Path = REPO_ROOT):
        self.name = name
        self.log = logdir / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                argv, cwd=root, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if stdout_lines else subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        self.started = time.monotonic()
        self._buffer = b""

    def read_line(self, timeout: float) -> str:
        """The next line of stdout; raises RuntimeError at the deadline or on EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{self.name}: no output within {timeout:.0f} s"
                                       f"{self.tail()}")
                if selector.select(remaining):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise RuntimeError(f"{self.name} exited early{self.tail()}")
                    self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def read_json(self, timeout: float) -> dict[str, Any]:
        while True:
            line = self.read_line(timeout)
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by pid
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                return "\n  " + "\n  ".join(text)
        return ""


@dataclass
class Broker:
    """A started broker: its URL, how to address a fresh queue, its processes."""

    name: str
    url: str
    server: Any
    address_prefix: str = ""
    procs: list[psutil.Process] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total

    def fresh_address(self) -> str:
        return f"{self.address_prefix}perf-{uuid.uuid4().hex[:12]}"


def peer_argv(role: str, case: Case, url: str, address: str, count: int, rate: float,
              listen: bool, root: Path = REPO_ROOT, certs: Any = None) -> list[str]:
    """The command line of one peer, from the source tree `root` (perf/ab.py runs two);
    `certs` (amqscale.testing.certs.Certificates) for a TLS case."""
    base, extra = FAMILIES[case.family]
    peers = root / PEERS.relative_to(REPO_ROOT)
    name = RECEIVER_ROLES.get(case.family, f"{base}-recv") if role == "recv" else f"{base}-{role}"
    if name == "inworker-recv":
        listen = False  # it connects: a broker's path only
    argv = [sys.executable, str(peers), name, "--url", url, "--address", address,
            "--count", str(count), "--size", str(case.size), "--idle", str(IDLE)] + extra
    if case.presettled:
        argv.append("--presettled")
    if rate > 0:
        argv += ["--rate", f"{rate:.1f}"]
    if case.workers:
        argv += ["--workers", str(case.workers)]
    if listen:
        argv.append("--listen")
    if case.tls:
        if certs is None:
            raise ValueError(f"{case.id}: a TLS case needs certificates")
        if listen:
            argv += ["--cert", str(certs.cert), "--key", str(certs.key)]
        else:
            argv += ["--ca", str(certs.ca)]
    return argv


_CERTIFICATES: dict[Path, Any] = {}


def tls_certificates(logdir: Path) -> Any:
    """The run's test certificates (a CA; a server certificate and key for 127.0.0.1 and
    localhost), made once per run in its temporary directory `logdir`."""
    if logdir not in _CERTIFICATES:
        from amqscale.testing.certs import make_certificates

        _CERTIFICATES[logdir] = make_certificates(logdir / "certs")
    return _CERTIFICATES[logdir]


def run_pair(case: Case, count: int, rate: float, broker: Broker | None,
             logdir: Path, root: Path = REPO_ROOT) -> dict[str, Any]:
    """One run of a Python pair (from the source tree `root`): receiver, then sender;
    returns both reports."""
    certs = tls_certificates(logdir) if case.tls else None
    if broker is None and case.family in BROKER_ONLY:
        raise ValueError(f"{case.id}: its receiver connects: a broker's path only")
    if broker is None:
        from amqscale.testing import free_port

        scheme = "amqps" if case.tls else "amqp"
        url, address, listen = (f"{scheme}://127.0.0.1:{free_port(['127.0.0.1'])}", "perf",
                                True)
    elif case.tls:
        raise ValueError(f"{case.id}: TLS cases are peer-to-peer only")
    else:
        url, address, listen = broker.url, broker.fresh_address(), False
    tag = f"{case.id.replace('/', '_')}-{uuid.uuid4().hex[:6]}"
    receiver = Peer(peer_argv("recv", case, url, address, count, rate, listen, root, certs),
                    logdir, f"{tag}-recv", root=root)
    sender: Peer | None = None
    try:
        line = receiver.read_line(READY_TIMEOUT)
        if line != "ready":
            raise RuntimeError(f"receiver said {line!r}, not ready")
        broker_cpu0 = broker.cpu_seconds() if broker else 0.0
        sender = Peer(peer_argv("send", case, url, address, count, rate, False, root, certs),
                      logdir, f"{tag}-send", root=root)
        budget = 120 + count / 200
        sent = sender.read_json(budget)
        received = receiver.read_json(IDLE + 60)
        broker_cpu = (broker.cpu_seconds() - broker_cpu0) if broker else None
        receiver.close_stdin()
        sender.wait(60)
        receiver.wait(60)
    finally:
        for peer in (sender, receiver):
            if peer is not None:
                peer.close_stdin()
                peer.kill()
    return {"sender": sent, "receiver": received, "broker_cpu": broker_cpu}


def run_c_examples(count: int, broker: Broker, logdir: Path) -> dict[str, Any]:
    """Proton C `receive` then `send` through the C broker; CPU from each one's rusage."""
    server = broker.server
    host, port = "127.0.0.1", str(server.port)
    address = broker.fresh_address()
    tag = f"c-examples-{uuid.uuid4().hex[:6]}"
    receiver = Peer([str(server.receive_path), host, port, address, str(count)], logdir,
                    f"{tag}-recv", stdout_lines=False)
    time.sleep(0.2)  # let it attach; the broker queues what comes earlier anyway
    broker_cpu0 = broker.cpu_seconds()
    start = time.monotonic()
    sender = Peer([str(server.send_path), host, port, address, str(count)], logdir,
                  f"{tag}-send", stdout_lines=False)
    budget = 120 + count / 500
    try:
        send_cpu, send_end, send_code = reap(sender, budget)
        recv_cpu, recv_end, recv_code = reap(receiver, budget)
    finally:
        sender.kill()
        receiver.kill()
    broker_cpu = broker.cpu_seconds() - broker_cpu0
    ok = send_code == 0 and recv_code == 0
    error = None if ok else f"send exit {send_code}, receive exit {recv_code}"
    return {
        "sender": {"role": "c-send", "count": count if send_code == 0 else 0, "start": start,
                   "first": start, "last": send_end, "cpu_process": send_cpu,
                   "cpu_workers": [], "accepted": count if send_code == 0 else 0,
                   "error": error},
        # receive.c counts and exits: a clean exit means every message arrived.
        "receiver": {"role": "c-receive", "count": count if recv_code == 0 else 0,
                     "unique": count if recv_code == 0 else 0, "duplicates": 0,
                     "first": start, "last": recv_end, "cpu_process": recv_cpu,
                     "cpu_workers": [], "error": error},
        "broker_cpu": broker_cpu,
    }


def reap(peer: Peer, timeout: float) -> tuple[float, float, int | None]:
    """Wait for a child with wait4: (its CPU seconds, when it ended, exit code)."""
    deadline = time.monotonic() + timeout
    pid = peer.proc.pid
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            peer.proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime, time.monotonic(), peer.proc.returncode
        time.sleep(0.002)
    peer.kill()
    return 0.0, time.monotonic(), None


def run_once(case: Case, count: int, rate: float, broker: Broker | None,
             logdir: Path) -> dict[str, Any]:
    """One run of a case, as figures (report.run_figures); errors become a field."""
    try:
        if case.family == "c-examples":
            assert broker is not None
            raw = run_c_examples(count, broker, logdir)
        else:
            raw = run_pair(case, count, rate, broker, logdir)
    except Exception as exc:  # one failed run must not lose the others
        return {"count": count, "error": f"{type(exc).__name__}: {exc}"}
    return report.run_figures(count, raw)


# ---- brokers --------------------------------------------------------------------------------


@contextlib.contextmanager
def broker_for(path: str) -> Iterator[Broker | None]:
    if path == "p2p":
        yield None
        return
    from amqscale.testing import ProtonCBroker, RabbitMQ

    server: Any = ProtonCBroker(window=1000) if path == "proton-c-broker" else RabbitMQ()
    print(f"starting {server.name} ...", flush=True)
    with server:
        procs = [psutil.Process(pid) for pid in server.pids()]
        prefix = "/queue/" if path == "rabbitmq" else ""
        yield Broker(path, server.url, server, prefix, procs)


# ---- the whole comparison -------------------------------------------------------------------


def run_group(path: str, cases: list[Case], settings: Settings, logdir: Path,
              results: dict[str, Any], floors: dict[str, Any] | None = None) -> None:
    """Warm-up, interleaved throughput runs, then interleaved latency runs at half peak,
    then (peer-to-peer) at the fixed rates with perf/pipe_chain.py's floors into `floors`."""
    with broker_for(path) as broker:
        if settings.warmup:
            for case in cases:
                print(f"  warm-up {case.id}", flush=True)
                run_once(case, settings.count_for(case, warmup=True), 0.0, broker, logdir)
        for run in range(settings.runs):
            for case in cases:
                figures = run_once(case, settings.count_for(case), 0.0, broker, logdir)
                entry = results.setdefault(case.id, {**case.describe(), "runs": []})
                entry["runs"].append(figures)
                print(f"  run {run + 1}/{settings.runs} {report.one_line(case.id, figures)}",
                      flush=True)
        for case in cases:
            report.summarize(results[case.id])
        latency_cases = [c for c in cases if c.latency and results[c.id].get("msg_per_s")]
        for run in range(settings.runs):
            for case in latency_cases:
                rate = results[case.id]["msg_per_s"] / 2
                count = latency_count(rate, settings)
                figures = run_once(case, count, rate, broker, logdir)
                entry = results[case.id].setdefault("latency_runs", [])
                entry.append({**figures, "target_rate": rate})
                print(f"  latency {run + 1}/{settings.runs} {case.id} at {rate:,.0f} msg/s "
                      f"(half peak): {report.latency_line(figures)}", flush=True)
        for case in latency_cases:
            report.summarize_latency(results[case.id])
        fixed = [c for c in latency_cases if c.fixed_rate_latency]
        if fixed:
            run_fixed_rates(fixed, settings, broker, logdir, results,
                            {} if floors is None else floors)


def run_fixed_rates(cases: list[Case], settings: Settings, broker: Broker | None,
                    logdir: Path, results: dict[str, Any], floors: dict[str, Any]) -> None:
    """Each case at each of FIXED_RATES (skipped above FIXED_RATE_MAX_OF_PEAK of its peak,
    with the reason recorded), interleaved, each pass after perf/pipe_chain.py at the same
    rate with the cases' numbers of processes."""
    plan: dict[int, list[Case]] = {}
    for case in cases:
        entry = results[case.id]
        fixed = entry.setdefault("latency_fixed", {})
        for rate in FIXED_RATES:
            peak = entry["msg_per_s"]
            if rate > FIXED_RATE_MAX_OF_PEAK * peak:
                fixed[str(rate)] = {"target_rate": rate, "skipped": (
                    f"{rate:,} msg/s is above {FIXED_RATE_MAX_OF_PEAK:.0%} of the measured "
                    f"peak, {peak:,.0f} msg/s")}
                print(f"  latency {case.id} at {rate:,} msg/s: skipped "
                      f"({fixed[str(rate)]['skipped']})", flush=True)
            else:
                plan.setdefault(rate, []).append(case)
    for run in range(settings.runs):
        for rate, planned in plan.items():
            for hops in sorted({c.hops for c in planned}):
                figures = run_pipe_chain(hops, rate, settings, logdir)
                floor = floors.setdefault(report.floor_key(hops, rate), {
                    "hops": hops, "processes": hops + 1, "rate": rate, "runs": []})
                floor["runs"].append(figures)
                print(f"  floor {run + 1}/{settings.runs} pipe_chain --hops {hops} at "
                      f"{rate:,} msg/s: {report.latency_line(figures)}", flush=True)
            for case in planned:
                count = latency_count(rate, settings)
                figures = run_once(case, count, float(rate), broker, logdir)
                runs = results[case.id].setdefault("latency_fixed_runs", {})
                runs.setdefault(str(rate), []).append({**figures, "target_rate": rate})
                print(f"  latency {run + 1}/{settings.runs} {case.id} at {rate:,} msg/s: "
                      f"{report.latency_line(figures)}", flush=True)
    for rate, planned in plan.items():
        for case in planned:
            entry = results[case.id]
            entry["latency_fixed"][str(rate)] = report.merge_latency(
                entry["latency_fixed_runs"][str(rate)], rate)
    for floor in floors.values():
        floor.update(report.merge_latency(floor["runs"], floor["rate"]) or {})


def run_pipe_chain(hops: int, rate: int, settings: Settings, logdir: Path) -> dict[str, Any]:
    """perf/pipe_chain.py --json: the machine's floor for hops + 1 processes at `rate`."""
    path = logdir / f"pipe-chain-{hops}-{rate}-{uuid.uuid4().hex[:6]}.json"
    seconds = latency_count(rate, settings) / rate
    argv = [sys.executable, str(PERF_DIR / "pipe_chain.py"), "--hops", str(hops),
            "--rate", str(rate), "--seconds", f"{seconds:.3f}", "--json", str(path)]
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60 + 2 * seconds, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "pipe_chain.py timed out"}
    if done.returncode != 0 or not path.exists():
        return {"error": f"pipe_chain.py exit {done.returncode}: {done.stderr.strip()[-500:]}"}
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return {"count": data["count"], "msg_per_s": rate,
            "latency": {k: data[k] for k in report.PERCENTILES} | {"count": data["count"]},
            "histogram": data.get("histogram"), "error": None}


def latency_count(rate: float, settings: Settings) -> int:
    low, high = (200, 20_000) if settings.quick else (2_000, 2_000_000)
    return int(min(high, max(low, rate * settings.latency_seconds)))


def run_micro(name: str, settings: Settings, out_dir: Path, stamp: str) -> dict[str, Any]:
    """Run perf/codec_bench.py or perf/ring_bench.py with --json and load what it wrote."""
    path = out_dir / f"{name}-{stamp}.json"
    argv = [sys.executable, str(PERF_DIR / f"{name}_bench.py"), "--json", str(path)]
    if name == "codec" and settings.quick:
        argv += ["--number", "500", "--repeat", "1"]
    if name == "ring":
        argv += ["--repeat", str(settings.runs)] + (["--quick"] if settings.quick else [])
    print(f"running {' '.join(argv[1:])}", flush=True)
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 900 s"}
    if done.returncode != 0 or not path.exists():
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()  # folded into the main document
    return data


def host_facts() -> dict[str, Any]:
    import proton

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                         capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    return {"hostname": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "proton": ".".join(map(str, proton.VERSION)), "git": rev,
            "git_dirty": bool(changed),  # tracked files differ from the commit
            "load_average_start": list(os.getloadavg())}


def parse_args(argv: list[str]) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny counts, 1 run, no warm-up, brokers only if asked")
    ap.add_argument("--cases", nargs="+", choices=GROUPS + list(ALIASES), metavar="GROUP",
                    help=f"groups to run, from {', '.join(GROUPS)} (default: all but "
                         "tls and amqscale-bytes-batch-tls; --quick: also but cbroker and "
                         "rabbitmq; tls: the TLS families and their plain twins, "
                         "peer-to-peer; engine: engine-loop)")
    ap.add_argument("--sizes", default="100,4096,1048576", help="body sizes in bytes")
    ap.add_argument("--modes", default="at-least-once,presettled")
    ap.add_argument("--workers", default="1,2", help="amqscale workers (and shards) a side")
    ap.add_argument("--runs", type=int, help="runs per case, median kept (default 3; quick 1)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--count", type=int, help="messages per run, every case")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the default counts")
    ap.add_argument("--latency-seconds", type=float, help="length of a latency run (5; quick 1)")
    ap.add_argument("--out-dir", type=Path, default=PERF_DIR / "results")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="run nothing: recompute ratios/targets, tables and chart of a result")
    args = ap.parse_args(argv)
    modes = []
    for mode in args.modes.split(","):
        if mode not in ("at-least-once", "presettled"):
            ap.error(f"unknown mode {mode!r}")
        modes.append(mode == "presettled")
    cases = [ALIASES.get(c, c) for c in args.cases] if args.cases else None
    return Settings(
        quick=args.quick,
        runs=args.runs or (1 if args.quick else 3),
        warmup=not (args.no_warmup or args.quick),
        count=args.count,
        scale=args.scale,
        latency_seconds=args.latency_seconds or (1.0 if args.quick else 5.0),
        out_dir=args.out_dir,
        groups=cases or (QUICK_DEFAULT if args.quick else DEFAULT_GROUPS),
        sizes=[int(s) for s in args.sizes.split(",")],
        modes=modes,
        workers=[int(w) for w in args.workers.split(",")],
        report=args.report,
        named={c for c in cases or () if c in FAMILIES},
    )


def finish(document: dict[str, Any], json_path: Path) -> None:
    """Ratios, targets and chart from the cases; write the JSON and the summary (JSON and
    the chart, named by date and commit, beside it); print the tables."""
    document["ratios"] = report.ratios(document)
    document["targets"] = report.targets(document)
    png_path = json_path.with_suffix(".png")
    document["chart"] = str(png_path) if report.chart(document, png_path) else None
    summary_json = json_path.parent / f"{report.summary_name(document)}.json"
    summary_png = summary_json.with_suffix(".png")
    document["summary"] = str(summary_json)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    summary = report.summary(document, json_path.name)
    if document["chart"]:
        shutil.copyfile(png_path, summary_png)
        summary["chart"] = summary_png.name
    summary_json.write_text(json.dumps(summary, indent=1) + "\n")
    print(report.tables(document))
    print(f"\nwrote {json_path}" + (f" and {png_path}" if document["chart"] else ""))
    print(f"summary: {summary_json}" + (f" and {summary_png}" if document["chart"] else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    if settings.report is not None:
        earlier: dict[str, Any] = json.loads(settings.report.read_text())
        finish(earlier, settings.report)
        return earlier
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    document: dict[str, Any] = {
        "schema": report.SCHEMA,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": host_facts(),
        "settings": report.settings_dict(settings),
        "cases": {},
        "latency_floor": {},
        "skipped_cases": {},
        "micro": {},
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amqscale-perf-") as tmp:
        logdir = Path(tmp)
        groups = build_cases(settings, document["skipped_cases"])
        for name, reason in document["skipped_cases"].items():
            print(f"not run: {name}: {reason}", flush=True)
        if any(case.tls for cases in groups.values() for case in cases):
            certs = tls_certificates(logdir)
            print(f"TLS: test certificates in {certs.ca.parent}", flush=True)
        for path, cases in groups.items():
            print(f"{path}: {len(cases)} case(s) x {settings.runs} run(s)", flush=True)
            run_group(path, cases, settings, logdir, document["cases"],
                      document["latency_floor"])
    for name in ("codec", "ring"):
        if name in settings.groups:
            document["micro"][name] = run_micro(name, settings, settings.out_dir, stamp)
    document["host"]["load_average_end"] = list(os.getloadavg())
    document["seconds"] = round(time.monotonic() - began, 1)
    finish(document, settings.out_dir / f"compare-{stamp}.json")
    return document


if __name__ == "__main__":
    main()
