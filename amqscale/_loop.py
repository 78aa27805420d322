"""The driver on an asyncio event loop: no thread, no thread hop per message.

A :class:`LoopBinding` runs a :class:`~amqscale._driver.Driver` started without its
threads. The workers' event-ring eventfds are watched with ``loop.add_reader`` (the ring
stays parked, so a worker's publication wakes the loop; the worker holds back a second
wake-up within its WAKE_INTERVAL), their pidfds too (a worker's exit is seen as it
happens, its last records applied first), and the linger pass that hands partial batches
over is a ``loop.call_later``. A wait is a future resolved when its predicate turns true
after events were applied (the core's observer says which state changed, so only the
waits keyed on it are checked), or failed at its deadline by ``loop.call_at``.

Everything runs on the loop's thread; the lock the driver takes is then never contended.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from ._driver import LINGER, Driver
from ._ops import Steps, Wait
from ._supervisor import WorkerHandle
from .core import ReceiverLink, SenderLink, WorkerSlot
from .errors import ContainerClosed

T = TypeVar("T")


class _Waiter:
    __slots__ = ("ready", "future")

    def __init__(self, ready: Callable[[], bool], future: asyncio.Future[None]) -> None:
        self.ready = ready
        self.future = future


class LoopBinding:
    """Runs `driver` on `loop`: reads its event rings as they fill, waits as futures."""

    def __init__(self, driver: Driver, loop: asyncio.AbstractEventLoop) -> None:
        self.driver = driver
        self.loop = loop
        self.closed = False
        self._waiters: dict[object, list[_Waiter]] = {}  # by key; None: any change
        self._touched: set[object] = set()
        self._check_pending = False
        self._awaiting_room: dict[int, bool] = {}  # worker index -> watching its eventfd
        driver.binding = self
        driver.linger = _LoopLinger(self)
        driver.core.observer = self._observe
        for handle in driver.handles:
            if handle.dead:
                continue
            loop.add_reader(handle.rings.inbound.fileno(), self._readable)
            if handle.pidfd is not None:
                loop.add_reader(handle.pidfd, self._exited, handle)
        self._readable()  # what was published before the readers were added

    # ---- events in --------------------------------------------------------------------------

    def _readable(self) -> None:
        """An event ring's eventfd fired: apply every record, then park again."""
        driver = self.driver
        if self.closed:
            return
        for handle in driver.handles:
            if not handle.dead:
                handle.rings.inbound.unpark(drain=True)
        try:
            driver.pump(0)
        except Exception:  # an event that failed to apply: the others were applied
            traceback.print_exc()
        for handle in driver.handles:
            if not handle.dead and handle.rings.inbound.park():
                self.loop.call_soon(self._readable)  # published meanwhile
                return

    def _exited(self, handle: WorkerHandle) -> None:
        """A worker's pidfd fired: apply its last records, then report it dead."""
        loop = self.loop
        if handle.pidfd is not None:
            loop.remove_reader(handle.pidfd)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(handle.rings.inbound.fileno())
        handle.exit_seen = True
        driver = self.driver
        with driver.lock:
            if driver.closed or handle.dead:
                return
            try:
                driver._apply(handle)
            except Exception:
                traceback.print_exc()
            driver.supervisor.check_alive(handle)
            if handle.dead:
                driver._worker_died(handle)

    def forget(self, old: WorkerHandle) -> None:
        """A dead worker is being replaced: stop watching its fds (before they close)."""
        loop = self.loop
        for fd in (old.pidfd, old.rings.inbound.fileno()):
            if fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
        if self._awaiting_room.pop(old.index, False):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(old.rings.outbound.fileno())

    def watch(self, new: WorkerHandle) -> None:
        """Watch the worker that took a dead one's place."""
        self.loop.add_reader(new.rings.inbound.fileno(), self._readable)
        if new.pidfd is not None:
            self.loop.add_reader(new.pidfd, self._exited, new)
        self.loop.call_soon(self._readable)

    def _observe(self, target: object, event: object) -> None:
        """The core applied an event to `target`: check the waits on it soon."""
        self._touched.add(target)
        if not self._check_pending:
            self._check_pending = True
            self.loop.call_soon(self._check)

    def _check(self) -> None:
        self._check_pending = False
        touched, self._touched = self._touched, set()
        waiters = self._waiters
        if any(type(t) is WorkerSlot for t in touched):
            keys: list[object] = list(waiters)  # a worker died: anything may be ready
        else:
            keys = [None]
            for target in touched:
                keys.append(target)
                if type(target) is SenderLink:
                    keys.append(target.sender)
                    if target.sender.listener is not None:  # a remote receiver attached
                        keys.append(target.sender.listener)  # (Listener.accept_sender)
                elif type(target) is ReceiverLink:
                    keys.append(target.receiver)
        for key in keys:
            for waiter in waiters.get(key, ()):
                if not waiter.future.done() and waiter.ready():
                    waiter.future.set_result(None)

    # ---- commands out -----------------------------------------------------------------------

    def write_when_room(self, slot: WorkerSlot) -> None:
        """`slot`'s command ring is full (its worker is behind): write what is queued for
        it once the worker frees room, woken by the ring's space eventfd, so that the loop
        never waits in a write."""
        index = slot.index
        if index in self._awaiting_room or self.closed:
            return
        ring = self.driver.handles[index].rings.outbound
        if ring.park(self.driver.max_record_size):
            self._awaiting_room[index] = False
            self.loop.call_soon(self._room, index)  # room came meanwhile
        else:
            self._awaiting_room[index] = True
            self.loop.add_reader(ring.fileno(), self._room, index)

    def awaits_room(self, slot: WorkerSlot) -> bool:
        """Is `slot`'s queue waiting for room (write_when_room)? Then it is not written
        before: that would reset the flag that asks the worker to wake us."""
        return slot.index in self._awaiting_room

    def _room(self, index: int) -> None:
        watching = self._awaiting_room.pop(index, None)
        if watching is None or self.closed:
            return
        driver = self.driver
        ring = driver.handles[index].rings.outbound
        if watching:
            self.loop.remove_reader(ring.fileno())
        ring.unpark()
        try:
            with driver.lock:
                driver.write(driver.core.slots[index])  # full again: watched again
        except Exception:  # never die: the calls that wait see the state this left
            traceback.print_exc()

    # ---- waiting ----------------------------------------------------------------------------

    async def wait(self, wait: Wait, deadline: float | None, key: object = None) -> None:
        """Until `wait.ready()`; TimeoutError at `deadline` (loop time). A key names the
        state whose events can make it ready (None: any)."""
        if wait.ready():
            return
        driver = self.driver
        self._check_open()
        driver.flush(wait.settlements)
        if wait.ready():
            return
        future: asyncio.Future[None] = self.loop.create_future()
        waiter = _Waiter(wait.ready, future)
        waiting = self._waiters.setdefault(key, [])
        waiting.append(waiter)
        timer = None
        if deadline is not None:
            timer = self.loop.call_at(deadline, _expire, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            waiting.remove(waiter)
            if not waiting and self._waiters.get(key) is waiting:
                del self._waiters[key]

    async def run(self, steps: Steps[T], timeout: float | None, key: object = None) -> T:
        """Run `steps` (``amqscale._ops``) on the loop, all of it within `timeout`."""
        deadline = None if timeout is None else self.loop.time() + timeout
        outcome: tuple[bool, Any] = (True, None)  # (ok, the value sent or the error thrown)
        while True:
            try:
                ok, value = outcome
                wait = steps.send(value) if ok else steps.throw(value)
            except StopIteration as done:
                return done.value
            try:
                await self.wait(wait, deadline if wait.bounded else None, key)
                outcome = (True, None)
            except TimeoutError:
                outcome = (False, TimeoutError(
                    f"timed out after {timeout} s waiting for {wait.what}"))
            except BaseException as exc:  # cancelled included: the steps undo their part
                outcome = (False, exc)

    def _check_open(self) -> None:
        if self.closed:
            raise ContainerClosed("the Container is closed")
        self.driver.check_open()

    # ---- closing ----------------------------------------------------------------------------

    def detach(self) -> None:
        """Stop watching the workers' fds and fail every wait with ContainerClosed (before
        the driver closes them)."""
        if self.closed:
            return
        self.closed = True
        self.driver.linger.stop()
        for index, watching in self._awaiting_room.items():
            if watching:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(self.driver.handles[index].rings.outbound.fileno())
        self._awaiting_room.clear()
        for handle in self.driver.handles:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(handle.rings.inbound.fileno())
            if handle.pidfd is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(handle.pidfd)
        for waiting in self._waiters.values():
            for waiter in waiting:
                if not waiter.future.done():
                    waiter.future.set_exception(ContainerClosed("the Container is closed"))


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _LoopLinger:
    """The linger pass as a loop callback: partial batches go LINGER after they start."""

    def __init__(self, binding: LoopBinding) -> None:
        self._binding = binding
        self._timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        if self._timer is None and not self._binding.closed:
            self._timer = self._binding.loop.call_later(LINGER, self._pass)

    def _pass(self) -> None:
        self._timer = None
        try:
            self._binding.driver.linger_pass(timeout=None)  # a full ring: write_when_room
        except Exception:  # never die: the calls that wait see the state this left
            traceback.print_exc()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def loop_binding(driver: Driver) -> LoopBinding:
    binding: Any = driver.binding
    assert isinstance(binding, LoopBinding)
    return binding
