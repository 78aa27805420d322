"""Fault run: in-worker handlers that raise mid-queue, repeated, with the machine busy.

    .venv/bin/python perf/handler_failures.py [--attempts 30] [--busy 2] [--messages 3000]

Each attempt fills a fresh RabbitMQ queue with `--messages` messages (one of them, in the
middle, makes tests/worker_handler_app.py's FailOnce raise), consumes it with that handler
on 2 workers (2 shards, 100 credit), and checks that the link whose handler raised gives
its messages back: the other link must handle every message, each exactly once, within
`--timeout` seconds. `--busy N` keeps N processes spinning meanwhile (stopped with the
run), since a busy machine is when a broker's deliveries are slowest to arrive.

It prints one line per attempt and the number of stalls (an attempt where messages stayed
out of reach); the exit code is 1 if any attempt stalled or lost or doubled a message.
The short version of this run is tests/test_worker_handlers.py's
test_a_handler_that_raises_ends_only_its_link_and_its_traceback_reaches_the_user.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import amqscale  # noqa: E402
from amqscale.testing import RabbitMQ  # noqa: E402

HANDLER = "worker_handler_app:FailOnce"


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _fill(conn: amqscale.Connection, address: str, count: int) -> None:
    sender = conn.open_sender(address, window=2000, presettled=True)
    bad = count // 2
    sender.send_many([amqscale.Message(id=str(i), body="boom" if i == bad else "m")
                      for i in range(count)])
    sender.flush(timeout=120)
    sender.close()


def _attempt(rabbit: RabbitMQ, index: int, count: int, timeout: float) -> tuple[bool, str]:
    """(whether every message was handled exactly once in time, what happened)."""
    directory = Path(tempfile.mkdtemp(prefix="handler-failures-"))
    address = f"/queue/handler-failures-{index}-{time.time_ns()}"
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rabbit.url, shards=2)
        _fill(conn, address, count)
        receiver = conn.open_receiver(address, handler=HANDLER, credit=100,
                                      handler_args={"directory": str(directory)})
        with contextlib.suppress(amqscale.HandlerFailed):  # the one that raised, once
            receiver.wait(handled=count, timeout=timeout)
        try:
            receiver.wait(handled=count, timeout=timeout)
            stalled = ""
        except TimeoutError as exc:
            stalled = str(exc)
        receiver.close()
    ids = [line for path in directory.glob("*.ids") for line in path.read_text().split()]
    exact = sorted(ids, key=int) == [str(i) for i in range(count)]
    if stalled:
        return False, f"STALLED: {stalled}"
    if not exact:
        return False, f"recorded {len(ids)} ids, {len(set(ids))} distinct, of {count}"
    return True, "every message once"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes beside it")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds an attempt's handlers may take")
    args = parser.parse_args()
    budget = args.attempts * (args.timeout * 2 + 30) + 60
    spinners = [multiprocessing.Process(target=_spin, args=(budget,), daemon=True)
                for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    failures = 0
    try:
        with RabbitMQ() as rabbit:
            for index in range(args.attempts):
                ok, what = _attempt(rabbit, index, args.messages, args.timeout)
                failures += not ok
                print(f"attempt {index + 1}/{args.attempts}: {what}", flush=True)
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join(10)
    print(f"{failures} of {args.attempts} attempts failed ({args.busy} busy processes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
