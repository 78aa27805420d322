#!/usr/bin/env python3
"""client.py with asyncio: a sender to the server's address, a receiver with a dynamic
source for the replies, and each request awaited in turn: send it with reply_to set to
the receiver's address, then await its answer.

    python examples/client_async.py [-a localhost:5672/examples] [REQUEST ...]

The reply receiver is `open_receiver(None, dynamic=True)`, with the address the peer
assigned in `Receiver.address`.
"""

import argparse
import asyncio

import amqscale.aio
from amqscale import Message

REQUESTS = [
    "Twas brillig, and the slithy toves",
    "Did gire and gymble in the wabe.",
    "All mimsy were the borogroves,",
    "And the mome raths outgrabe.",
]


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    amqscale's URLs carry their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


async def client(url, address, requests, timeout=30.0):
    async with amqscale.aio.Container() as container:
        conn = await container.connect(url)
        sender = await conn.open_sender(address)
        replies = await conn.open_receiver(None, dynamic=True, credit=1)
        for n, request in enumerate(requests, 1):
            await sender.send(Message(reply_to=replies.address, correlation_id=str(n),
                                      body=request))
            delivery = await replies.receive(timeout=timeout)
            delivery.accept()
            print(f"{request} => {delivery.message.body}")


def main():
    parser = argparse.ArgumentParser(description="Send requests to the supplied address "
                                                 "and print the responses.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which requests are sent (default %(default)s)")
    parser.add_argument("requests", nargs="*", help="the requests (default: a verse)")
    opts = parser.parse_args()
    asyncio.run(client(*split_url(opts.address), opts.requests or REQUESTS))


if __name__ == "__main__":
    main()
