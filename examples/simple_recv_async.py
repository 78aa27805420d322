#!/usr/bin/env python3
"""simple_recv.py with asyncio: `async for` over the receiver, printing each body and
accepting it, until the count is reached (0: forever). The receiver grants credit as
messages are taken.

    python examples/simple_recv_async.py [-a localhost:5672/examples] [-m 100]
"""

import argparse
import asyncio

import amqscale.aio


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    amqscale's URLs carry their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


async def receive(url, address, expected):
    received = 0
    async with amqscale.aio.Container() as container:
        conn = await container.connect(url)
        receiver = await conn.open_receiver(address)
        async for delivery in receiver:
            message = delivery.message
            delivery.accept()
            if isinstance(message.id, int) and message.id <= received:
                continue  # a duplicate of one already printed
            print(message.body)
            received += 1
            if received == expected:
                break


def main():
    parser = argparse.ArgumentParser(description="Receive messages from the supplied address.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which messages are received (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to receive; 0 receives indefinitely "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        asyncio.run(receive(*split_url(opts.address), opts.messages))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
