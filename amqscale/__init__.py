"""amqscale: AMQP 1.0 messaging that uses every core.

A Container runs worker processes, each with its own Proton engine, and places each
connection's shards over them; messages and settlements cross between your process and the
workers through shared-memory rings. The vocabulary is Qpid Proton's:

    import amqscale

    with amqscale.Container(workers=2) as container:
        conn = container.connect("amqp://127.0.0.1:5672", shards=4)
        sender = conn.open_sender("orders")
        tracker = sender.send(amqscale.Message(body=b"...", properties={"k": 1}))
        sender.flush()                      # every outcome is in
        receiver = conn.open_receiver("orders", credit=500)
        for delivery in receiver:
            print(delivery.message)
            delivery.accept()
"""

from .codec import DecodeError
from .container import Connection, Container, Listener, Session
from .errors import (
    AMQPError,
    AuthenticationError,
    ConnectionFailed,
    ContainerClosed,
    DeliveryLost,
    HandlerFailed,
    LinkDetached,
    MessageTooLarge,
    SendFailed,
    TLSError,
    URLError,
    WindowFull,
    WorkerDied,
)
from .ipc.ring import RecordTooLarge
from .links import (
    AnonymousSender,
    Deliveries,
    Delivery,
    HandlerReceiver,
    Receiver,
    Sender,
    Tracker,
    Trackers,
    Transaction,
)
from .message import Message
from .reconnect import Backoff
from .security import TLS, ServerSASL
from .terminus import Source, Target
from .transactions import TransactionError
from .types import (
    UNDESCRIBED,
    AmqpSequence,
    AmqpValue,
    Array,
    DataSections,
    Described,
    SequenceSections,
    TypeCode,
    byte,
    char,
    decimal32,
    decimal64,
    decimal128,
    float32,
    int32,
    short,
    symbol,
    timestamp,
    ubyte,
    uint,
    ulong,
    ushort,
)

__all__ = [
    "AMQPError", "AmqpSequence", "AuthenticationError", "Backoff", "DeliveryLost",
    "ServerSASL", "TLS", "TLSError",
    "AmqpValue", "Array", "Connection", "ConnectionFailed",
    "Container", "ContainerClosed", "DataSections", "DecodeError", "Deliveries", "Delivery",
    "Described", "HandlerFailed", "HandlerReceiver", "LinkDetached", "Listener", "Message",
    "MessageTooLarge", "Receiver",
    "RecordTooLarge", "SendFailed", "Sender", "SequenceSections", "Tracker", "Trackers", "TypeCode",
    "UNDESCRIBED", "URLError", "WindowFull", "WorkerDied", "byte", "char", "decimal32", "decimal64",
    "decimal128", "float32", "int32", "short", "symbol", "timestamp", "ubyte", "uint",
    "ulong", "ushort",
    "AnonymousSender", "Session", "Source", "Target", "Transaction", "TransactionError",
]
__version__ = "0.1.0"
