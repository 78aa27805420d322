#!/usr/bin/env python3
"""Look at what is on a queue without taking it: the receiver asks for the COPY
distribution mode, so the broker sends copies and keeps the messages. It prints each
one and, once nothing has arrived for a while, closes the connection.

    python examples/queue_browser.py [-a localhost:5672/examples] [-t 1.0]

Proton's version decides it is done with `receiver.drained` (a method, never called, so
always true). Draining is no help here either: RabbitMQ 3.10 fails the link on a drain,
and the Proton C broker never answers one. So this one waits for a quiet spell.

It needs a broker that browses (RabbitMQ 3.10, the Proton C broker and broker.py consume
instead).
"""

import argparse
import time

from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container, Copy


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class Browse(MessagingHandler):
    def __init__(self, url, quiet):
        super().__init__()
        self.server, self.address = split_url(url)
        self.quiet = quiet
        self.last = time.monotonic()

    def on_start(self, event):
        self.conn = event.container.connect(self.server)
        event.container.create_receiver(self.conn, self.address, options=Copy())
        event.container.schedule(self.quiet, self)

    def on_message(self, event):
        print(event.message)
        self.last = time.monotonic()

    def on_timer_task(self, event):
        idle = time.monotonic() - self.last
        if idle >= self.quiet:
            self.conn.close()
        else:
            event.container.schedule(self.quiet - idle, self)


def main():
    parser = argparse.ArgumentParser(description="Print the messages on a queue, leaving "
                                                 "them there.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to browse (default %(default)s)")
    parser.add_argument("-t", "--timeout", type=float, default=1.0,
                        help="stop after this many seconds without a message "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Browse(opts.address, opts.timeout)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
