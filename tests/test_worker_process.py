"""A real worker process, through its rings: records that fit the ring, messages of any
size, max-message-size with a proton-python peer, accept() out of file descriptors."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import psutil
import pytest
from worker_process import Driven, loop_link, take_messages, worker

from amqscale.workers import protocol as p
from amqscale.workers.engine import MESSAGE_SIZE_EXCEEDED

SMALL_RING = 512 * 1024  # records of at most ~256 KiB


def send_in_parts(w: Driven, link: int, seq: int, message: bytes, fragment: int) -> None:
    for start in range(0, len(message), fragment):
        w.send(p.SendPart(link, seq, message[start:start + fragment],
                          last=start + fragment >= len(message)))


def test_event_records_fit_a_small_ring() -> None:
    with worker(SMALL_RING) as w:
        fragment = p.fragment_size(w.worker.rings.outbound.max_record_size)
        _, inbound = loop_link(w)
        bodies = [bytes([i % 256]) * 20_000 for i in range(200)]
        for start in range(0, len(bodies), 5):  # 100 KB per command record
            w.send(p.Send(1, start, bodies[start:start + 5]))
        big = bytes(range(256)) * 8_000  # 2 MB: parts both ways
        send_in_parts(w, 1, len(bodies), big, fragment)
        got = take_messages(w, inbound, len(bodies) + 1)
        assert got == [*bodies, big]
        assert all(len(e.chunk) <= fragment for e in w.of(p.DeliveryPart))
        outcomes = w.wait(lambda ev: sum(p.run_length(e.runs) for e in ev
                                         if type(e) is p.Outcomes) == len(bodies) + 1)
        assert outcomes


def proton_send(url: str, body: bytes, result: list[Any]) -> None:
    from proton import Message
    from proton.utils import BlockingConnection

    try:
        conn = BlockingConnection(url, timeout=60)
        try:
            conn.create_sender("q").send(Message(body=body))
        finally:
            conn.close()
        result.append("sent")
    except Exception as exc:
        result.append(exc)


def test_a_message_larger_than_a_record_from_proton_python_arrives_in_parts() -> None:
    with worker() as w:  # the default ring: records of at most 4 MiB
        w.send(p.Listen(1, "127.0.0.1", 0, "srv"))
        port = w.wait_for(p.Listening).port
        body = b"m" * (6 * 1024 * 1024)
        result: list[Any] = []
        sender = threading.Thread(target=proton_send,
                                  args=(f"127.0.0.1:{port}", body, result))
        sender.start()
        inbound = w.wait_for(p.LinkOpened, inbound=True).link
        (payload,) = take_messages(w, inbound, 1, timeout=60)
        sender.join(60)
        assert result == ["sent"]
        assert body in payload  # the AMQP encoding of a message with that body
        assert len(w.of(p.DeliveryPart)) >= 6


def test_a_message_over_the_listeners_limit_ends_its_link_not_the_worker() -> None:
    with worker() as w:
        w.send(p.Listen(1, "127.0.0.1", 0, "srv", max_message_size=100_000))
        port = w.wait_for(p.Listening).port
        result: list[Any] = []
        sender = threading.Thread(target=proton_send,
                                  args=(f"127.0.0.1:{port}", b"x" * 300_000, result))
        sender.start()
        closed = w.wait_for(p.LinkClosed)
        assert closed.condition.name == MESSAGE_SIZE_EXCEEDED
        sender.join(60)
        assert result and result[0] != "sent"  # proton-python saw its link detached
        # The worker goes on: a link of its own still flows.
        _, inbound = loop_link(w, listener=2, conn=2, link=2)
        w.send(p.Send(2, 0, [b"after"]))
        assert take_messages(w, inbound, 1) == [b"after"]


def test_fd_exhaustion_in_accept_pauses_the_listener_and_serves_the_others() -> None:
    with worker() as w:
        port, inbound = loop_link(w)
        process = psutil.Process(w.pid)
        soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
        clients: list[socket.socket] = []
        try:
            process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + 2, hard))
            for _ in range(10):  # more connections than the worker has fds for
                clients.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.3)
            assert w.alive()
            w.send(p.Send(1, 0, [b"while out of fds"]))
            assert take_messages(w, inbound, 1) == [b"while out of fds"]
        finally:
            for client in clients:
                client.close()
            process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        # The listener is watched again: a new peer is served.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as peer:
            peer.sendall(b"AMQP\x00\x01\x00\x00")
            assert peer.recv(8) == b"AMQP\x00\x01\x00\x00"
        assert w.alive()


@pytest.mark.parametrize("command", [
    p.OpenLink(9, 1, "bad", True, p.Terminus("q"), p.Terminus("q", expiry_policy="bad")),
    p.Send(1, 0, [b"ok"]),  # a control: the worker still works
])
def test_a_failing_command_does_not_end_the_worker(command: p.Command) -> None:
    with worker() as w:
        _, inbound = loop_link(w)
        w.send(command)
        w.send(p.Send(1, 0, [b"later"]))
        assert take_messages(w, inbound, 1)[-1] in (b"ok", b"later")
        if isinstance(command, p.OpenLink):
            closed = w.wait_for(p.LinkClosed, link=9)
            assert closed.condition.name == "amqscale:internal-error"
            assert "127.0.0.1" in closed.condition.description


def test_a_huge_message_in_parts_does_not_hold_up_another_link() -> None:
    with worker() as w:
        fragment = p.fragment_size(w.worker.rings.outbound.max_record_size)
        _, big_inbound = loop_link(w)
        w.send(p.OpenLink(2, 1, "small", True, p.Terminus("q"), p.Terminus("q")))
        small_inbound = w.wait_for(p.LinkOpened, name="small", inbound=True).link
        send_in_parts(w, 1, 0, b"h" * (24 * fragment), fragment)
        w.send(p.Send(2, 0, [b"small"]))
        assert take_messages(w, small_inbound, 1, settle=False) == [b"small"]
        last = [e for e in w.of(p.DeliveryPart) if e.last]
        assert not last, "the small message waited for the whole large one"
        assert len(take_messages(w, big_inbound, 1)[0]) == 24 * fragment
