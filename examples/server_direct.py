#!/usr/bin/env python3
"""Request/response with no broker: the server listens, and clients attach to it
directly. It answers the peer's link attaches itself (on_link_opening): a receiver with a
dynamic source is given a made-up address, and it remembers the link that serves each
address. A request's reply goes on the link whose address is its reply_to.

    python examples/server_direct.py [-a localhost:8888]

Proton's version listens on 0.0.0.0:8888 and takes no options; this one listens on
loopback unless told otherwise. Its clients: client.py and sync_client.py.
"""

import argparse
import uuid

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class Server(MessagingHandler):
    def __init__(self, url):
        super().__init__()
        self.url = url
        self.senders = {}  # address -> our sending link that serves it

    def on_start(self, event):
        print("Listening on", self.url, flush=True)
        self.acceptor = event.container.listen(self.url)

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:  # the peer is receiving
            source = link.remote_source
            if source is not None and source.dynamic:
                address = str(uuid.uuid4())
            elif source is not None and source.address:
                address = source.address
            else:
                return
            link.source.address = address
            self.senders[address] = link
        elif link.remote_target is not None:  # the peer is sending requests
            link.target.address = link.remote_target.address

    def on_link_closing(self, event):
        if event.link.is_sender:
            self.senders.pop(event.link.source.address, None)

    def on_message(self, event):
        request = event.message
        print("Received", request, flush=True)
        sender = self.senders.get(request.reply_to)
        if sender is None:
            print("No link for reply", flush=True)
            return
        sender.send(Message(address=request.reply_to, body=request.body.upper(),
                            correlation_id=request.correlation_id))


def main():
    parser = argparse.ArgumentParser(description="Answer requests in upper case, with no "
                                                 "broker in between.")
    parser.add_argument("-a", "--address", default="localhost:8888",
                        help="address to listen on (default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Server(opts.address)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
