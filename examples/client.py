#!/usr/bin/env python3
"""Request/response, the client: it opens a sender to the server's address and a
receiver with a dynamic source, for which the peer makes up a temporary address. Once
that receiver is open its address goes in each request's reply_to; the requests go one
at a time, each after the previous response has been printed.

    python examples/client.py [-a localhost:5672/examples] [REQUEST ...]

Run it against server.py (through a broker with dynamic nodes) or server_direct.py.
"""

import argparse

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container

REQUESTS = [
    "Twas brillig, and the slithy toves",
    "Did gire and gymble in the wabe.",
    "All mimsy were the borogroves,",
    "And the mome raths outgrabe.",
]


class Client(MessagingHandler):
    def __init__(self, url, requests):
        super().__init__()
        self.url = url
        self.requests = list(requests)

    def on_start(self, event):
        self.sender = event.container.create_sender(self.url)
        self.receiver = event.container.create_receiver(self.sender.connection, None,
                                                        dynamic=True)

    def next_request(self):
        reply_to = self.receiver.remote_source.address
        if reply_to:
            self.sender.send(Message(reply_to=reply_to, body=self.requests[0]))

    def on_link_opened(self, event):
        if event.receiver == self.receiver:
            self.next_request()

    def on_message(self, event):
        print(f"{self.requests.pop(0)} => {event.message.body}")
        if self.requests:
            self.next_request()
        else:
            event.connection.close()


def main():
    parser = argparse.ArgumentParser(description="Send requests to the supplied address "
                                                 "and print the responses.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which requests are sent (default %(default)s)")
    parser.add_argument("requests", nargs="*", help="the requests (default: a verse)")
    opts = parser.parse_args()
    Container(Client(opts.address, opts.requests or REQUESTS)).run()


if __name__ == "__main__":
    main()
