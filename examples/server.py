#!/usr/bin/env python3
"""Request/response, the server, through a broker: it receives requests on its address
and answers each with the body in upper case, sent to the request's reply_to with its
correlation_id. All replies go over one sender with no target ("anonymous"): the broker
routes each by the message's own address, which it can only do if it offers the
ANONYMOUS-RELAY capability. A broker that does not is told so, and the server exits 1.

    python examples/server.py [-a localhost:5672/examples]
"""

import argparse
import sys

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class Server(MessagingHandler):
    def __init__(self, url):
        super().__init__()
        self.url = url
        self.server, self.address = split_url(url)
        self.exit_status = 0

    def on_start(self, event):
        print("Listening on", self.url, flush=True)
        self.conn = event.container.connect(self.server,
                                            desired_capabilities="ANONYMOUS-RELAY")

    def on_connection_opened(self, event):
        offered = event.connection.remote_offered_capabilities or ()
        if "ANONYMOUS-RELAY" in offered:
            self.receiver = event.container.create_receiver(self.conn, self.address)
            self.relay = event.container.create_sender(self.conn, None)
        else:
            print("Server needs a broker which supports ANONYMOUS-RELAY", file=sys.stderr)
            self.exit_status = 1
            event.connection.close()

    def on_message(self, event):
        request = event.message
        print("Received", request, flush=True)
        self.relay.send(Message(address=request.reply_to, body=request.body.upper(),
                                correlation_id=request.correlation_id))


def main():
    parser = argparse.ArgumentParser(description="Answer requests in upper case.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which requests are received (default %(default)s)")
    opts = parser.parse_args()
    server = Server(opts.address)
    try:
        Container(server).run()
    except KeyboardInterrupt:
        pass
    sys.exit(server.exit_status)


if __name__ == "__main__":
    main()
