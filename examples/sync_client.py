#!/usr/bin/env python3
"""Request/response with amqscale's blocking API: each call sends a request and waits
(up to the timeout) for its response, matched by correlation_id. The replies come to a
receiver with a dynamic source, whose address the peer makes up:
`open_receiver(None, dynamic=True)`, with the address it assigned in `Receiver.address`.

    python examples/sync_client.py [-a localhost:5672/examples] [-t 5]
"""

import argparse
import itertools

import amqscale

REQUESTS = [
    "Twas brillig, and the slithy toves",
    "Did gire and gymble in the wabe.",
    "All mimsy were the borogroves,",
    "And the mome raths outgrabe.",
]


def split_url(url):
    """'host:port/address' -> ('amqp://host:port', 'address').

    The blocking face takes URLs with their scheme; proton's examples leave it out."""
    scheme, sep, rest = url.rpartition("://")
    server, _, address = rest.partition("/")
    return (scheme or "amqp") + "://" + server, address


class SyncRequestResponse:
    """call(request) -> response, one at a time, over one connection."""

    def __init__(self, conn, address, timeout):
        self.timeout = timeout
        self.sender = conn.open_sender(address, timeout=timeout)
        self.receiver = conn.open_receiver(None, dynamic=True, credit=1, timeout=timeout)
        self.reply_to = self.receiver.address
        self.ids = itertools.count(1)

    def call(self, request):
        request.reply_to = self.reply_to
        request.correlation_id = correlation_id = str(next(self.ids))
        self.sender.send(request, timeout=self.timeout).wait(timeout=self.timeout)
        while True:
            delivery = self.receiver.receive(timeout=self.timeout)
            delivery.accept()
            if delivery.message.correlation_id == correlation_id:
                return delivery.message
            # a late answer to an earlier request that timed out: not ours


def main():
    parser = argparse.ArgumentParser(description="Send requests to the supplied address "
                                                 "and print the responses.")
    parser.add_argument("-a", "--address", default="localhost:5672/examples",
                        help="address to which requests are sent (default %(default)s)")
    parser.add_argument("-t", "--timeout", type=float, default=5,
                        help="give up after this time out (default %(default)s)")
    opts = parser.parse_args()
    url, address = split_url(opts.address)

    with amqscale.Container() as container:
        conn = container.connect(url, timeout=opts.timeout)
        try:
            client = SyncRequestResponse(conn, address, opts.timeout)
            for request in REQUESTS:
                response = client.call(amqscale.Message(body=request))
                print(f"{request} => {response.body}")
        finally:
            conn.close()


if __name__ == "__main__":
    main()
