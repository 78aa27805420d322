#!/usr/bin/env python3
"""Send the records of a sqlite database (src_db in the current directory) as durable
messages, and delete each record once the peer has settled its message: a record leaves
the database only when it is safely elsewhere. The database work runs on a thread
(db_common.Db); its results come back as application events (on_records_loaded). When
the table is exhausted it checks again every 5 seconds.

    python examples/db_ctrl.py init src_db
    printf 'one\ntwo\n' | python examples/db_ctrl.py insert src_db
    python examples/db_send.py [-a localhost:5672/examples] [-m 0]
"""

import argparse
import queue

from db_common import Db

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import ApplicationEvent, Container, EventInjector


class Send(MessagingHandler):
    def __init__(self, url, count):
        super().__init__()
        self.url = url
        self.target = count
        self.sent = 0
        self.confirmed = 0
        self.load_count = 0
        self.recheck = None
        self.records = queue.Queue(maxsize=50)
        self.db = Db("src_db", EventInjector())

    def keep_sending(self):
        return self.target == 0 or self.sent < self.target

    def on_start(self, event):
        self.container = event.container
        self.container.selectable(self.db.injector)
        self.sender = self.container.create_sender(self.url)

    def on_sendable(self, event):
        self.send()

    def send(self):
        while self.sender.credit and not self.records.empty() and self.keep_sending():
            record = self.records.get_nowait()
            record_id = record["id"]
            # the tag names the record, so on_settled knows which one to delete
            self.sender.send(Message(id=record_id, durable=True, body=record["description"]),
                             tag=str(record_id))
            self.sent += 1
            print(f"sent message {record_id}")
        if self.keep_sending():
            self.request_records()

    def request_records(self):
        if not self.records.full():
            print("loading records...")
            self.load_count += 1
            self.db.load(self.records, event=ApplicationEvent(
                "records_loaded", link=self.sender, subject=self.load_count))

    def on_records_loaded(self, event):
        if not self.records.empty():
            self.send()
        elif event.subject == self.load_count:  # the latest load found nothing new
            print("Exhausted available data, waiting to recheck...")
            self.recheck = self.container.schedule(5, self)

    def on_timer_task(self, event):
        print("Rechecking for data...")
        self.recheck = None
        self.request_records()

    def on_settled(self, event):
        record_id = int(event.delivery.tag)
        self.db.delete(record_id)
        print(f"settled message {record_id}")
        self.confirmed += 1
        if self.confirmed == self.target:
            if self.recheck is not None:
                self.recheck.cancel()
            event.connection.close()
            self.db.close()

    def on_disconnected(self, event):
        self.db.reset()  # load again from the first record not deleted
        self.sent = self.confirmed


def main():
    parser = argparse.ArgumentParser(description="Send the records of src_db to the "
                                                 "supplied address.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which messages are sent (default %(default)s)")
    parser.add_argument("-m", "--messages", type=int, default=0,
                        help="number of messages to send; 0 sends indefinitely "
                             "(default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Send(opts.address, opts.messages)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
