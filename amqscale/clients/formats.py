"""The `--log-msgs` formats: a Message as one line of text, as cli-proton-python prints it.

`format_dict`, `format_json`, `format_interop`, `format_body` and `format_upstream` are
pure (Message -> str), for use in tests as well; `message_logger` prints a message in the
format an option names. The lowest layer of amqscale.clients: it imports nothing of the
package.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from ..message import Message
from ..types import AmqpSequence, AmqpValue, DataSections, SequenceSections


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
