"""Helpers shared by the end-to-end tests: a receiver in its own process, leak checks.

A test's sender runs in the test process; its receiver runs in a child process with its
own Container, so neither waits on the other (one thread that sends a window's worth and
then receives would stall on its own backpressure).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import psutil

import amqscale

_spawn = multiprocessing.get_context("spawn")


@dataclass
class Received:
    ids: list[Any]
    messages: list[amqscale.Message]  # only the first `keep` of them
    settled_by_sender: int  # deliveries that arrived pre-settled


def _receive(url: str | None, address: str, count: int, workers: int, shards: int,
             credit: int, keep: int, idle: float, ring_capacity: int, pipe: Pipe) -> None:
    ids: list[Any] = []
    kept: list[amqscale.Message] = []
    presettled = 0
    try:
        with amqscale.Container(workers=workers, ring_capacity=ring_capacity) as container:
            if url is None:
                listener = container.listen("amqp://127.0.0.1:0", credit=credit)
                receiver = listener.receiver
                pipe.send(("ready", listener.url))
            else:
                conn = container.connect(url, shards=shards)
                receiver = conn.open_receiver(address, credit=credit)
                pipe.send(("ready", url))
            while len(ids) < count:
                try:
                    delivery = receiver.receive(timeout=idle)
                except TimeoutError:
                    break
                message = delivery.message
                presettled += delivery.settled
                ids.append(message.id)
                # Its link (one sender's connection) may be gone: it then stays unsettled
                # at the sender, and accept() says so.
                with contextlib.suppress(amqscale.AMQPError):
                    delivery.accept()
                if len(kept) < keep:
                    kept.append(message)
            receiver.close()
        pipe.send(("done", Received(ids, kept, presettled)))
    except BaseException as exc:  # report, don't hide: the test shows it
        pipe.send(("error", repr(exc)))


class ChildReceiver:
    """Receives `count` messages in a child process; `.url` is where to send them."""

    def __init__(self, url: str | None, address: str, count: int, *, workers: int = 1,
                 shards: int = 1, credit: int = 1000, keep: int = 0, idle: float = 30.0,
                 ring_capacity: int = 8 * 1024 * 1024):
        self._pipe, child_end = _spawn.Pipe(duplex=False)
        self.process = _spawn.Process(
            target=_receive, daemon=True,
            args=(url, address, count, workers, shards, credit, keep, idle, ring_capacity,
                  child_end),
        )
        self.process.start()
        kind, value = self._next(60)
        if kind != "ready":
            raise RuntimeError(f"receiver failed to start: {value}")
        self.url: str = value

    def _next(self, timeout: float) -> tuple[str, Any]:
        if not self._pipe.poll(timeout):
            raise TimeoutError("the receiving process did not answer")
        return self._pipe.recv()  # type: ignore[no-any-return]

    def result(self, timeout: float = 300) -> Received:
        kind, value = self._next(timeout)
        self.process.join(30)
        if kind != "done":
            raise RuntimeError(f"receiver failed: {value}")
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


def shm_segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("amqscale")}


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still running after `timeout` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
