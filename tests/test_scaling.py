"""The work is spread evenly over the workers, sending and receiving.

Each worker's share of the messages must be within 20% of 1/N, with 2 and 4 workers:
a sender's shards are placed over the workers and it moves from shard to shard batch by
batch; a listener deals inbound connections round-robin over its workers.
"""

from __future__ import annotations

import pytest

import amqscale

COUNT = 40_000


def _shares(stats: list[dict[str, int]], key: str) -> list[float]:
    total = sum(s[key] for s in stats)
    return [s[key] / total for s in stats]


@pytest.mark.parametrize("workers", [2, 4])
def test_work_is_spread_evenly(workers: int) -> None:
    with amqscale.Container(workers=workers) as server, \
            amqscale.Container(workers=workers) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=200)
        sender = client.connect(listener.url, shards=2 * workers).open_sender("spread")
        received = 0
        for start in range(0, COUNT, 2000):  # a window's worth at a time: no self-deadlock
            sender.send_many([b"m"] * 2000)
            while received < start + 2000:
                deliveries = listener.receiver.receive_many(timeout=30)
                listener.receiver.accept_many(deliveries)
                received += len(deliveries)
        sender.flush(timeout=60)
        sent_shares = _shares(client.worker_stats(), "sent")
        received_shares = _shares(server.worker_stats(), "received")
        connections = [s["connections"] for s in server.worker_stats()]
    fair = 1 / workers
    assert connections == [2] * workers  # dealt round-robin
    for share in sent_shares + received_shares:
        assert abs(share - fair) <= 0.2 * fair, (sent_shares, received_shares)
