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

Layers, each importing only those below it: `run` (the two commands against the
Container) over `options` (the argparse option groups, and the options parsed into plain
data: the message plan, the endpoint, TLS settings, Source/Target) and `formats` (the
`--log-msgs` formatters), which do not import each other. This module puts each command's
parser together from the option groups, sets its `run` (`add_parsers`, which amqscale/cli.py
calls), and re-exports the names below, so that `amqscale.clients.format_json` and the
rest stay where they were.
"""

from __future__ import annotations

import argparse

from .formats import (
    FORMATTERS,
    dict_fields,
    format_body,
    format_dict,
    format_interop,
    format_json,
    format_upstream,
    interop_fields,
    jsonable,
    message_logger,
    py_literal,
)
from .options import (
    RETRIES,
    BadInput,
    Endpoint,
    MessagePlan,
    _connection_options,
    _control_options,
    _link_options,
    _logging_options,
    _message_options,
    _one_line_errors,
    _receiver_options,
    auto_type,
    broker_url,
    cast,
    endpoint,
    item_list,
    item_map,
    masked,
    message_plan,
    name_value,
    numbered,
    source,
    target,
    tls_settings,
)
from .run import Pacer, Replier, RunFailed, Settler, run_receive, run_send, send_verdict

__all__ = [
    "add_parsers",
    # formats
    "FORMATTERS", "dict_fields", "format_body", "format_dict", "format_interop",
    "format_json", "format_upstream", "interop_fields", "jsonable", "message_logger",
    "py_literal",
    # options
    "BadInput", "Endpoint", "MessagePlan", "auto_type", "broker_url", "cast", "endpoint",
    "item_list", "item_map", "masked", "message_plan", "name_value", "numbered", "source",
    "target", "tls_settings",
    # run
    "Pacer", "Replier", "RunFailed", "Settler", "run_receive", "run_send", "send_verdict",
]


# ---- the two commands: their parsers, each with its run -------------------------------------


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


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the `send` and `receive` commands; each sets `run` (Namespace -> exit status)."""
    _send_parser(commands)
    _receive_parser(commands)
