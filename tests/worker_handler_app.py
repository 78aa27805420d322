"""Handlers the in-worker tests and perf/worker_handlers.py run inside the workers.

Each records what it handled to a file of its own in `directory` (one per worker and
receiver), flushed when its link closes, so that a test can check every message was
handled exactly once without the messages crossing to the test's process.
"""

from __future__ import annotations

import os
from typing import Any

from amqscale.handlers import MessagingHandler, Reject


class Recorder(MessagingHandler):
    """Writes each message's id, one a line, to `directory`/worker-N-PID.ids."""

    def __init__(self, directory: str = "", prefetch: int = 10) -> None:
        super().__init__(prefetch=prefetch)
        self.directory = directory
        self.ids: list[str] = []
        self.path = ""
        self.started = 0
        self.opened = 0
        self.closed = 0

    def on_start(self, event: Any) -> None:
        self.started += 1
        if self.directory:
            self.path = os.path.join(
                self.directory, f"worker-{event.container.worker}-{os.getpid()}-{id(self)}.ids")

    def on_link_opened(self, event: Any) -> None:
        self.opened += 1

    def on_message(self, event: Any) -> None:
        self.ids.append(str(event.message.id))

    def on_link_closed(self, event: Any) -> None:
        self.closed += 1
        self.flush()

    def flush(self) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write("".join(i + "\n" for i in self.ids))
            self.ids = []


class FailOnce(Recorder):
    """Raises on the message whose body is `bad`, the first time any worker sees it (a
    marker file in `directory` says it was): released, it is then handled elsewhere."""

    def __init__(self, directory: str = "", bad: str = "boom") -> None:
        super().__init__(directory)
        self.bad = bad

    def on_message(self, event: Any) -> None:
        if event.message.body == self.bad:
            try:
                fd = os.open(os.path.join(self.directory, "failed"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                self.flush()  # what it handled before stays recorded
                raise ValueError(f"cannot handle {self.bad!r}")
        super().on_message(event)


class RejectOdd(Recorder):
    """Rejects messages with an odd id (raising Reject), accepts the others."""

    def on_message(self, event: Any) -> None:
        if int(event.message.id) % 2:
            raise Reject()
        super().on_message(event)


class Counter:
    """Not a MessagingHandler: accepts nothing by itself; settles by hand."""

    def __init__(self) -> None:
        self.seen = 0

    def on_message(self, event: Any) -> None:
        self.seen += 1
        event.delivery.accept()


def make_recorder(directory: str = "") -> Recorder:
    """A factory, named by path like a class."""
    return Recorder(directory)


class Sizes(Recorder):
    """Records "id:body length" for each message."""

    def on_message(self, event: Any) -> None:
        self.ids.append(f"{event.message.id}:{len(event.message.body)}")


class Batcher(Recorder):
    """Writes what it handled out from a timer every `interval` s (as a consumer that
    batches its writes would), not per message; the file `<path>.flushes` says how many
    timer flushes wrote something."""

    def __init__(self, directory: str = "", interval: float = 0.02) -> None:
        super().__init__(directory)
        self.interval = interval
        self.flushes = 0

    def on_start(self, event: Any) -> None:
        super().on_start(event)
        event.container.schedule(self.interval)

    def on_message(self, event: Any) -> None:
        self.ids.append(str(event.message.id))

    def on_timer_task(self, event: Any) -> None:
        if self.ids:
            self.flushes += 1
            self.flush()
        event.container.schedule(self.interval)

    def on_link_closed(self, event: Any) -> None:
        super().on_link_closed(event)
        with open(self.path + ".flushes", "w") as f:
            f.write(str(self.flushes))


class Ticker:
    """Schedules a tick a second from on_start, and again from each tick; the second
    tick raises."""

    def __init__(self) -> None:
        self.ticks = 0
        self.tasks: list[Any] = []

    def on_start(self, event: Any) -> None:
        self.tasks.append(event.container.schedule(1.0))

    def on_message(self, event: Any) -> None:
        event.delivery.accept()

    def on_timer_task(self, event: Any) -> None:
        assert event.task is self.tasks[-1]
        self.ticks += 1
        if self.ticks == 2:
            raise RuntimeError("the second tick fails")
        self.tasks.append(event.container.schedule(1.0))
