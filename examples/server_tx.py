#!/usr/bin/env python3
"""Request/response where each request is handled in a local transaction: the reply is
sent and the request accepted inside one transaction, then it is committed, so either
both happen or neither does. Replies go over an anonymous sender when the broker offers
ANONYMOUS-RELAY, else over a sender per reply_to address.

    python examples/server_tx.py [-a localhost:5672/examples]

It needs a broker with transactions: if one refuses the declare, it says so and exits 1
(proton's waits for ever), leaving the request on the queue.
"""

import argparse
import sys

from amqscale import Message
from amqscale.handlers import MessagingHandler, TransactionHandler
from amqscale.reactor import Container


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class TxRequest(TransactionHandler):
    """One request's transaction: reply, accept the request, commit."""

    def __init__(self, response, sender, request_delivery, server):
        super().__init__()
        self.response = response
        self.sender = sender
        self.request_delivery = request_delivery
        self.server = server

    def on_transaction_declared(self, event):
        event.transaction.send(self.sender, self.response)
        event.transaction.accept(self.request_delivery)
        event.transaction.commit()

    def on_transaction_committed(self, event):
        print("Request processed successfully", flush=True)

    def on_transaction_aborted(self, event):
        print("Request processing aborted", flush=True)

    def on_transaction_declare_failed(self, event):
        print("transaction declare failed:", event.transaction.failure, file=sys.stderr)
        self.server.exit_status = 1
        self.server.conn.close()


class TxServer(MessagingHandler):
    def __init__(self, url):
        super().__init__(auto_accept=False)  # accepted in the transaction instead
        self.server, self.address = split_url(url)
        self.senders = {}
        self.relay = None
        self.exit_status = 0

    def on_start(self, event):
        self.container = event.container
        self.conn = event.container.connect(self.server, reconnect=False,
                                            desired_capabilities=["ANONYMOUS-RELAY"])
        self.receiver = event.container.create_receiver(self.conn, self.address)

    def on_connection_opened(self, event):
        if "ANONYMOUS-RELAY" in (event.connection.remote_offered_capabilities or ()):
            self.relay = self.container.create_sender(self.conn, None)

    def on_message(self, event):
        reply_to = event.message.reply_to
        sender = self.relay or self.senders.get(reply_to)
        if sender is None:
            sender = self.senders[reply_to] = self.container.create_sender(self.conn,
                                                                           reply_to)
        response = Message(address=reply_to, body=event.message.body.upper(),
                           correlation_id=event.message.correlation_id)
        self.container.declare_transaction(
            self.conn, handler=TxRequest(response, sender, event.delivery, self))


def main():
    parser = argparse.ArgumentParser(description="Answer requests in upper case, each in "
                                                 "a transaction.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which requests are received (default %(default)s)")
    opts = parser.parse_args()
    server = TxServer(opts.address)
    try:
        Container(server).run()
    except KeyboardInterrupt:
        pass
    sys.exit(server.exit_status)


if __name__ == "__main__":
    main()
