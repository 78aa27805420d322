#!/usr/bin/env python3
"""simple_send turned around: no broker, the sender listens. A receiver that connects
(simple_recv, for one) gets the messages; once all are confirmed the sender closes the
connection and stops listening.

    python examples/direct_send.py [-a localhost:5672/examples] [-m 100]
"""

import argparse

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class Send(MessagingHandler):
    def __init__(self, url, messages):
        super().__init__()
        self.url = url
        self.sent = 0
        self.confirmed = 0
        self.total = messages

    def on_start(self, event):
        self.acceptor = event.container.listen(self.url)

    def on_sendable(self, event):
        # the peer's receiving link, accepted by the container: it is our sender
        sender = event.sender
        while sender.credit and self.sent < self.total:
            seq = self.sent + 1
            sender.send(Message(id=seq, body={"sequence": seq}))
            self.sent += 1

    def on_accepted(self, event):
        self.confirmed += 1
        if self.confirmed == self.total:
            print("all messages confirmed")
            event.connection.close()
            self.acceptor.close()

    def on_disconnected(self, event):
        self.sent = self.confirmed


def main():
    parser = argparse.ArgumentParser(description="Listen, and send messages to whoever "
                                                 "connects to receive them.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to listen on (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to send (default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Send(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
