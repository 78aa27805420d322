#!/usr/bin/env python3
"""server.py with asyncio: take requests from an address with `async for`, and answer
each in upper case to its reply_to, with its correlation_id, over one anonymous sender
(no target: the broker routes each reply by its address, which needs ANONYMOUS-RELAY).
A request is accepted once its reply is settled. Runs until Ctrl-C.

    python examples/server_async.py [-a localhost:5672/examples]
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


async def serve(url, address):
    async with amqscale.aio.Container() as container:
        conn = await container.connect(url)
        requests = await conn.open_receiver(address)
        relay = await conn.open_sender(None)
        print("Listening on", url + "/" + address, flush=True)
        async for delivery in requests:
            request = delivery.message
            print("Received", request, flush=True)
            await relay.send(Message(address=request.reply_to, body=request.body.upper(),
                                     correlation_id=request.correlation_id))
            delivery.accept()


def main():
    parser = argparse.ArgumentParser(description="Answer requests in upper case.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which requests are received (default %(default)s)")
    opts = parser.parse_args()
    try:
        asyncio.run(serve(*split_url(opts.address)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
