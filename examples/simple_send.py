#!/usr/bin/env python3
"""Send a number of messages, as fast as the peer's credit allows, and wait until every
one is confirmed (accepted). If the connection drops before that, whatever was sent but
not confirmed counts as not sent: at-least-once, so after a reconnect it is sent again.

    python examples/simple_send.py [-a localhost:5672/examples] [-m 100]
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
        event.container.create_sender(self.url)

    def on_sendable(self, event):
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

    def on_disconnected(self, event):
        self.sent = self.confirmed  # the unconfirmed ones go again


def main():
    parser = argparse.ArgumentParser(description="Send messages to the supplied address.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which messages are sent (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to send (default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Send(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
