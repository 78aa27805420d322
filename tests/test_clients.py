"""`amqscale send` and `amqscale receive` (amqscale/clients/) against real peers.

Each command runs as its own process, as a script would run it. The formatters and the
option parsing are pure functions, tested in-process first.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from amqscale import Message, clients, symbol, ulong
from amqscale.testing._process import free_port
from amqscale.testing.brokers import RabbitMQ, SpecBroker

REPO = Path(__file__).resolve().parents[1]

# While amqscale.cli cannot be imported (amqscale.bench being rewritten), the same wiring
# as amqscale/cli.py: clients.add_parsers on a parser's subcommands, then args.run(args).
HARNESS = """
import argparse, sys
from amqscale import clients
parser = argparse.ArgumentParser(prog="amqscale")
clients.add_parsers(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args()
sys.exit(args.run(args))
"""

DICT_KEYS = ["address", "annotations", "content", "content_encoding", "content_type",
             "correlation_id", "creation_time", "delivery_count", "durable", "expiration",
             "first_acquirer", "group_id", "group_sequence", "id", "inferred",
             "instructions", "priority", "properties", "reply_to", "reply_to_group_id",
             "subject", "ttl", "user_id"]

EVERY_FIELD = ["-c", "2", "--msg-content", "body %d", "-i", "id-%d", "-S", "the subject",
               "--msg-ttl", "60000", "--msg-priority", "7", "--msg-durable", "yes",
               "--msg-correlation-id", "corr-1", "--msg-reply-to", "replies",
               "--msg-group-id", "group-1", "--msg-group-seq", "3",
               "-P", "text=1", "-P", "count~2", "-P", "ratio~1.5", "-P", "flag~true"]


def _cli() -> list[str]:
    try:
        importlib.import_module("amqscale.cli")
    except Exception:  # the bench package is mid-rewrite: use the harness
        return [sys.executable, "-c", HARNESS]
    return [sys.executable, "-m", "amqscale.cli"]


CLI = _cli()


def amqscale(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=REPO)


def amqscale_all(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """The commands run side by side; their results in order."""
    processes = [subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  text=True, cwd=REPO) for args in commands]
    results = []
    for args, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(list(args), process.returncode, out, err))
    return results


@contextmanager
def started(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def check_every_field(got: dict[str, Any], number: int) -> None:
    """What EVERY_FIELD sent, as `--log-msgs json` shows it."""
    expected = {
        "content": f"body {number}", "id": f"id-{number}", "subject": "the subject",
        "ttl": 60000, "priority": 7, "durable": True, "correlation-id": "corr-1",
        "reply-to": "replies", "group-id": "group-1", "group-sequence": 3,
        "content-type": "text/plain",
        "properties": {"text": "1", "count": 2, "ratio": 1.5, "flag": True},
    }
    assert {k: got[k] for k in expected} == expected


def depth(broker: SpecBroker, address: str) -> int | None:
    queues: dict[str, int] = broker.stats()["queues"]
    return queues.get(address)


# ---- pure functions -------------------------------------------------------------------------


def test_formatters() -> None:
    message = Message(body=b"\xff\x00", id=ulong(5), subject="it's", ttl=1.5, priority=9,
                      properties={"k": 1, "f": 0.25}, annotations={symbol("x-opt-a"): "v"},
                      content_type=symbol("application/octet-stream"), correlation_id="ID:c",
                      user_id=b"bob", group_sequence=2)
    as_dict = ast.literal_eval(clients.format_dict(message))
    assert list(as_dict) == DICT_KEYS
    assert as_dict["ttl"] == 1500 and as_dict["id"] == 5 and as_dict["inferred"] is True
    assert as_dict["subject"] == "it's" and as_dict["annotations"] == {"x-opt-a": "v"}
    assert as_dict["user_id"] == "bob" and as_dict["expiration"] is None
    as_json = json.loads(clients.format_json(message))
    assert as_json["content"] == "/wA=" and as_json["ttl"] == 1500  # base64: not UTF-8
    assert as_json["correlation-id"] == "c" and as_json["properties"] == {"k": 1, "f": 0.25}
    interop = ast.literal_eval(clients.format_interop(message))
    assert list(interop) == list(as_json) and interop["content"] == "\\xff\x00"
    assert {**interop, "content": None} == {**as_json, "content": None}
    text = Message(body="héllo", properties={"p": "q"})
    assert json.loads(clients.format_json(text))["content"] == "héllo"
    assert clients.format_body(text) == "héllo"
    assert clients.format_body(Message(body={"a": [1, 2]})) == "{'a': [1, 2]}"
    assert clients.format_upstream(text) == "Message(priority=4, properties={'p': 'q'}, " \
        "body='héllo')"


def test_option_values() -> None:
    assert clients.broker_url("host:5673/q") == ("amqp://host:5673", "q")
    assert clients.broker_url("amqps://u:p@h//queue/x") == ("amqps://u:p@h", "/queue/x")
    assert clients.broker_url("amqp://h:1") == ("amqp://h:1", None)
    with pytest.raises(clients.BadInput, match="scheme 'http'"):
        clients.broker_url("http://h/q")
    assert [clients.auto_type(x) for x in ("1", "1.5", "True", "x")] == [1, 1.5, True, "x"]
    # "=" is looked for first, as cli-proton-python's nameval does
    assert clients.item_map(["a=1", "b~1", "c~x=y"], "-P") == {"a": "1", "b": 1, "c~x": "y"}
    assert clients.item_map(["a=1"], "-M", "float") == {"a": 1.0}
    assert clients.item_list(["1", "~1", "~true"], None) == ["1", 1, True]
    assert clients.numbered("m%d/%3d", 7) == "m7/  7"
    assert clients.masked("'amqp://u:pw@h:1/q' amqp://h:2/q") == "'amqp://u:***@h:1/q' amqp://h:2/q"
    with pytest.raises(clients.BadInput, match=r"'amqp://u:\*\*\*@h:x'") as bad:
        clients.broker_url("u:secret@h:x/q")
    assert "secret" not in str(bad.value)
    with pytest.raises(clients.BadInput, match="-P: 'x' is not NAME=VALUE"):
        clients.name_value("x", "-P")


# ---- through brokers ------------------------------------------------------------------------


def test_every_field_through_the_spec_broker(spec_broker: SpecBroker, unique_name: str) -> None:
    url = f"{spec_broker.url}/{unique_name}"
    sent = json_lines(ok(amqscale("send", "-b", url, *EVERY_FIELD, "--log-msgs", "json")))
    for number, message in enumerate(sent):
        check_every_field(message, number)
    for result in amqscale_all(
            ["send", "-b", url, "-M", "name=x", "-M", "n~1", "-M", "f~2.5"],
            ["send", "-b", url, "-L", "a", "-L", "~2", "-L", "~false"],
            ["send", "-b", url, "--msg-content", "42", "--content-type", "int",
             "--msg-user-id", "bob"]):
        ok(result)
    got = json_lines(ok(amqscale("receive", "-b", url, "-c", "5", "--log-msgs", "json")))
    assert len(got) == 5
    for number in range(2):
        check_every_field(got[number], number)
    by_type = {m["content-type"]: m for m in got[2:]}
    assert by_type["amqp/map"]["content"] == {"name": "x", "n": 1, "f": 2.5}
    assert by_type["amqp/list"]["content"] == ["a", 2, False]
    assert by_type["text/plain"]["content"] == 42
    assert by_type["text/plain"]["user-id"] == "bob"
    assert depth(spec_broker, unique_name) == 0


def test_every_field_through_rabbitmq(rabbitmq: RabbitMQ, unique_name: str) -> None:
    queue = f"/queue/{unique_name}"
    ok(amqscale("send", "-b", rabbitmq.url, "-a", queue, *EVERY_FIELD,
                "--msg-user-id", "guest"))  # RabbitMQ checks it: the user connected
    for result in amqscale_all(
            ["send", "-b", rabbitmq.url, "-a", queue, "-M", "n~1", "-M", "s=x"],
            ["send", "-b", rabbitmq.url, "-a", queue, "--msg-content", "-5",
             "--content-type", "long"]):
        ok(result)
    # A list body is left out: RabbitMQ 3.10 crashes the session on an amqp-value list.
    got = json_lines(ok(amqscale("receive", "-b", f"{rabbitmq.url}/{queue}", "-c", "4",
                                 "--log-msgs", "json", "-t", "30")))
    assert len(got) == 4
    for number in range(2):
        check_every_field(got[number], number)
        assert got[number]["user-id"] == "guest"
    assert sorted(str(m["content"]) for m in got[2:]) == ["-5", "{'n': 1, 's': 'x'}"]


def test_outcomes_the_spec_broker_sees(spec_broker: SpecBroker, unique_name: str) -> None:
    url = f"{spec_broker.url}/{unique_name}"
    ok(amqscale("send", "-b", url, "-c", "2", "--msg-content", "m%d",
                "--msg-annotation", "x-opt-k~3"))
    rejected = spec_broker.stats()["dead_letter"]
    release = amqscale("receive", "-b", url, "-c", "1", "-a", "release", "--log-msgs", "dict")
    first = ast.literal_eval(ok(release))
    assert list(first) == DICT_KEYS
    assert first["content"] == "m0" and first["annotations"] == {"x-opt-k": 3}
    again = amqscale("receive", "-b", url, "-c", "1", "-a", "reject", "--log-msgs", "body")
    assert ok(again) == "m0\n"  # the released message, delivered again
    assert spec_broker.stats()["dead_letter"] == rejected + 1
    rest = amqscale("receive", "-b", url, "--log-msgs", "body")  # -c 0, no -t: drain
    assert ok(rest) == "m1\n"
    assert depth(spec_broker, unique_name) == 0
    short = amqscale("receive", "-b", url, "-c", "2", "-t", "0.3")
    assert short.returncode == 1
    assert short.stderr == "amqscale receive: received 0 of 2 messages within the 0.3 s " \
        "timeout\n"


def test_selector_and_browse(spec_broker: SpecBroker, unique_name: str) -> None:
    url = f"{spec_broker.url}/{unique_name}"
    for result in amqscale_all(
            ["send", "-b", url, "-c", "2", "--msg-content", "red%d", "-P", "colour=red"],
            ["send", "-b", url, "-c", "2", "--msg-content", "blue%d", "-P", "colour=blue",
             "-P", "n~7"]):
        ok(result)
    browsed = amqscale("receive", "-b", url, "--recv-browse", "--log-msgs", "body")
    assert sorted(ok(browsed).split()) == ["blue0", "blue1", "red0", "red1"]
    assert depth(spec_broker, unique_name) == 4
    red = amqscale("receive", "-b", url, "--recv-selector", "colour = 'red'",
                   "--log-msgs", "body")
    assert ok(red).split() == ["red0", "red1"]
    typed = amqscale("receive", "-b", url, "--recv-selector", "n > 6", "-c", "1",
                     "--log-msgs", "body")
    assert ok(typed) == "blue0\n"  # ~7 went as a number
    assert depth(spec_broker, unique_name) == 1


def test_dynamic_reply_queue_and_process_reply_to(spec_broker: SpecBroker,
                                                  unique_name: str) -> None:
    requests = f"{spec_broker.url}/{unique_name}"
    with started("receive", "-b", spec_broker.url, "--dynamic", "-c", "2", "-t", "30",
                 "--log-msgs", "body") as replies:
        assert replies.stderr is not None and replies.stdout is not None
        line = replies.stderr.readline()
        assert line.startswith("amqscale receive: dynamic address "), line
        reply_to = line.split()[-1]
        ok(amqscale("send", "-b", requests, "-c", "2", "--msg-content", "q%d",
                    "--msg-reply-to", reply_to))
        ok(amqscale("receive", "-b", requests, "-c", "2", "--process-reply-to"))
        assert replies.wait(timeout=30) == 0
        assert replies.stdout.read().split() == ["q0", "q1"]


@contextmanager
def listening(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`receive --recv-listen` on a free port: the process, and the URL to send to."""
    with started("receive", "--recv-listen", "--recv-listen-port", "0", "-t", "30",
                 *args) as process:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("amqscale receive: listening on amqp://127.0.0.1:"), line
        yield process, line.split()[-1]


def test_peer_to_peer(unique_name: str) -> None:
    with listening("-c", "3", "--log-msgs", "json") as (receiver, url):
        ok(amqscale("send", "-b", f"{url}/{unique_name}", "-c", "3", "--msg-content", "p%d"))
        assert receiver.wait(timeout=30) == 0
        assert receiver.stdout is not None
        assert [m["content"] for m in json_lines(receiver.stdout.read())] == ["p0", "p1", "p2"]
    failed = "amqscale send: 2 of 2 messages not accepted: 2"
    with listening("-c", "2", "-a", "reject") as (rejecter, rejecting), \
            listening("-c", "2", "-a", "release") as (releaser, releasing), \
            listening("-c", "2", "-a", "release") as (ignored, ignoring):
        sent = amqscale_all(["send", "-b", f"{rejecting}/x", "-c", "2"],
                            ["send", "-b", f"{releasing}/x", "-c", "2"],
                            ["send", "-b", f"{ignoring}/x", "-c", "2", "--on-release", "ignore"])
        assert [r.returncode for r in sent] == [1, 1, 0], [r.stderr for r in sent]
        assert sent[0].stderr.startswith(f"{failed} rejected (amqp:rejected: ")
        assert sent[1].stderr == f"{failed} released\n"
        assert [p.wait(timeout=30) for p in (rejecter, releaser, ignored)] == [0, 0, 0]


def test_bad_input_exits_2_before_sending(spec_broker: SpecBroker, unique_name: str) -> None:
    url = f"{spec_broker.url}/{unique_name}"
    cases: Sequence[tuple[list[str], str]] = [
        (["send", "-b", url, "-P", "colour"],
         "error: -P/--msg-property: 'colour' is not NAME=VALUE or NAME~VALUE"),
        (["send", "-b", url, "--content-type", "decimal", "--msg-content", "1"],
         "error: argument --content-type: invalid choice: 'decimal'"),
        (["send", "-b", url, "--msg-priority", "high"],
         "error: argument --msg-priority: 'high' is not an integer"),
        (["send", "-b", url, "--msg-content", "x", "--content-type", "int"],
         "error: --msg-content: 'x' is not an int"),
        (["send", "-b", f"http://127.0.0.1:{spec_broker.port}/{unique_name}"],
         "error: -b/--broker-url: 'http://"),
        (["send", "-b", f"127.0.0.1:{free_port()}/{unique_name}"],
         "error: cannot connect to amqp://127.0.0.1:"),
        (["receive", "-b", url, "--recv-selector", "colour = = 'red'"],
         "error: receiver from"),
    ]
    results = amqscale_all(*(args for args, _ in cases))
    for result, (args, text) in zip(results, cases, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(f"amqscale {args[0]}: {text}"), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""
    assert "(Connection refused)" in results[-2].stderr
    assert "invalid selector" in results[-1].stderr
    assert depth(spec_broker, unique_name) in (None, 0)  # nothing was sent
