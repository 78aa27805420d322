#!/usr/bin/env python3
"""simple_send.py with asyncio: send the messages one after another, each `await`
returning with the message's outcome, and say so once every one is accepted. The sender's
window gives backpressure; there is no credit to watch.

    python examples/simple_send_async.py [-a localhost:5672/examples] [-m 100]
"""

import argparse
import asyncio
import sys

import amqscale.aio
from amqscale import Message


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    amqscale's URLs carry their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


async def send(url, address, total):
    async with amqscale.aio.Container() as container:
        conn = await container.connect(url)
        sender = await conn.open_sender(address)
        refused = 0
        for seq in range(1, total + 1):
            tracker = await sender.send(Message(id=seq, body={"sequence": seq}))
            if not tracker.accepted:  # rejected or released: the peer's condition says why
                print(f"message {seq}: {tracker.outcome} {tracker.condition}",
                      file=sys.stderr)
                refused += 1
        if refused == 0:
            print("all messages confirmed")
        return 1 if refused else 0


def main():
    parser = argparse.ArgumentParser(description="Send messages to the supplied address.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which messages are sent (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to send (default %(default)s)")
    opts = parser.parse_args()
    try:
        sys.exit(asyncio.run(send(*split_url(opts.address), opts.messages)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
