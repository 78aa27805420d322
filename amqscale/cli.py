"""The `amqscale` command: `bench` (the load generator) and the functional clients
`send` and `receive`."""

from __future__ import annotations

import argparse
import sys

from . import clients
from .bench import cli as bench_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqscale", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench_cli.add_parser(commands)
    clients.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
