#!/usr/bin/env python3
"""Receive only the messages whose colour property is 'green': the receiver asks the
broker for them with a JMS-style selector on its source, so the others stay on the
queue for another receiver.

    python examples/selected_recv.py [-a localhost:5672/examples] [-m 0]

It needs a broker that applies selectors (RabbitMQ 3.10, the Proton C broker and
broker.py ignore them).
"""

import argparse

from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container, Selector


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class Recv(MessagingHandler):
    def __init__(self, url, count):
        super().__init__()
        self.server, self.address = split_url(url)
        self.expected = count
        self.received = 0

    def on_start(self, event):
        conn = event.container.connect(self.server)
        event.container.create_receiver(conn, self.address,
                                        options=Selector("colour = 'green'"))

    def on_message(self, event):
        print(event.message.body)
        self.received += 1
        if self.received == self.expected:
            event.receiver.close()
            event.connection.close()


def main():
    parser = argparse.ArgumentParser(description="Receive the green messages only.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which messages are received (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=0,
                        help="number of messages to receive; 0 receives indefinitely "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Recv(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
