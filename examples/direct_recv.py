#!/usr/bin/env python3
"""simple_recv turned around: no broker, the receiver listens. A sender that connects
(simple_send, for one) delivers to it; after the expected number it closes the link and
the connection and stops listening.

    python examples/direct_recv.py [-a localhost:5672/examples] [-m 100]
"""

import argparse

from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class Recv(MessagingHandler):
    def __init__(self, url, count):
        super().__init__()
        self.url = url
        self.expected = count
        self.received = 0

    def on_start(self, event):
        self.acceptor = event.container.listen(self.url)

    def on_message(self, event):
        msg_id = event.message.id
        if isinstance(msg_id, int) and msg_id <= self.received:
            return  # a duplicate of one already printed
        if self.expected == 0 or self.received < self.expected:
            print(event.message.body)
            self.received += 1
            if self.received == self.expected:
                event.receiver.close()
                event.connection.close()
                self.acceptor.close()


def main():
    parser = argparse.ArgumentParser(description="Listen, and print the messages sent to us.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to listen on (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to receive; 0 receives indefinitely "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Recv(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
