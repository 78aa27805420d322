#!/usr/bin/env python3
"""A toy broker, in memory: a queue per address, made when first used. Messages sent to
an address are queued there and handed to the queue's consumers round-robin as they have
credit. A receiver that asks for a dynamic source gets a fresh queue of its own, deleted
when it goes; an ordinary queue is deleted when its last consumer goes and it is empty.
It offers ANONYMOUS-RELAY: a message sent on a link with no target goes to the queue of
its own address. No persistence, no selectors, no transactions.

    python examples/broker.py [-a localhost:5672]
"""

import argparse
import collections
import uuid

from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class Queue:
    def __init__(self, dynamic=False):
        self.dynamic = dynamic
        self.messages = collections.deque()
        self.consumers = []

    def subscribe(self, consumer):
        self.consumers.append(consumer)

    def unsubscribe(self, consumer):
        """Remove a consumer; True if the queue should go now."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        return not self.consumers and (self.dynamic or not self.messages)

    def publish(self, message):
        self.messages.append(message)
        self.dispatch()

    def dispatch(self, consumer=None):
        """Give messages to `consumer` (else to all consumers) while they have credit."""
        consumers = [consumer] if consumer is not None else self.consumers
        progress = True
        while self.messages and progress:
            progress = False
            for link in consumers:
                if self.messages and link.credit:
                    link.send(self.messages.popleft())
                    progress = True


class Broker(MessagingHandler):
    def __init__(self, url):
        super().__init__()
        self.url = url
        self.queues = {}
        self.consumers = collections.defaultdict(set)  # connection -> its consumer links

    def on_start(self, event):
        self.acceptor = event.container.listen(self.url)

    def queue(self, address):
        if address not in self.queues:
            self.queues[address] = Queue()
        return self.queues[address]

    def on_connection_opening(self, event):
        event.connection.offered_capabilities = "ANONYMOUS-RELAY"

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:  # a consumer
            source = link.remote_source
            if source.dynamic:
                address = str(uuid.uuid4())
                self.queues[address] = Queue(dynamic=True)
            elif source.address:
                address = source.address
            else:
                return
            link.source.address = address
            self.queue(address).subscribe(link)
            self.consumers[event.connection].add(link)
        elif link.remote_target.address:  # a producer to one address
            link.target.address = link.remote_target.address

    def unsubscribe(self, link):
        address = link.source.address
        if address in self.queues and self.queues[address].unsubscribe(link):
            del self.queues[address]

    def on_link_closing(self, event):
        if event.link.is_sender:
            self.unsubscribe(event.link)
            self.consumers[event.connection].discard(event.link)

    def remove_stale_consumers(self, connection):
        for link in self.consumers.pop(connection, ()):
            self.unsubscribe(link)

    def on_connection_closing(self, event):
        self.remove_stale_consumers(event.connection)

    def on_disconnected(self, event):
        self.remove_stale_consumers(event.connection)

    def on_sendable(self, event):
        address = event.link.source.address
        if address in self.queues:
            self.queues[address].dispatch(event.link)

    def on_message(self, event):
        address = event.link.target.address or event.message.address  # anonymous relay
        self.queue(address).publish(event.message)


def main():
    parser = argparse.ArgumentParser(description="A toy in-memory broker.")
    parser.add_argument("-a", "--address", default="localhost:5672",
                        help="address the broker listens on (default %(default)s)")
    opts = parser.parse_args()
    try:
        Container(Broker(opts.address)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
