#!/usr/bin/env python3
"""Send messages in batches, each batch in one transaction: the messages of a batch
reach the queue together when it is committed, and the next transaction is declared
after that.

    python examples/tx_send.py [-a localhost:5672/examples] [-m 100] [-b 10]

It needs a broker with transactions: one that refuses the declare is told so, and it
exits 1 (proton's waits for ever).
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


class TxSend(MessagingHandler, TransactionHandler):
    def __init__(self, url, messages, batch_size):
        super().__init__()
        self.server, self.address = split_url(url)
        self.total = messages
        self.batch_size = batch_size
        self.committed = 0      # messages in committed transactions
        self.current_batch = 0  # messages sent in the open transaction
        self.transaction = None
        self.exit_status = 0

    def on_start(self, event):
        self.container = event.container
        self.conn = self.container.connect(self.server)
        self.sender = self.container.create_sender(self.conn, self.address)
        self.container.declare_transaction(self.conn, handler=self)

    def on_transaction_declared(self, event):
        self.transaction = event.transaction
        self.send()

    def on_transaction_declare_failed(self, event):
        print("transaction declare failed:", event.transaction.failure, file=sys.stderr)
        self.exit_status = 1
        self.conn.close()

    def on_sendable(self, event):
        self.send()

    def send(self):
        while (self.transaction is not None and self.sender.credit
               and self.committed + self.current_batch < self.total):
            seq = self.committed + self.current_batch + 1
            self.transaction.send(self.sender, Message(id=seq, body={"sequence": seq}))
            self.current_batch += 1
            if self.current_batch == self.batch_size or seq == self.total:
                self.transaction.commit()
                self.transaction = None

    def on_transaction_committed(self, event):
        self.committed += self.current_batch
        self.current_batch = 0
        if self.committed == self.total:
            print("all messages committed")
            event.connection.close()
        else:
            self.container.declare_transaction(self.conn, handler=self)

    def on_disconnected(self, event):
        self.current_batch = 0  # the open transaction is gone with the connection


def main():
    parser = argparse.ArgumentParser(description="Send messages transactionally to the "
                                                 "supplied address.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which messages are sent (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=100,
                        help="number of messages to send (default %(default)s)")
    parser.add_argument("-b", "--batch-size", type=int, default=10,
                        help="number of messages in each transaction (default %(default)s)")
    opts = parser.parse_args()
    send = TxSend(opts.address, opts.messages, opts.batch_size)
    try:
        Container(send).run()
    except KeyboardInterrupt:
        pass
    sys.exit(send.exit_status)


if __name__ == "__main__":
    main()
