#!/usr/bin/env python3
"""Hello World through a broker: one connection carries a receiver and a sender on the
same address; the sender sends one message once it has credit, the receiver prints it and
the connection is closed.

    python examples/helloworld.py [-a localhost:5672/examples]
"""

import argparse

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class HelloWorld(MessagingHandler):
    def __init__(self, server, address):
        super().__init__()
        self.server = server
        self.address = address

    def on_start(self, event):
        conn = event.container.connect(self.server)
        event.container.create_receiver(conn, self.address)
        event.container.create_sender(conn, self.address)

    def on_sendable(self, event):
        event.sender.send(Message(body="Hello World!"))
        event.sender.close()  # one message is all this sender has to say

    def on_message(self, event):
        print(event.message.body)
        event.connection.close()


def main():
    parser = argparse.ArgumentParser(description="Send one message and receive it back.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="broker and address to use (default %(default)s)")
    opts = parser.parse_args()
    Container(HelloWorld(*split_url(opts.address))).run()


if __name__ == "__main__":
    main()
