#!/usr/bin/env python3
"""Hello World with no broker: the container listens and connects to itself. The message
goes out on the outgoing connection and arrives on the accepted one; once it is accepted
the connection is closed, and when that is done the listener is closed too, which lets
run() return.

    python examples/helloworld_direct.py [-a localhost:8888/examples]
"""

import argparse

from amqscale import Message
from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class HelloWorld(MessagingHandler):
    def __init__(self, url):
        super().__init__()
        self.url = url

    def on_start(self, event):
        self.acceptor = event.container.listen(self.url)
        event.container.create_sender(self.url)

    def on_sendable(self, event):
        event.sender.send(Message(body="Hello World!"))
        event.sender.close()

    def on_message(self, event):
        print(event.message.body)

    def on_accepted(self, event):
        event.connection.close()

    def on_connection_closed(self, event):
        self.acceptor.close()


def main():
    parser = argparse.ArgumentParser(description="Send one message to ourselves.")
    parser.add_argument("-a", "--address", default="localhost:8888/examples",
                        help="where to listen, and the address to send to "
                             "(default %(default)s)")
    opts = parser.parse_args()
    Container(HelloWorld(opts.address)).run()


if __name__ == "__main__":
    main()
