#!/usr/bin/env python3
"""helloworld.py with asyncio: open a receiver and a sender on one address, send one
message (the await returns once the broker has settled it), take it back and print it.

    python examples/helloworld_async.py [-a localhost:5672/examples]
"""

import argparse
import asyncio

import amqscale.aio
from amqscale import Message


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    amqscale's URLs carry their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


async def hello(url, address):
    async with amqscale.aio.Container() as container:
        conn = await container.connect(url)
        receiver = await conn.open_receiver(address, credit=1)
        sender = await conn.open_sender(address)
        await sender.send(Message(body="Hello World!"))
        async for delivery in receiver:
            print(delivery.message.body)
            delivery.accept()
            break


def main():
    parser = argparse.ArgumentParser(description="Send one message and receive it back.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="broker and address to use (default %(default)s)")
    opts = parser.parse_args()
    asyncio.run(hello(*split_url(opts.address)))


if __name__ == "__main__":
    main()
