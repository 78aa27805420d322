"""Running `amqscale send` and `amqscale receive` against amqscale's Container.

One Container with one worker and one connection (or, with `receive --recv-listen`, a
listener) per run. `run_send` and `run_receive` take the parsed Namespace and return the
exit status: 0 when the run did what was asked; 1 (RunFailed) when it ran and failed (a
message not accepted, fewer messages than `--count`, a link or connection lost); 2
(BadInput) for bad input or when the peer cannot be reached, before anything is sent;
130 when interrupted. Each failure is one line on stderr. The top layer of
amqscale.clients: it uses the options (amqscale.clients.options) and the `--log-msgs`
formats (amqscale.clients.formats).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..container import Connection, Container
from ..errors import AMQPError, LinkDetached
from ..links import Delivery, Receiver, Sender, Tracker
from ..message import Message
from ..url import parse_url
from .formats import message_logger
from .options import (
    RETRIES,
    BadInput,
    Endpoint,
    MessagePlan,
    endpoint,
    message_plan,
    source,
    target,
)

DRAIN_TIMEOUT = 10.0  # seconds a peer has to answer a drain (receive with -c 0, no -t)
CLOSE_TIMEOUT = 5.0  # seconds for a peer to confirm a detach
CONNECT_ERRORS = (AMQPError, OSError, ValueError, TypeError, NotImplementedError)
RUN_ERRORS = (AMQPError, OSError)

T = TypeVar("T")


class RunFailed(Exception):
    """The run went wrong once started: exit status 1."""


# ---- both commands --------------------------------------------------------------------------


class Pacer:
    """--duration: the n-th of `count` messages goes at start + n * duration / count."""

    def __init__(self, duration: float, count: int) -> None:
        self.interval = duration / count if duration and count else 0.0
        self.start = time.monotonic()

    def wait(self, number: int) -> None:
        if self.interval:
            time.sleep(max(0.0, self.start + number * self.interval - time.monotonic()))


def _setup(what: str, step: Callable[[], T]) -> T:
    """Connecting and attaching: any failure is BadInput (exit 2, nothing sent yet)."""
    try:
        return step()
    except AMQPError as exc:
        raise BadInput(_cli_words(str(exc))) from None  # it names the peer, no password
    except CONNECT_ERRORS as exc:
        raise BadInput(f"{what}: {_cli_words(str(exc))}") from None


def _cli_words(text: str) -> str:
    """amqscale's errors name connect()'s arguments: these name the options."""
    return text.replace("allow_insecure_mechanisms=True", "--conn-allow-insecure-mechs")


def _connect(container: Container, where: Endpoint) -> Connection:
    url = "the connect.json URL" if where.url is None else str(parse_url(where.url))
    return _setup(f"cannot connect to {url}",
                  lambda: container.connect(where.url, **where.options))


def _library_logging(level: str | None) -> None:
    if level == "TRANSPORT_FRM":
        os.environ["PN_TRACE_FRM"] = "1"  # before the Container: its workers read it
    elif level is not None:
        logging.basicConfig(level=level)


def _command(name: str, body: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """`body` with its failures as exit statuses and one stderr line each."""
    def run(args: argparse.Namespace) -> int:
        try:
            _library_logging(args.log_lib)
            return body(args)
        except BadInput as exc:
            print(f"amqscale {name}: error: {exc}", file=sys.stderr)
            return 2
        except RunFailed as exc:
            print(f"amqscale {name}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"amqscale {name}: interrupted", file=sys.stderr)
            return 130
    return run


def _close(connection: Connection | None) -> None:
    if connection is not None:
        with contextlib.suppress(*RUN_ERRORS):  # the run's status is decided already
            connection.close()


# ---- send -----------------------------------------------------------------------------------


def _send_one(sender: Sender, plan: MessagePlan, number: int, args: argparse.Namespace,
              log: Callable[[Message], None]) -> Tracker:
    message = plan.message(number)
    try:
        tracker = sender.send(message, timeout=args.timeout)
    except TimeoutError:
        raise RunFailed(f"timed out after {args.timeout} s: no credit to send message "
                        f"{number}") from None
    log(message)
    return tracker


def _send_all(sender: Sender, plan: MessagePlan, args: argparse.Namespace,
              log: Callable[[Message], None]) -> dict[int, Tracker]:
    pacer = Pacer(args.duration, args.count)
    trackers: dict[int, Tracker] = {}
    for number in range(args.count):
        pacer.wait(number)
        trackers[number] = _send_one(sender, plan, number, args, log)
    return trackers


def _flush(sender: Sender, trackers: dict[int, Tracker], timeout: float | None) -> None:
    try:
        sender.flush(timeout=timeout)
    except TimeoutError:
        waiting = sum(not t.settled for t in trackers.values())
        raise RunFailed(f"timed out after {timeout} s waiting for the outcomes of "
                        f"{waiting} of {len(trackers)} messages") from None


def _settle_all(sender: Sender, plan: MessagePlan, trackers: dict[int, Tracker],
                args: argparse.Namespace, log: Callable[[Message], None]) -> None:
    """Wait for every outcome; with --on-release retry, send the released again."""
    for _ in range(RETRIES):
        _flush(sender, trackers, args.timeout)
        released = [n for n, t in trackers.items() if t.outcome == "released"]
        if args.on_release != "retry" or not released:
            return
        for number in released:
            trackers[number] = _send_one(sender, plan, number, args, log)
    _flush(sender, trackers, args.timeout)


def send_verdict(trackers: list[Tracker], on_release: str) -> str | None:
    """Why the run failed (one line), or None: every message accepted or pre-settled
    (released ones too with --on-release ignore)."""
    allowed = {"accepted", None} | ({"released"} if on_release == "ignore" else set())
    failed = [t for t in trackers if t.outcome not in allowed]
    if not failed:
        return None
    counts = Counter(t.outcome for t in failed)
    text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    condition = next((t.condition for t in failed if t.condition is not None), None)
    reason = f" ({condition.name}: {condition.description})" if condition else ""
    if on_release == "retry" and counts["released"]:
        reason += f" (each sent {RETRIES + 1} times)"
    return f"{len(failed)} of {len(trackers)} messages not accepted: {text}{reason}"


def _send(args: argparse.Namespace) -> int:
    plan = message_plan(args)
    where = endpoint(args)
    to = target(args, where.address)
    log = message_logger(args.log_msgs)
    with Container(workers=1, container_id=args.container_id) as container:
        connection = _connect(container, where)
        sender = _setup(f"cannot attach to {where.address or 'the anonymous relay'!r}",
                        lambda: connection.open_sender(to, presettled=args.link_at_most_once))
        try:
            trackers = _send_all(sender, plan, args, log)
            _settle_all(sender, plan, trackers, args, log)
        except RUN_ERRORS as exc:
            raise RunFailed(f"sending failed: {exc}") from None
        finally:
            _close(connection)
    verdict = send_verdict(list(trackers.values()), args.on_release)
    if verdict is not None:
        raise RunFailed(verdict)
    return 0


run_send = _command("send", _send)


# ---- receive --------------------------------------------------------------------------------


class Settler:
    """Applies --action to the deliveries, --action-size at a time."""

    def __init__(self, receiver: Receiver, action: str, size: int) -> None:
        self.receiver = receiver
        self.action = action
        self.size = size
        self.pending: list[Delivery] = []

    def add(self, delivery: Delivery) -> None:
        self.pending.append(delivery)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.action == "acknowledge":
            self.receiver.accept_many(pending)
        for delivery in pending:
            if self.action == "reject":
                delivery.reject("amqp:rejected", "rejected by amqscale receive")
            elif self.action == "release":
                delivery.release()


class Replier:
    """--process-reply-to: sends each message on to its reply-to address, through the
    anonymous relay when the peer offers it, else a sender per address."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.relay = "ANONYMOUS-RELAY" in connection.remote_offered_capabilities
        self.senders: dict[str | None, Sender] = {}
        self.trackers: list[Tracker] = []

    def reply(self, message: Message) -> None:
        if not message.reply_to:
            return
        message.address = message.reply_to
        self.trackers.append(self._sender(message.reply_to).send(message))

    def _sender(self, address: str) -> Sender:
        key = None if self.relay else address
        if key not in self.senders:
            self.senders[key] = self.connection.open_sender(key)
        return self.senders[key]

    def finish(self, timeout: float | None) -> None:
        for sender in self.senders.values():
            sender.flush(timeout=timeout)
        verdict = send_verdict(self.trackers, "fail")
        if verdict is not None:
            raise RunFailed(f"replies: {verdict}")


def _next(receiver: Receiver, timeout: float | None, drain: bool) -> Delivery | None:
    """The next delivery; None when the timeout passed (or, draining, none is left) or
    the peer closed the link cleanly."""
    try:
        if not drain:
            return receiver.receive(timeout=timeout)
        try:
            return receiver.receive(timeout=0)
        except TimeoutError:
            if receiver.drain(timeout=DRAIN_TIMEOUT) == 0:
                return None
            return receiver.receive(timeout=0)
    except TimeoutError:
        return None
    except LinkDetached as exc:
        if exc.condition is None:
            return None
        raise


def _deliveries(receiver: Receiver, args: argparse.Namespace) -> Iterator[Delivery]:
    drain = args.count == 0 and args.timeout is None and not args.recv_listen
    taken = 0
    pacer = Pacer(args.duration, args.count)
    while not args.count or taken < args.count:
        delivery = _next(receiver, args.timeout, drain)
        if delivery is None:
            return
        yield delivery
        taken += 1
        pacer.wait(taken)


def _receive_all(receiver: Receiver, args: argparse.Namespace,
                 replier: Replier | None) -> int:
    log = message_logger(args.log_msgs)
    settler = Settler(receiver, args.action, args.action_size)
    received = 0
    for delivery in _deliveries(receiver, args):
        received += 1
        log(delivery.message)
        settler.add(delivery)
        if replier is not None:
            replier.reply(delivery.message)
    settler.flush()
    if replier is not None:
        replier.finish(args.timeout)
    return received


def _check_listen(args: argparse.Namespace) -> None:
    used = [name for name, value in (
        ("--recv-selector", args.recv_selector), ("--recv-browse", args.recv_browse),
        ("--recv-filter", args.recv_filter), ("--dynamic", args.dynamic),
        ("--link-durable", args.link_durable),
        ("--process-reply-to", args.process_reply_to)) if value]
    if used:
        raise BadInput(f"--recv-listen: {', '.join(used)} cannot be used with it (a "
                       "listener has no source to ask, nor links back to its peers)")


def _listen(container: Container, args: argparse.Namespace) -> Receiver:
    _check_listen(args)
    url = f"amqp://127.0.0.1:{args.recv_listen_port}"
    listener = _setup(f"cannot listen on {url}", lambda: container.listen(
        url, credit=_credit(args)))
    print(f"amqscale receive: listening on {listener.url}", file=sys.stderr, flush=True)
    return listener.receiver


def _open_receiver(connection: Connection, args: argparse.Namespace,
                   address: str | None) -> Receiver:
    wanted = source(args, address)
    receiver = _setup(f"cannot attach to {address!r}", lambda: connection.open_receiver(
        wanted, credit=_credit(args), name=args.recv_name))
    if args.dynamic:
        print(f"amqscale receive: dynamic address {receiver.address}", file=sys.stderr,
              flush=True)
    return receiver


def _end_link(receiver: Receiver, args: argparse.Namespace) -> None:
    """Release what was prefetched and not taken; a durable subscription stays."""
    if args.recv_listen:
        return  # the Container's close ends the listener
    if args.link_durable:
        receiver.detach(timeout=CLOSE_TIMEOUT)
    else:
        receiver.close(timeout=CLOSE_TIMEOUT)


def _credit(args: argparse.Namespace) -> int:
    """--reactor-prefetch, but no more than --count."""
    return min(args.reactor_prefetch, args.count) if args.count else args.reactor_prefetch


def _receive(args: argparse.Namespace) -> int:
    where = endpoint(args)
    if not args.recv_listen:
        source(args, where.address)  # checked before connecting
    with Container(workers=1, container_id=args.container_id) as container:
        connection = None if args.recv_listen else _connect(container, where)
        try:
            if connection is None:
                receiver = _listen(container, args)
                replier = None
            else:
                receiver = _open_receiver(connection, args, where.address)
                replier = Replier(connection) if args.process_reply_to else None
            received = _receive_all(receiver, args, replier)
            _end_link(receiver, args)
        except RUN_ERRORS as exc:
            raise RunFailed(f"receiving failed: {exc}") from None
        finally:
            _close(connection)
    if args.count and received < args.count:
        within = f" within the {args.timeout} s timeout" if args.timeout is not None else ""
        raise RunFailed(f"received {received} of {args.count} messages{within}")
    return 0


run_receive = _command("receive", _receive)
