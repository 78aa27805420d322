#!/usr/bin/env python3
"""Hello World with amqscale's blocking API: no handler, no event loop. Every call
returns when its work is done (or raises), with a deadline.

    python examples/helloworld_blocking.py [-a localhost:5672/examples]
"""

import argparse

import amqscale


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    The blocking face takes URLs with their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


def main():
    parser = argparse.ArgumentParser(description="Send one message and receive it back.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="broker and address to use (default %(default)s)")
    opts = parser.parse_args()
    url, address = split_url(opts.address)

    with amqscale.Container() as container:
        conn = container.connect(url)
        receiver = conn.open_receiver(address, credit=1)
        sender = conn.open_sender(address)
        tracker = sender.send(amqscale.Message(body="Hello World!"))
        tracker.wait(timeout=30)  # the broker has it (its outcome is on the tracker)
        delivery = receiver.receive(timeout=30)
        print(delivery.message.body)
        delivery.accept()
        conn.close()


if __name__ == "__main__":
    main()
