"""The `amqscale` command."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .bench import BenchConfig, format_result, run
from .errors import ConnectionFailed, LinkDetached, URLError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqscale", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "bench", help="send and receive messages, peer-to-peer (default) or via a broker",
        description="Runs a sender here and a receiver in another process, each with its "
                    "own workers; prints msg/s, CPU per message and what was lost or "
                    "duplicated.")
    bench.add_argument("--url", help="a broker's amqp:// URL (default: peer-to-peer)")
    bench.add_argument("--address", default="amqscale-bench")
    bench.add_argument("--count", type=_positive, default=200_000)
    bench.add_argument("--size", type=_positive, default=100, help="body bytes")
    bench.add_argument("--workers", type=_positive, default=1, help="workers a side")
    bench.add_argument("--shards", type=_positive, default=1, help="connections a side")
    bench.add_argument("--credit", type=_positive, default=1000)
    bench.add_argument("--window", type=_positive, default=1000)
    bench.add_argument("--presettled", action="store_true", help="at-most-once")
    bench.add_argument("--messages", action="store_true",
                       help="Message objects with an id and 3 properties, not bytes")
    bench.add_argument("--batch", type=_positive, metavar="N",
                       help="send_many / receive_many, N messages a call (default: one)")
    bench.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = BenchConfig(
        url=args.url, address=args.address, count=args.count, size=args.size,
        workers=args.workers, shards=args.shards, credit=args.credit, window=args.window,
        presettled=args.presettled, messages=args.messages, batch=args.batch or 0,
    )
    try:
        result = run(config)
    except (URLError, ConnectionFailed, LinkDetached) as exc:
        print(f"amqscale bench: {exc}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(result), out, indent=2)
    return 0 if result.lost == 0 and result.duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
