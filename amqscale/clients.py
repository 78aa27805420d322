"""`amqscale send` and `amqscale receive`: functional command-line clients.

They follow the AMQ clients' QE command-line clients (cli-proton-python): the same option
names, the same `%d` message numbering, the same `NAME=VALUE` / `NAME~VALUE` items and the
same `--log-msgs` formats, so an engineer can poke a broker by hand, or script functional
tests, with amqscale alone. One Container with one worker and one connection (or, with
`receive --recv-listen`, a listener) per run. docs/clients.md describes every option.

Exit status: 0 when the run did what was asked; 1 when it ran and failed (a message not
accepted, fewer messages than `--count`, a link or connection lost); 2 for bad input or
when the peer cannot be reached, before anything is sent. Each failure is one line on
stderr. The formatters (`format_dict`, `format_json`, ...) are pure: Message -> str.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

from .container import Connection, Container
from .errors import AMQPError, LinkDetached
from .links import Delivery, Receiver, Sender, Tracker
from .message import Message
from .security import TLS
from .terminus import Source, Target
from .types import AmqpSequence, AmqpValue, DataSections, SequenceSections, int32
from .url import parse_url

DEFAULT_BROKER = "localhost:5672/examples"  # cli-proton-python's default
DRAIN_TIMEOUT = 10.0  # seconds a peer has to answer a drain (receive with -c 0, no -t)
CLOSE_TIMEOUT = 5.0  # seconds for a peer to confirm a detach
RETRIES = 10  # --on-release retry: rounds of sending the released messages again
CONTENT_TYPES = ("string", "int", "long", "float", "bool")
LOG_FORMATS = ("dict", "body", "upstream", "interop", "json", "none")
LIB_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRANSPORT_FRM")
NUMBER = re.compile(r"%[ 0-9]*d")  # cli-proton-python's message-number placeholder
PASSWORD = re.compile(r"(://[^/@\s'\"]*?:)[^/@\s'\"]*@")  # in scheme://user:password@
CONNECT_ERRORS = (AMQPError, OSError, ValueError, TypeError, NotImplementedError)
RUN_ERRORS = (AMQPError, OSError)

T = TypeVar("T")


class BadInput(Exception):
    """Bad input, or a peer that cannot be reached: exit status 2, nothing sent."""


class RunFailed(Exception):
    """The run went wrong once started: exit status 1."""


# ---- formatters: Message -> str -------------------------------------------------------------


def _content(body: Any) -> Any:
    """The body as cli-proton-python shows it (proton's `body`): the value itself."""
    if isinstance(body, AmqpValue):
        return body.value
    if isinstance(body, (AmqpSequence, DataSections, SequenceSections)):
        return list(body)
    return body


def _inferred(body: Any) -> bool:
    """proton's `inferred`: the body is data or amqp-sequence sections."""
    return isinstance(body, (bytes, bytearray, DataSections, AmqpSequence, SequenceSections))


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _strip_id(value: Any) -> Any:
    """Interop ids: cli-proton-python drops a JMS "ID:" prefix."""
    return value[3:] if isinstance(value, str) and value.startswith("ID:") else value


def _escape(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    return char if char.isprintable() else repr(char)[1:-1]


def _py_string(text: str) -> str:
    return "'" + "".join(_escape(c) for c in text) + "'"


def py_literal(value: Any) -> str:
    """A value as cli-proton-python's Formatter writes it (strings in single quotes, map
    keys as strings), readable back with ast.literal_eval; floats in full (repr)."""
    value = _content(value)
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, dict):
        items = (f"{_py_string(str(k))}: {py_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, (bytes, bytearray)):
        return _py_string(bytes(value).decode("utf-8", "backslashreplace"))
    return _py_string(str(value))


def dict_fields(message: Message) -> dict[str, Any]:
    """cli-proton-python's `--log-msgs dict` keys (sorted) and values: ttl and expiration
    in milliseconds, creation_time in seconds; None for what the message leaves out."""
    m = message
    return {
        "address": m.address, "annotations": m.annotations, "content": _content(m.body),
        "content_encoding": m.content_encoding, "content_type": m.content_type,
        "correlation_id": m.correlation_id, "creation_time": m.creation_time,
        "delivery_count": m.delivery_count, "durable": m.durable,
        "expiration": _ms(m.expiry_time), "first_acquirer": m.first_acquirer,
        "group_id": m.group_id, "group_sequence": m.group_sequence, "id": m.id,
        "inferred": _inferred(m.body), "instructions": m.instructions,
        "priority": m.priority, "properties": m.properties, "reply_to": m.reply_to,
        "reply_to_group_id": m.reply_to_group_id, "subject": m.subject,
        "ttl": _ms(m.ttl), "user_id": m.user_id,
    }


def interop_fields(message: Message) -> dict[str, Any]:
    """cli-proton-python's `--log-msgs interop` keys, in its order: AMQP's field names,
    every time in milliseconds, ids without a JMS "ID:" prefix."""
    m = message
    return {
        "address": m.address, "content": _content(m.body),
        "content-encoding": m.content_encoding, "content-type": m.content_type,
        "correlation-id": _strip_id(m.correlation_id), "creation-time": _ms(m.creation_time),
        "delivery-count": m.delivery_count, "durable": m.durable,
        "absolute-expiry-time": _ms(m.expiry_time), "first-acquirer": m.first_acquirer,
        "group-id": m.group_id, "group-sequence": m.group_sequence, "id": _strip_id(m.id),
        "priority": m.priority, "properties": m.properties, "reply-to": m.reply_to,
        "reply-to-group-id": m.reply_to_group_id, "subject": m.subject,
        "ttl": _ms(m.ttl), "user-id": m.user_id,
    }


def _literal_map(fields: dict[str, Any]) -> str:
    return "{" + ", ".join(f"'{k}': {py_literal(v)}" for k, v in fields.items()) + "}"


def format_dict(message: Message) -> str:
    """`--log-msgs dict`: one Python dict, cli-proton-python's keys."""
    return _literal_map(dict_fields(message))


def format_interop(message: Message) -> str:
    """`--log-msgs interop`: one Python dict, cli-proton-python's interop keys."""
    return _literal_map(interop_fields(message))


def _json_bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")


def jsonable(value: Any) -> Any:
    """`value` in JSON's types: bytes as UTF-8 text, else base64; UUIDs and other AMQP
    types (Described, decimals, arrays) as their str()."""
    value = _content(value)
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # plain ones: proton's subclasses have their own repr
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (bytes, bytearray)):
        return _json_bytes(bytes(value))
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _json_key(key: Any) -> Any:
    key = jsonable(key)
    return key if key is None or isinstance(key, (str, int, float, bool)) else str(key)


def format_json(message: Message) -> str:
    """`--log-msgs json`: the interop fields as one JSON object (cli-proton-python's)."""
    return json.dumps(jsonable(interop_fields(message)), ensure_ascii=False)


def format_body(message: Message) -> str:
    """`--log-msgs body`: the body alone (bytes as text when they are UTF-8)."""
    body = _content(message.body)
    if isinstance(body, (bytes, bytearray)):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return repr(bytes(body))
    return str(body)


_UPSTREAM = ("address", "reply_to", "durable", "ttl", "priority", "first_acquirer",
             "delivery_count", "id", "correlation_id", "user_id", "group_id",
             "group_sequence", "reply_to_group_id", "instructions", "annotations",
             "properties")


def format_upstream(message: Message) -> str:
    """`--log-msgs upstream`: proton's str(message): the fields that are set, proton's
    order, `name=repr(value)` (ttl in seconds)."""
    parts = ["inferred=True"] if _inferred(message.body) else []
    parts += [f"{name}={getattr(message, name)!r}" for name in _UPSTREAM
              if getattr(message, name)]
    body = _content(message.body)
    if body:
        parts.append(f"body={body!r}")
    return f"Message({', '.join(parts)})"


FORMATTERS: dict[str, Callable[[Message], str]] = {
    "dict": format_dict, "body": format_body, "upstream": format_upstream,
    "interop": format_interop, "json": format_json,
}


def message_logger(log_format: str) -> Callable[[Message], None]:
    """What prints each message sent or received in the `--log-msgs` format."""
    formatter = FORMATTERS.get(log_format)
    if formatter is None:
        return lambda message: None
    return lambda message: print(formatter(message), flush=True)


# ---- values from the command line (pure) ----------------------------------------------------


def auto_type(text: str) -> int | float | bool | str:
    """cli-proton-python's `~` cast: an int, else a float, else true/false, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def cast(text: str, content_type: str | None, option: str) -> Any:
    """`text` as `--content-type` says: int (AMQP int), long, float, bool, string."""
    try:
        if content_type == "int":
            return int32(int(text))
        if content_type == "long":
            return _long(int(text))
        if content_type == "float":
            return float(text)
    except ValueError:
        raise BadInput(f"{option}: {text!r} is not {_article(content_type)} "
                       f"(--content-type {content_type})") from None
    if content_type == "bool":
        return _bool(text, option)
    return text


def _article(content_type: str | None) -> str:
    return "an int" if content_type == "int" else f"a {content_type}"


def _long(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise ValueError(value)
    return value


def _bool(text: str, option: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise BadInput(f"{option}: {text!r} is not a bool (true/false, yes/no, 1/0)")


def name_value(item: str, option: str) -> tuple[str, str, bool]:
    """NAME=VALUE or NAME~VALUE (cli-proton-python's nameval): (name, value, `~` given)."""
    for separator in "=~":
        name, found, value = item.partition(separator)
        if found and name:
            return name, value, separator == "~"
        if found:
            raise BadInput(f"{option}: {item!r} has no name before {separator!r}")
    raise BadInput(f"{option}: {item!r} is not NAME=VALUE or NAME~VALUE")


def item_map(items: list[str], option: str, content_type: str | None = None
             ) -> dict[str, Any]:
    """-P, -M, --msg-annotation, --recv-filter: `=` keeps the text (cast by
    `content_type` if given), `~` types it (auto_type)."""
    result: dict[str, Any] = {}
    for item in items:
        name, value, typed = name_value(item, option)
        if content_type is not None:
            result[name] = cast(value, content_type, option)
        else:
            result[name] = auto_type(value) if typed else value
    return result


def item_list(items: list[str], content_type: str | None) -> list[Any]:
    """-L: each item as text, a leading `~` types it; `--content-type` casts them all."""
    result: list[Any] = []
    for item in items:
        typed = item.startswith("~")
        text = item[1:] if typed else item
        if content_type is not None:
            result.append(cast(text, content_type, "-L/--msg-content-list-item"))
        else:
            result.append(auto_type(text) if typed else text)
    return result


def numbered(template: str, number: int) -> str:
    """`template` with each `%d` (`%5d`, `% d` ...) replaced by `number`."""
    return NUMBER.sub(lambda match: match.group(0) % number, template)


def masked(text: str) -> str:
    """`text` with the password of each URL in it replaced by ***."""
    return PASSWORD.sub(r"\1***@", text)


def broker_url(text: str, option: str = "-b/--broker-url") -> tuple[str, str | None]:
    """cli-proton-python's broker URL as (amqp URL without the path, address): the scheme
    may be left out (host:port/address), and the path is the address."""
    full = text if "://" in text else f"amqp://{text}"
    parts = urlsplit(full)
    if parts.scheme.lower() not in ("amqp", "amqps"):
        raise BadInput(f"{option}: {masked(full)!r}: the scheme {parts.scheme!r} is not "
                       "amqp or amqps")
    base = f"{parts.scheme}://{parts.netloc}"
    try:
        url = parse_url(base)
    except ValueError as exc:
        raise BadInput(f"{option}: {masked(str(exc))}") from None
    if url.port == 0:
        raise BadInput(f"{option}: {masked(full)!r}: cannot connect to port 0")
    return base, unquote(parts.path[1:]) or None


# ---- the parsers ----------------------------------------------------------------------------


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value
    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Usage errors as one line, `amqscale send: error: argument X: ...`, status 2."""
    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.error = error  # type: ignore[method-assign]


def _control_options(parser: argparse.ArgumentParser, count: int, what: str, timeout: str,
                     address: tuple[str, ...], note: str = "") -> None:
    group = parser.add_argument_group("control options")
    group.add_argument("-b", "--broker-url", "--url", metavar="URL", help=(
        "[amqp[s]://][user:password@]host[:port][/address]; the path is the address "
        f"(default {DEFAULT_BROKER})"))
    group.add_argument(*address, dest="address",
                       help=f"the address (overrides the URL's path{note})")
    group.add_argument("-c", "--count", type=_int_in(0, 2**63), default=count,
                       help=f"{what} (default {count})")
    group.add_argument("-t", "--timeout", type=_seconds, metavar="SECONDS", help=timeout)
    group.add_argument("--duration", type=_seconds, default=0.0, metavar="SECONDS",
                       help="spread --count messages evenly over this long (default 0)")
    group.add_argument("--container-id", metavar="ID",
                       help="the AMQP container id (default: a random one)")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection options")
    group.add_argument("--conn-urls", metavar="URL[,URL...]",
                       help="failover URLs tried after -b, in order")
    group.add_argument("--conn-reconnect", type=str.lower, choices=("true", "false"),
                       default="true", help="reconnect after a lost connection "
                       "(default true; the first open is tried once)")
    group.add_argument("--conn-heartbeat", type=_seconds, metavar="SECONDS",
                       help="idle timeout: the peer must send something this often")
    group.add_argument("--conn-max-frame-size", type=_int_in(512, 2**32 - 1), metavar="N")
    group.add_argument("--conn-allowed-mechs", metavar="MECHS",
                       help='SASL mechanisms allowed, space-separated, e.g. "SCRAM-SHA-256"')
    group.add_argument("--conn-allow-insecure-mechs", action="store_true",
                       help="allow PLAIN without TLS (amqscale refuses it by default)")
    group.add_argument("--conn-use-config-file", action="store_true",
                       help="connect as connect.json says (MESSAGING_CONNECT_FILE, "
                       "./connect.json, ~/.config/messaging/, /etc/messaging/)")
    _ssl_options(parser)


def _ssl_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS options (with an amqps:// URL)")
    group.add_argument("--conn-ssl-certificate", metavar="PEM", help="client certificate")
    group.add_argument("--conn-ssl-private-key", metavar="PEM",
                       help="client key (default: in the certificate file)")
    group.add_argument("--conn-ssl-password", metavar="PASSWORD", help="the key's password")
    group.add_argument("--conn-ssl-trust-store", metavar="PEM",
                       help="CA file or directory to trust (default: the system's)")
    group.add_argument("--conn-ssl-verify-peer", action="store_true",
                       help="check the certificate, not the name")
    group.add_argument("--conn-ssl-verify-peer-name", action="store_true",
                       help="check the certificate and the name (the default)")
    group.add_argument("--conn-ssl-verify", choices=("peer-name", "peer", "none"),
                       help="the check, by name; none accepts any server (it warns)")
    group.add_argument("--conn-ssl-peer-name", metavar="NAME",
                       help="the name sent as SNI and checked (default: the URL's host)")
    group.add_argument("--conn-ssl-min-version", metavar="TLSv1.2")
    group.add_argument("--conn-ssl-max-version", metavar="TLSv1.3")
    group.add_argument("--conn-ssl-ciphers", metavar="LIST", help="OpenSSL cipher list")


def _logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging options")
    group.add_argument("--log-msgs", choices=LOG_FORMATS, default="none", help=(
        "print each message: dict (cli-proton-python's keys), body, upstream (proton's "
        "str()), interop, json (one object a line; bytes as UTF-8 text, else base64); "
        "default none"))
    group.add_argument("--log-lib", choices=LIB_LEVELS, help=(
        "Python logging at this level; TRANSPORT_FRM: proton's frame trace on stderr"))


def _link_options(parser: argparse.ArgumentParser, durable: str) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("link options")
    group.add_argument("--link-durable", action="store_true", help=durable)
    group.add_argument("--link-capability", action="append", default=[], metavar="CAP",
                       help="a terminus capability (queue, topic, shared ...); repeatable")
    return group


ITEMS = "NAME=VALUE keeps VALUE a string; NAME~VALUE types it: int, float, true/false, " \
        "else string (as cli-proton-python); repeatable"


def _message_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("message options")
    add = group.add_argument
    add("-i", "--msg-id", metavar="ID", help="message id; a %%d in it is the message number")
    add("-S", "--msg-subject", metavar="SUBJECT")
    add("--msg-address", metavar="ADDRESS", help="the `to` field (with no link address: "
        "the anonymous relay routes by it)")
    add("--msg-reply-to", metavar="ADDRESS")
    add("--msg-durable", default="no", metavar="yes|no", help="default no")
    add("--msg-ttl", type=_int_in(0, 2**32 - 1), metavar="MS", help="time to live, ms")
    add("--msg-priority", type=_int_in(0, 255), metavar="0-255")
    add("--msg-correlation-id", metavar="ID")
    add("--msg-user-id", metavar="USER", help="sent as UTF-8 bytes")
    add("--msg-group-id", metavar="GROUP")
    add("--msg-group-seq", type=_int_in(0, 2**32 - 1), metavar="N")
    add("-P", "--msg-property", action="append", default=[], metavar="NAME=VALUE",
        help=f"an application property: {ITEMS}")
    add("--msg-annotation", action="append", default=[], metavar="NAME=VALUE",
        help="a message annotation (NAME a symbol), typed as -P")
    _content_options(group)


def _content_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--msg-content", metavar="TEXT",
        help="the body; a %%d in it is the message number (0, 1, ...)")
    add("--msg-content-from-file", metavar="FILE",
        help="the body from a file (UTF-8 text, trailing whitespace dropped; else bytes)")
    add("-M", "--msg-content-map-item", action="append", default=[], metavar="NAME=VALUE",
        help=f"a map body's entry: {ITEMS}")
    add("-L", "--msg-content-list-item", action="append", default=[], metavar="VALUE",
        help="a list body's item: text, or ~VALUE typed as -P; repeatable")
    add("--msg-content-type", metavar="TYPE", help="the content-type property (default "
        "text/plain, amqp/map or amqp/list by the body)")
    add("--content-type", choices=CONTENT_TYPES, help="cast --msg-content, map values and "
        "list items: string, int (AMQP int), long, float, bool")


def _send_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "send", help="send messages, as cli-proton-python-sender",
        description="Sends --count messages to an address; exits 0 when every one was "
                    "accepted (or sent pre-settled). See docs/clients.md.")
    _one_line_errors(parser)
    _control_options(parser, 1, "messages to send", "wait at most this long for credit to "
                     "send, and for the outcomes (default: no limit)", ("-a", "--address"))
    _connection_options(parser)
    links = _link_options(parser, "a durable target (durability unsettled-state)")
    modes = links.add_mutually_exclusive_group()
    modes.add_argument("--link-at-most-once", action="store_true",
                       help="send pre-settled: no outcomes")
    modes.add_argument("--link-at-least-once", action="store_true",
                       help="wait for each outcome (the default)")
    links.add_argument("--on-release", choices=("ignore", "retry", "fail"), default="fail",
                       help=f"a released message: counts as sent, is sent again (up to "
                       f"{RETRIES} times), or fails the run (default fail)")
    _message_options(parser)
    _logging_options(parser)
    parser.set_defaults(run=run_send)


def _receive_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "receive", help="receive messages, as cli-proton-python-receiver",
        description="Receives messages from an address (or, with --recv-listen, from "
                    "peers that connect); exits 0 when --count arrived. See "
                    "docs/clients.md.")
    _one_line_errors(parser)
    _control_options(parser, 0, "messages to receive; 0: until -t passes without one, "
                     "or without -t all there is now", "give up after this long without a "
                     "message (default: no limit)", ("--address",),
                     "; -a is --action here")
    _connection_options(parser)
    _link_options(parser, "a durable subscription: needs --recv-name and --container-id")
    _receiver_options(parser)
    _logging_options(parser)
    parser.set_defaults(run=run_receive)


def _receiver_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("receiver options")
    add = group.add_argument
    add("-a", "--action", choices=("acknowledge", "reject", "release", "noack"),
        default="acknowledge", help="the outcome given (acknowledge: accepted; noack: "
        "none, the peer gets them back when the link ends)")
    add("--action-size", type=_int_in(1, 2**31), default=1, metavar="N",
        help="apply the action to N messages at a time (default 1)")
    add("--recv-selector", metavar="SELECTOR", help="a JMS selector")
    add("--recv-browse", action="store_true", help="browse: leave the messages there")
    add("--recv-filter", action="append", default=[], metavar="NAME=VALUE",
        help="a source filter (NAME a symbol), typed as send's -P")
    add("--recv-name", metavar="NAME", help="the link name (a durable subscription's)")
    add("--dynamic", action="store_true",
        help="a node the peer creates; its address is printed on stderr")
    add("--process-reply-to", action="store_true",
        help="send each message on to its reply-to address")
    add("--recv-listen", action="store_true", help="listen on 127.0.0.1 for peers to "
        "send to, instead of connecting; the URL is printed on stderr")
    add("--recv-listen-port", type=_int_in(0, 65535), default=5672, metavar="PORT",
        help="with --recv-listen (default 5672; 0: any free port)")
    add("--reactor-prefetch", type=_int_in(1, 2**31), default=10, metavar="N",
        help="credit: messages the peer may send ahead (default 10)")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the `send` and `receive` commands; each sets `run` (Namespace -> exit status)."""
    _send_parser(commands)
    _receive_parser(commands)


# ---- what the options mean ------------------------------------------------------------------


@dataclass(frozen=True)
class MessagePlan:
    """The messages `send` makes: fixed fields, and the body and id for each number."""

    fields: dict[str, Any]
    body: Any
    content_type: str | None = None  # the cast of a numbered body
    numbered_body: bool = False
    id_template: str | None = None

    def message(self, number: int) -> Message:
        fields = dict(self.fields)
        if self.id_template is not None:
            fields["id"] = numbered(self.id_template, number)
        return Message(body=self.body_of(number), **fields)

    def body_of(self, number: int) -> Any:
        if not self.numbered_body:
            return self.body
        return cast(numbered(self.body, number), self.content_type, "--msg-content")


def _read_content(path: str) -> str | bytes:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise BadInput(f"--msg-content-from-file: cannot read {path!r}: "
                       f"{exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        return data


def _body(args: argparse.Namespace) -> tuple[Any, str | None, bool]:
    """(body, default content-type, whether the body is a numbered template)."""
    if args.msg_content_list_item:
        items = [] if args.msg_content_list_item == [""] else args.msg_content_list_item
        return item_list(items, args.content_type), "amqp/list", False
    if args.msg_content_map_item:
        items = [] if args.msg_content_map_item == [""] else args.msg_content_map_item
        return item_map(items, "-M/--msg-content-map-item", args.content_type), \
            "amqp/map", False
    content: str | bytes | None = args.msg_content
    if content is None and args.msg_content_from_file is not None:
        content = _read_content(args.msg_content_from_file)
    if not isinstance(content, str):
        return content, None, False
    if NUMBER.search(content):
        return content, "text/plain", True
    return cast(content, args.content_type, "--msg-content"), "text/plain", False


def _header_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"durable": _bool(args.msg_durable, "--msg-durable")}
    if args.msg_priority is not None:
        fields["priority"] = args.msg_priority
    if args.msg_ttl is not None:
        fields["ttl"] = args.msg_ttl / 1000
    if args.msg_annotation:
        fields["annotations"] = item_map(args.msg_annotation, "--msg-annotation")
    if args.msg_property:
        fields["properties"] = item_map(args.msg_property, "-P/--msg-property")
    return fields


def _property_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = {"subject": args.msg_subject, "address": args.msg_address,
             "reply_to": args.msg_reply_to, "correlation_id": args.msg_correlation_id,
             "group_id": args.msg_group_id, "group_sequence": args.msg_group_seq,
             "user_id": None if args.msg_user_id is None else args.msg_user_id.encode()}
    return {name: value for name, value in names.items() if value is not None}


def message_plan(args: argparse.Namespace) -> MessagePlan:
    """The messages `send` is asked for, checked (BadInput names the option)."""
    body, content_type, numbered_body = _body(args)
    fields = {**_header_fields(args), **_property_fields(args)}
    content_type = args.msg_content_type or content_type
    if content_type is not None:
        fields["content_type"] = content_type
    plan = MessagePlan(fields, body, args.content_type, numbered_body, args.msg_id)
    try:
        plan.message(0).encode()
    except (TypeError, ValueError) as exc:
        raise BadInput(f"the message cannot be encoded: {exc}") from None
    return plan


@dataclass(frozen=True)
class Endpoint:
    """Where to connect (url None: connect.json) and the link's address."""

    url: str | None
    address: str | None
    options: dict[str, Any] = field(default_factory=dict)


def endpoint(args: argparse.Namespace) -> Endpoint:
    """The connection and address the options name, checked."""
    url: str | None
    url, address = broker_url(args.broker_url or DEFAULT_BROKER)
    if args.conn_use_config_file:
        url = None  # connect.json's; the address is still -a's or the URL's path
    address = args.address or address
    tls = tls_settings(args)
    if tls is not None and url is not None and not url.lower().startswith("amqps:"):
        raise BadInput(f"--conn-ssl-*: TLS needs an amqps:// URL, not {masked(url)!r}")
    return Endpoint(url, address, {
        "tls": tls, "urls": _failover(args.conn_urls),
        "reconnect": args.conn_reconnect == "true",
        "idle_timeout": args.conn_heartbeat or 0.0,
        "max_frame_size": args.conn_max_frame_size or 0,
        "sasl_mechanisms": args.conn_allowed_mechs,
        "allow_insecure_mechanisms": args.conn_allow_insecure_mechs,
    })


def _failover(urls: str | None) -> list[str] | None:
    if not urls:
        return None
    return [broker_url(text.strip(), "--conn-urls")[0] for text in urls.split(",")]


def tls_settings(args: argparse.Namespace) -> TLS | None:
    """The --conn-ssl-* options as a TLS (None: none given, amqscale's defaults)."""
    verify = args.conn_ssl_verify or (
        "peer-name" if args.conn_ssl_verify_peer_name
        else "peer" if args.conn_ssl_verify_peer else None)
    settings = {"ca": args.conn_ssl_trust_store, "verify": verify,
                "cert": args.conn_ssl_certificate, "key": args.conn_ssl_private_key,
                "key_password": args.conn_ssl_password, "peer_name": args.conn_ssl_peer_name,
                "min_version": args.conn_ssl_min_version,
                "max_version": args.conn_ssl_max_version, "ciphers": args.conn_ssl_ciphers}
    if all(value is None for value in settings.values()):
        return None
    try:
        return TLS(**settings)
    except (TypeError, ValueError, OSError) as exc:
        raise BadInput(f"--conn-ssl-*: {exc}") from None


def source(args: argparse.Namespace, address: str | None) -> Source:
    """The receiver's Source from the link and receiver options, checked."""
    if args.link_durable and not (args.recv_name and args.container_id):
        raise BadInput("--link-durable: a durable subscription needs --recv-name (its "
                       "name) and --container-id (kept from run to run)")
    if not args.dynamic and not address:
        raise BadInput("no address: give --address or a path in -b/--broker-url")
    try:
        return Source(
            None if args.dynamic else address, dynamic=args.dynamic,
            durable="unsettled-state" if args.link_durable else "none",
            expiry_policy="never" if args.link_durable else None,
            capabilities=args.link_capability,
            distribution_mode="copy" if args.recv_browse else None,
            filters=item_map(args.recv_filter, "--recv-filter"),
            selector=args.recv_selector or None)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"the source: {exc}") from None


def target(args: argparse.Namespace, address: str | None) -> Target:
    """The sender's Target (no address: the anonymous relay, by --msg-address)."""
    if address is None and not args.msg_address:
        raise BadInput("no address: give -a/--address, a path in -b/--broker-url, or "
                       "--msg-address for the anonymous relay")
    try:
        return Target(address, durable="unsettled-state" if args.link_durable else "none",
                      capabilities=args.link_capability)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"the target: {exc}") from None


# ---- running --------------------------------------------------------------------------------


class Pacer:
    """--duration: the n-th of `count` messages goes at start + n * duration / count."""

    def __init__(self, duration: float, count: int) -> None:
        self.interval = duration / count if duration and count else 0.0
        self.start = time.monotonic()

    def wait(self, number: int) -> None:
        if self.interval:
            time.sleep(max(0.0, self.start + number * self.interval - time.monotonic()))


def _setup(what: str, step: Callable[[], T]) -> T:
    """Connecting and attaching: any failure is BadInput (exit 2, nothing sent yet)."""
    try:
        return step()
    except AMQPError as exc:
        raise BadInput(_cli_words(str(exc))) from None  # it names the peer, no password
    except CONNECT_ERRORS as exc:
        raise BadInput(f"{what}: {_cli_words(str(exc))}") from None


def _cli_words(text: str) -> str:
    """amqscale's errors name connect()'s arguments: these name the options."""
    return text.replace("allow_insecure_mechanisms=True", "--conn-allow-insecure-mechs")


def _connect(container: Container, where: Endpoint) -> Connection:
    url = "the connect.json URL" if where.url is None else str(parse_url(where.url))
    return _setup(f"cannot connect to {url}",
                  lambda: container.connect(where.url, **where.options))


def _library_logging(level: str | None) -> None:
    if level == "TRANSPORT_FRM":
        os.environ["PN_TRACE_FRM"] = "1"  # before the Container: its workers read it
    elif level is not None:
        logging.basicConfig(level=level)


def _command(name: str, body: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """`body` with its failures as exit statuses and one stderr line each."""
    def run(args: argparse.Namespace) -> int:
        try:
            _library_logging(args.log_lib)
            return body(args)
        except BadInput as exc:
            print(f"amqscale {name}: error: {exc}", file=sys.stderr)
            return 2
        except RunFailed as exc:
            print(f"amqscale {name}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"amqscale {name}: interrupted", file=sys.stderr)
            return 130
    return run


def _close(connection: Connection | None) -> None:
    if connection is not None:
        with contextlib.suppress(*RUN_ERRORS):  # the run's status is decided already
            connection.close()


# ---- send -----------------------------------------------------------------------------------


def _send_one(sender: Sender, plan: MessagePlan, number: int, args: argparse.Namespace,
              log: Callable[[Message], None]) -> Tracker:
    message = plan.message(number)
    try:
        tracker = sender.send(message, timeout=args.timeout)
    except TimeoutError:
        raise RunFailed(f"timed out after {args.timeout} s: no credit to send message "
                        f"{number}") from None
    log(message)
    return tracker


def _send_all(sender: Sender, plan: MessagePlan, args: argparse.Namespace,
              log: Callable[[Message], None]) -> dict[int, Tracker]:
    pacer = Pacer(args.duration, args.count)
    trackers: dict[int, Tracker] = {}
    for number in range(args.count):
        pacer.wait(number)
        trackers[number] = _send_one(sender, plan, number, args, log)
    return trackers


def _flush(sender: Sender, trackers: dict[int, Tracker], timeout: float | None) -> None:
    try:
        sender.flush(timeout=timeout)
    except TimeoutError:
        waiting = sum(not t.settled for t in trackers.values())
        raise RunFailed(f"timed out after {timeout} s waiting for the outcomes of "
                        f"{waiting} of {len(trackers)} messages") from None


def _settle_all(sender: Sender, plan: MessagePlan, trackers: dict[int, Tracker],
                args: argparse.Namespace, log: Callable[[Message], None]) -> None:
    """Wait for every outcome; with --on-release retry, send the released again."""
    for _ in range(RETRIES):
        _flush(sender, trackers, args.timeout)
        released = [n for n, t in trackers.items() if t.outcome == "released"]
        if args.on_release != "retry" or not released:
            return
        for number in released:
            trackers[number] = _send_one(sender, plan, number, args, log)
    _flush(sender, trackers, args.timeout)


def send_verdict(trackers: list[Tracker], on_release: str) -> str | None:
    """Why the run failed (one line), or None: every message accepted or pre-settled
    (released ones too with --on-release ignore)."""
    allowed = {"accepted", None} | ({"released"} if on_release == "ignore" else set())
    failed = [t for t in trackers if t.outcome not in allowed]
    if not failed:
        return None
    counts = Counter(t.outcome for t in failed)
    text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    condition = next((t.condition for t in failed if t.condition is not None), None)
    reason = f" ({condition.name}: {condition.description})" if condition else ""
    if on_release == "retry" and counts["released"]:
        reason += f" (each sent {RETRIES + 1} times)"
    return f"{len(failed)} of {len(trackers)} messages not accepted: {text}{reason}"


def _send(args: argparse.Namespace) -> int:
    plan = message_plan(args)
    where = endpoint(args)
    to = target(args, where.address)
    log = message_logger(args.log_msgs)
    with Container(workers=1, container_id=args.container_id) as container:
        connection = _connect(container, where)
        sender = _setup(f"cannot attach to {where.address or 'the anonymous relay'!r}",
                        lambda: connection.open_sender(to, presettled=args.link_at_most_once))
        try:
            trackers = _send_all(sender, plan, args, log)
            _settle_all(sender, plan, trackers, args, log)
        except RUN_ERRORS as exc:
            raise RunFailed(f"sending failed: {exc}") from None
        finally:
            _close(connection)
    verdict = send_verdict(list(trackers.values()), args.on_release)
    if verdict is not None:
        raise RunFailed(verdict)
    return 0


run_send = _command("send", _send)


# ---- receive --------------------------------------------------------------------------------


class Settler:
    """Applies --action to the deliveries, --action-size at a time."""

    def __init__(self, receiver: Receiver, action: str, size: int) -> None:
        self.receiver = receiver
        self.action = action
        self.size = size
        self.pending: list[Delivery] = []

    def add(self, delivery: Delivery) -> None:
        self.pending.append(delivery)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.action == "acknowledge":
            self.receiver.accept_many(pending)
        for delivery in pending:
            if self.action == "reject":
                delivery.reject("amqp:rejected", "rejected by amqscale receive")
            elif self.action == "release":
                delivery.release()


class Replier:
    """--process-reply-to: sends each message on to its reply-to address, through the
    anonymous relay when the peer offers it, else a sender per address."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.relay = "ANONYMOUS-RELAY" in connection.remote_offered_capabilities
        self.senders: dict[str | None, Sender] = {}
        self.trackers: list[Tracker] = []

    def reply(self, message: Message) -> None:
        if not message.reply_to:
            return
        message.address = message.reply_to
        self.trackers.append(self._sender(message.reply_to).send(message))

    def _sender(self, address: str) -> Sender:
        key = None if self.relay else address
        if key not in self.senders:
            self.senders[key] = self.connection.open_sender(key)
        return self.senders[key]

    def finish(self, timeout: float | None) -> None:
        for sender in self.senders.values():
            sender.flush(timeout=timeout)
        verdict = send_verdict(self.trackers, "fail")
        if verdict is not None:
            raise RunFailed(f"replies: {verdict}")


def _next(receiver: Receiver, timeout: float | None, drain: bool) -> Delivery | None:
    """The next delivery; None when the timeout passed (or, draining, none is left) or
    the peer closed the link cleanly."""
    try:
        if not drain:
            return receiver.receive(timeout=timeout)
        try:
            return receiver.receive(timeout=0)
        except TimeoutError:
            if receiver.drain(timeout=DRAIN_TIMEOUT) == 0:
                return None
            return receiver.receive(timeout=0)
    except TimeoutError:
        return None
    except LinkDetached as exc:
        if exc.condition is None:
            return None
        raise


def _deliveries(receiver: Receiver, args: argparse.Namespace) -> Iterator[Delivery]:
    drain = args.count == 0 and args.timeout is None and not args.recv_listen
    taken = 0
    pacer = Pacer(args.duration, args.count)
    while not args.count or taken < args.count:
        delivery = _next(receiver, args.timeout, drain)
        if delivery is None:
            return
        yield delivery
        taken += 1
        pacer.wait(taken)


def _receive_all(receiver: Receiver, args: argparse.Namespace,
                 replier: Replier | None) -> int:
    log = message_logger(args.log_msgs)
    settler = Settler(receiver, args.action, args.action_size)
    received = 0
    for delivery in _deliveries(receiver, args):
        received += 1
        log(delivery.message)
        settler.add(delivery)
        if replier is not None:
            replier.reply(delivery.message)
    settler.flush()
    if replier is not None:
        replier.finish(args.timeout)
    return received


def _check_listen(args: argparse.Namespace) -> None:
    used = [name for name, value in (
        ("--recv-selector", args.recv_selector), ("--recv-browse", args.recv_browse),
        ("--recv-filter", args.recv_filter), ("--dynamic", args.dynamic),
        ("--link-durable", args.link_durable),
        ("--process-reply-to", args.process_reply_to)) if value]
    if used:
        raise BadInput(f"--recv-listen: {', '.join(used)} cannot be used with it (a "
                       "listener has no source to ask, nor links back to its peers)")


def _listen(container: Container, args: argparse.Namespace) -> Receiver:
    _check_listen(args)
    url = f"amqp://127.0.0.1:{args.recv_listen_port}"
    listener = _setup(f"cannot listen on {url}", lambda: container.listen(
        url, credit=_credit(args)))
    print(f"amqscale receive: listening on {listener.url}", file=sys.stderr, flush=True)
    return listener.receiver


def _open_receiver(connection: Connection, args: argparse.Namespace,
                   address: str | None) -> Receiver:
    wanted = source(args, address)
    receiver = _setup(f"cannot attach to {address!r}", lambda: connection.open_receiver(
        wanted, credit=_credit(args), name=args.recv_name))
    if args.dynamic:
        print(f"amqscale receive: dynamic address {receiver.address}", file=sys.stderr,
              flush=True)
    return receiver


def _end_link(receiver: Receiver, args: argparse.Namespace) -> None:
    """Release what was prefetched and not taken; a durable subscription stays."""
    if args.recv_listen:
        return  # the Container's close ends the listener
    if args.link_durable:
        receiver.detach(timeout=CLOSE_TIMEOUT)
    else:
        receiver.close(timeout=CLOSE_TIMEOUT)


def _credit(args: argparse.Namespace) -> int:
    """--reactor-prefetch, but no more than --count."""
    return min(args.reactor_prefetch, args.count) if args.count else args.reactor_prefetch


def _receive(args: argparse.Namespace) -> int:
    where = endpoint(args)
    if not args.recv_listen:
        source(args, where.address)  # checked before connecting
    with Container(workers=1, container_id=args.container_id) as container:
        connection = None if args.recv_listen else _connect(container, where)
        try:
            if connection is None:
                receiver = _listen(container, args)
                replier = None
            else:
                receiver = _open_receiver(connection, args, where.address)
                replier = Replier(connection) if args.process_reply_to else None
            received = _receive_all(receiver, args, replier)
            _end_link(receiver, args)
        except RUN_ERRORS as exc:
            raise RunFailed(f"receiving failed: {exc}") from None
        finally:
            _close(connection)
    if args.count and received < args.count:
        within = f" within the {args.timeout} s timeout" if args.timeout is not None else ""
        raise RunFailed(f"received {received} of {args.count} messages{within}")
    return 0


run_receive = _command("receive", _receive)
