#!/usr/bin/env python3
"""Receive messages in batches, accepting each batch in one transaction. The receiver
grants credit itself (prefetch=0): a batch's worth when each transaction is declared, so
no message arrives outside a transaction.

    python examples/tx_recv.py [-a localhost:5672/examples] [-m 100] [-b 10]

It needs a broker with transactions: one that refuses the declare is told so, and it
exits 1 (proton's waits for ever).
"""

import argparse
import sys

from amqscale.handlers import MessagingHandler, TransactionHandler
from amqscale.reactor import Container


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class TxRecv(MessagingHandler, TransactionHandler):
    def __init__(self, url, messages, batch_size):
        super().__init__(prefetch=0, auto_accept=False)
        self.server, self.address = split_url(url)
        self.expected = messages
        self.batch_size = batch_size
        self.current_batch = 0
        self.committed = 0
        self.transaction = None
        self.exit_status = 0

    def on_start(self, event):
        self.container = event.container
        self.conn = self.container.connect(self.server)
        self.receiver = self.container.create_receiver(self.conn, self.address)
        self.container.declare_transaction(self.conn, handler=self)

    def on_transaction_declared(self, event):
        self.transaction = event.transaction
        self.receiver.flow(self.batch_size)

    def on_transaction_declare_failed(self, event):
        print("transaction declare failed:", event.transaction.failure, file=sys.stderr)
        self.exit_status = 1
        self.conn.close()

    def on_message(self, event):
        print(event.message.body)
        self.transaction.accept(event.delivery)
        self.current_batch += 1
        if (self.current_batch == self.batch_size
                or self.committed + self.current_batch == self.expected):
            self.transaction.commit()
            self.transaction = None

    def on_transaction_committed(self, event):
        self.committed += self.current_batch
        self.current_batch = 0
        if self.expected == 0 or self.committed < self.expected:
            self.container.declare_transaction(self.conn, handler=self)
        else:
            event.connection.close()

    def on_disconnected(self, event):
        self.current_batch = 0


def main():
    parser = argparse.ArgumentParser(description="Receive messages, accepting them in "
                                                 "transactions.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which messages are received (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to receive; 0 receives indefinitely "
                             "(default %(default)s)")
    parser.add_argument("-b", "--batch-size", type=int, default=10,
                        help="number of messages in each transaction (default %(default)s)")
    opts = parser.parse_args()
    recv = TxRecv(opts.address, opts.messages, opts.batch_size)
    try:
        Container(recv).run()
    except KeyboardInterrupt:
        pass
    sys.exit(recv.exit_status)


if __name__ == "__main__":
    main()
