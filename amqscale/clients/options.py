"""The command line of `amqscale send` and `amqscale receive`: the argparse option groups,
and what the options mean, as plain data.

Three parts: the pure parsing of option values (casts, `NAME=VALUE` / `NAME~VALUE` items,
`%d` numbering, broker URLs, masking passwords); the option groups the two commands'
parsers are made of (amqscale/clients/__init__.py puts them together); and the options
of a parsed Namespace as the messages to send (MessagePlan), where to connect (Endpoint,
with the TLS settings) and the link's Source or Target. Bad input raises BadInput, which
names the option; nothing here connects. Below amqscale.clients.run; beside (not
importing) amqscale.clients.formats.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from ..message import Message
from ..security import TLS
from ..terminus import Source, Target
from ..types import int32
from ..url import parse_url

DEFAULT_BROKER = "localhost:5672/examples"  # cli-proton-python's default
RETRIES = 10  # --on-release retry: rounds of sending the released messages again
CONTENT_TYPES = ("string", "int", "long", "float", "bool")
LOG_FORMATS = ("dict", "body", "upstream", "interop", "json", "none")
LIB_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRANSPORT_FRM")
NUMBER = re.compile(r"%[ 0-9]*d")  # cli-proton-python's message-number placeholder
PASSWORD = re.compile(r"(://[^/@\s'\"]*?:)[^/@\s'\"]*@")  # in scheme://user:password@


class BadInput(Exception):
    """Bad input, or a peer that cannot be reached: exit status 2, nothing sent."""


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


# ---- the option groups (the commands' parsers are made of them in __init__) -----------------


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
