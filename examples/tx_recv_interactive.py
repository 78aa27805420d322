#!/usr/bin/env python3
"""Drive a transactional receiver from the keyboard: the container runs on a thread of
its own, and each line typed on stdin ('fetch', 'commit', 'abort', 'quit') goes to it as
an application event through an EventInjector, the one thread-safe way in. Each
event's name picks the handler method (on_fetch, on_commit, ...).

    python examples/tx_recv_interactive.py [-a localhost:5672/examples]

Proton's version always uses localhost:5672 and "examples"; -a is added here. It needs a
broker with transactions: if one refuses the declare, it says so, and 'quit' (or the end
of input) exits 1.
"""

import argparse
import sys
import threading

from amqscale.handlers import MessagingHandler, TransactionHandler
from amqscale.reactor import ApplicationEvent, Container, EventInjector


def split_url(url):
    """'host:port/address' -> ('host:port', 'address'); a scheme in front is kept."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return scheme + sep + server, address


class TxRecv(MessagingHandler, TransactionHandler):
    def __init__(self, url):
        super().__init__(prefetch=0, auto_accept=False)
        self.server, self.address = split_url(url)
        self.transaction = None
        self.exit_status = 0

    def on_start(self, event):
        self.container = event.container
        self.conn = self.container.connect(self.server)
        self.receiver = self.container.create_receiver(self.conn, self.address)
        self.container.declare_transaction(self.conn, handler=self,
                                           settle_before_discharge=True)

    def on_message(self, event):
        print(event.message.body, flush=True)
        self.transaction.accept(event.delivery)

    def on_transaction_declared(self, event):
        self.transaction = event.transaction
        print("transaction declared", flush=True)

    def on_transaction_declare_failed(self, event):
        print("transaction declare failed:", event.transaction.failure, file=sys.stderr,
              flush=True)
        self.exit_status = 1
        self.conn.close()

    def on_transaction_committed(self, event):
        print("transaction committed", flush=True)
        self.container.declare_transaction(self.conn, handler=self)

    def on_transaction_aborted(self, event):
        print("transaction aborted", flush=True)
        self.container.declare_transaction(self.conn, handler=self)

    # the application events, one per command typed

    def on_fetch(self, event):
        self.receiver.flow(1)

    def on_commit(self, event):
        self.transaction.commit()

    def on_abort(self, event):
        self.transaction.abort()

    def on_quit(self, event):
        self.receiver.close()
        self.conn.close()


def main():
    parser = argparse.ArgumentParser(description="Fetch, commit and abort from the keyboard.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which messages are received (default %(default)s)")
    opts = parser.parse_args()

    recv = TxRecv(opts.address)
    container = Container(recv)
    events = EventInjector()
    container.selectable(events)
    thread = threading.Thread(target=container.run, daemon=True)
    thread.start()

    print("Enter 'fetch', 'commit', 'abort' or 'quit'", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command:
                events.trigger(ApplicationEvent(command))
            if command == "quit":
                break
    except KeyboardInterrupt:
        pass
    events.close()
    thread.join(timeout=10)
    sys.exit(recv.exit_status)


if __name__ == "__main__":
    main()
