"""Encode and decode cost of one message: amqscale's codec against proton's Message.

The message is the issue's reference: a message-id (uuid or string), three application
properties and a 100-byte body. Both libraries decode the same bytes (proton's encoding) and
the results are checked to be equal before timing. amqscale runs twice: as it is (the C fast
path, amqscale._ccodec, when built) and in pure Python (the fast path switched off in this
process, as AMQSCALE_PURE_PYTHON=1 would at import). Runs are interleaved (C, Python, proton,
C, ...) and the best of several is kept, so that load from other processes on the machine
hits every side alike. CPU time is the default timer for the same reason.

    python perf/codec_bench.py [--id uuid|str] [--number N] [--repeat R] [--timer cpu|wall]
                               [--json PATH]

JSON: us_per_message {amqscale_encode, amqscale_py_encode, proton_encode, ... _decode},
ratio_encode/decode (amqscale as it runs / proton), ratio_py_* (pure Python / proton),
speedup_* (pure Python / as it runs), c_path (whether the C fast path was built).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import proton

from amqscale import message as message_module
from amqscale.message import Message

C_PATH = message_module._c_encode_message is not None


@contextlib.contextmanager
def pure_python() -> Iterator[None]:
    """Message.encode and decode without the C fast path: their own Python code, as with
    AMQSCALE_PURE_PYTHON=1 (the call through the public method included)."""
    saved = message_module._c_encode_message, message_module._c_decode_message
    message_module._c_encode_message = message_module._c_decode_message = None
    try:
        yield
    finally:
        message_module._c_encode_message, message_module._c_decode_message = saved


def build(id_kind: str) -> tuple[Message, proton.Message]:
    mid: Any = (
        uuid.UUID("6f1c1b8e-3c0e-4d8a-9a55-0d7c9b1e2f3a")
        if id_kind == "uuid"
        else ("msg-000000042")
    )
    props = {"sequence": 42, "source": "sensor-7", "urgent": True}
    body = bytes(range(100))
    ours = Message(body=body, id=mid, properties=dict(props))
    theirs = proton.Message(body=body, id=mid, properties=dict(props))
    theirs.inferred = True  # bytes as a data section, as amqscale sends them
    return ours, theirs


def check(ours: Message, theirs: proton.Message, wire: bytes) -> None:
    """Both sides must agree on the bytes before their speed means anything."""
    decoded = Message.decode(wire)
    if decoded != ours:
        raise SystemExit(f"amqscale decoded {decoded!r}, expected {ours!r}")
    with pure_python():
        if Message.decode(wire) != decoded or ours.encode() != ours._encode_python():
            raise SystemExit("amqscale's C and Python paths disagree")
    other = proton.Message()
    other.decode(ours.encode())
    if other.id != ours.id or other.properties != ours.properties or bytes(other.body) != ours.body:
        raise SystemExit("proton decoded amqscale's encoding differently")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--id", choices=("uuid", "str"), default="uuid", help="message-id type")
    ap.add_argument("--number", type=int, default=5000, help="calls per timing run")
    ap.add_argument("--repeat", type=int, default=7, help="timing runs per case (best kept)")
    ap.add_argument("--timer", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    ours, theirs = build(args.id)
    wire = bytes(theirs.encode())
    check(ours, theirs, wire)
    receiver = proton.Message()

    # amqscale_* is amqscale as it runs (C when built); amqscale_py_* is pure Python.
    cases: dict[str, Callable[[], Any]] = {
        "amqscale_encode": ours.encode,
        "amqscale_py_encode": ours.encode,
        "proton_encode": theirs.encode,
        "amqscale_decode": lambda: Message.decode(wire),
        "amqscale_py_decode": lambda: Message.decode(wire),
        "proton_decode": lambda: receiver.decode(wire),
    }
    timer = time.process_time if args.timer == "cpu" else time.perf_counter
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            with pure_python() if "_py_" in name else contextlib.nullcontext():
                t = timeit.timeit(fn, number=args.number, timer=timer)
            best[name] = min(best[name], t / args.number * 1e6)

    result: dict[str, Any] = {
        "message": {
            "id": args.id,
            "application_properties": 3,
            "body_bytes": 100,
            "encoded_bytes": len(ours.encode()),
        },
        "timer": args.timer,
        "number": args.number,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "proton": ".".join(map(str, proton.VERSION)),
        "c_path": C_PATH,
        "us_per_message": {k: round(v, 3) for k, v in best.items()},
    }
    for op in ("encode", "decode"):
        # amqscale / proton (as it runs, and in pure Python); pure Python / as it runs
        result["ratio_" + op] = round(best["amqscale_" + op] / best["proton_" + op], 3)
        result["ratio_py_" + op] = round(best["amqscale_py_" + op] / best["proton_" + op], 3)
        result["speedup_" + op] = round(best["amqscale_py_" + op] / best["amqscale_" + op], 2)
    us = result["us_per_message"]
    print(
        f"message: {args.id} id, 3 application properties, 100-byte body "
        f"({result['message']['encoded_bytes']} bytes); timer={args.timer}, "
        f"best of {args.repeat} x {args.number}"
    )
    if not C_PATH:
        print("C fast path off (AMQSCALE_PURE_PYTHON set, or not built): both columns are Python")
    print(
        f"{'':8}{'C us':>8}{'Python us':>11}{'proton us':>11}"
        f"{'C/proton':>10}{'Py/proton':>11}{'Py/C':>7}"
    )
    for op in ("encode", "decode"):
        print(
            f"{op:8}{us['amqscale_' + op]:8.3f}{us['amqscale_py_' + op]:11.3f}"
            f"{us['proton_' + op]:11.3f}{result['ratio_' + op]:10.3f}"
            f"{result['ratio_py_' + op]:11.3f}{result['speedup_' + op]:7.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
