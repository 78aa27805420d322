#!/usr/bin/env python3
"""Receive messages into a sqlite database (dst_db in the current directory), and accept
each message only once its record is committed: a message leaves the broker only when
it is safely stored. Messages with an id at or below the highest one stored are
duplicates and are accepted at once; ones beyond the count asked for are released. The
database work runs on a thread (db_common.Db), its results come back as application
events (on_id_loaded, on_record_inserted).

    python examples/db_ctrl.py init dst_db
    python examples/db_recv.py [-a localhost:5672/examples] [-m 0]
    python examples/db_ctrl.py list dst_db
"""

import argparse

from db_common import Db

from amqscale.handlers import MessagingHandler
from amqscale.reactor import ApplicationEvent, Container, EventInjector


class Recv(MessagingHandler):
    def __init__(self, url, count):
        super().__init__(auto_accept=False)
        self.url = url
        self.expected = count
        self.received = 0
        self.accepted = 0
        self.last_id = None
        self.db = Db("dst_db", EventInjector())

    def on_start(self, event):
        self.container = event.container
        self.container.selectable(self.db.injector)
        self.db.get_id(ApplicationEvent("id_loaded"))

    def on_id_loaded(self, event):
        self.last_id = event.id
        self.container.create_receiver(self.url)

    def on_message(self, event):
        msg_id = int(event.message.id)
        if self.last_id and msg_id <= self.last_id:
            self.accept(event.delivery)  # stored already
        elif self.expected == 0 or self.received < self.expected:
            self.received += 1
            self.last_id = msg_id
            self.db.insert(msg_id, event.message.body,
                           ApplicationEvent("record_inserted", delivery=event.delivery))
            print(f"inserted message {msg_id}")
        else:
            self.release(event.delivery)  # more than we were asked for: someone else's

    def on_record_inserted(self, event):
        self.accept(event.delivery)
        self.accepted += 1
        if self.accepted == self.expected:
            event.connection.close()
            self.db.close()


def main():
    parser = argparse.ArgumentParser(description="Receive messages into dst_db.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address from which messages are received (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=0,
                        help="number of messages to receive; 0 receives indefinitely "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Recv(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
