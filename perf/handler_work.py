"""The consumer perf/worker_handlers.py runs three ways: what one message costs it is the
same in each (read the id, a property and the body; count).

`Work` is an amqscale MessagingHandler: the in-worker case names it by path
("handler_work:Work"), the user-process case gives an instance to amqscale.reactor's
Container. proton-python's case runs `ProtonWork`, the same on_message on proton's
MessagingHandler.
"""

from __future__ import annotations

import time
from typing import Any

from amqscale.handlers import MessagingHandler


def work(state: Any, message: Any) -> None:
    """What the consumer does with a message (and `spin_us` of CPU, if asked)."""
    if state.spin_us:
        end = time.perf_counter() + state.spin_us * 1e-6
        while time.perf_counter() < end:
            pass
    state.count += 1
    state.bytes += len(message.body)
    state.last_id = message.id
    if message.properties and message.properties.get("k") == -1:
        state.odd += 1


class _Counting:
    """The consumer's state and callbacks, on top of either face's MessagingHandler:
    counts; with `stop_after`, calls `on_done(event)` at that many messages, and
    `on_opened(event)` once its link is open (the benchmark's clock)."""

    def __init__(self, stop_after: int = 0, on_done: Any = None, on_opened: Any = None,
                 prefetch: int = 1000, spin_us: float = 0.0) -> None:
        super().__init__(prefetch=prefetch)  # type: ignore[call-arg]
        self.spin_us = spin_us
        self.count = self.bytes = self.odd = 0
        self.last_id: Any = None
        self.stop_after = stop_after
        self.on_done = on_done
        self.on_opened = on_opened

    def on_link_opened(self, event: Any) -> None:
        if self.on_opened is not None:
            self.on_opened(event)

    def on_message(self, event: Any) -> None:
        work(self, event.message)
        if self.count == self.stop_after and self.on_done is not None:
            self.on_done(event)


class Work(_Counting, MessagingHandler):
    """The consumer on amqscale's MessagingHandler."""


def proton_work_class() -> type:
    """The same consumer on proton-python's MessagingHandler (imported only when asked)."""
    from proton.handlers import MessagingHandler as ProtonMessagingHandler

    class ProtonWork(_Counting, ProtonMessagingHandler):  # type: ignore[misc]
        pass

    return ProtonWork
